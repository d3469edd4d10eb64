"""
Benchmark: which decoding settings make a small model's samples read like text? (notes/03)

    python -m bench.decoding --ckpt out/ckpt.pt --ar out-ar/ckpt.pt

For --num-prompts validation prompts (windows of --prompt-len tokens spread over the split) it
generates --gen-len tokens with LLaDA's schedule (one token per step, blocks of --block-len) for
every --remasking rule and --temperature, and the AR judge's own samples at each temperature.
Each row gets the generative perplexity of its text under the AR judge and distinct3 (bench/
quality.py), printed beside the same figures of the real continuation of each prompt: text
"reads like the corpus" when both are near the real text's. A low gen ppl with a low distinct3
is a loop; a high gen ppl with a high distinct3 is word salad.
"""

import torch

from mini_dlm.plumbing.checkpoint import load_checkpoint
from mini_dlm.plumbing.cli import Parser, comma_list, non_negative_float, one_of, positive_int, print_config, resolve_device, run
from mini_dlm.data import DEFAULT_DATA
from mini_dlm.plumbing.checks import REMASKING
from mini_dlm.sampler import Decoding, finish, generate_ar

from bench.common import make_prompts
from bench.quality import decode_each, load_judge, quality
from bench.roofline import device_name


def get_parser():
    p = Parser(prog="python -m bench.decoding",
               description="Remasking rule x temperature: generative perplexity and distinct3 against real text.")
    p.add_argument("--ckpt", default="out/ckpt.pt", help="diffusion checkpoint")
    p.add_argument("--ar", default="out-ar/ckpt.pt", help="AR checkpoint (same tokenizer): the judge")
    p.add_argument("--data", default=DEFAULT_DATA, help="text whose validation split gives prompts and real text")
    p.add_argument("--num-prompts", type=positive_int, default=16, help="validation prompts")
    p.add_argument("--prompt-len", type=positive_int, default=16, help="tokens per prompt")
    p.add_argument("--gen-len", type=positive_int, default=48, help="tokens generated per prompt")
    p.add_argument("--block-len", type=positive_int, default=16, help="semi-autoregressive block length")
    p.add_argument("--remasking", type=comma_list(one_of(REMASKING)), default=",".join(REMASKING),
                   help="comma-separated remasking rules")
    p.add_argument("--temperatures", type=comma_list(non_negative_float), default="0,0.5,0.8,1",
                   help="comma-separated Gumbel temperatures")
    p.add_argument("--seed", type=int, default=1337, help="Gumbel noise and random remasking")
    p.add_device_flag()
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    device = resolve_device(args.device)
    model, tok, _ = load_checkpoint(args.ckpt, device, "--ckpt")
    ar = load_judge(args.ar, tok, device)
    rules, temps = args.remasking, args.temperatures
    G, P = args.gen_len, args.prompt_len
    windows = make_prompts(tok, args.data, args.num_prompts, P + G)  # prompt + its real continuation
    prompts, real = [w[:P] for w in windows], [w[P:] for w in windows]
    print_config("config", {**vars(args), "device": f"{device} ({device_name(device)})"})

    print(f"\n{len(prompts)} prompts x {G} tokens, blocks of {args.block_len}, steps = gen-len")
    print(f"{'sampler':<32} {'gen ppl':>8} {'distinct3':>9}")
    rows = [("real continuation", real)]
    for T in temps:
        gen = torch.Generator(device).manual_seed(args.seed)
        x, _ = finish(generate_ar(ar, torch.tensor(prompts), gen_len=G, temperature=T, generator=gen))
        rows.append((f"AR judge, T={T:g}", x[:, P:].tolist()))
    for rule in rules:
        for T in temps:
            gen = torch.Generator(device).manual_seed(args.seed)
            opts = Decoding(steps=G, block_len=args.block_len, temperature=T, remasking=rule)
            outs, _, _ = decode_each(model, prompts, device, opts, G, gen)
            rows.append((f"{rule}, T={T:g}", outs))
    for label, outs in rows:
        ppl, d3 = quality(ar, prompts, outs)
        print(f"{label:<32} {ppl:>8.2f} {d3:>9.2f}")


if __name__ == "__main__":
    run(main)
