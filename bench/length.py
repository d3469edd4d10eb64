"""
Benchmark: DAEDAL's variable length against fixed generation lengths (notes/07).

    python -m bench.length --ckpt out-d-mdm/ckpt.pt --ar out-d-ar/ckpt.pt

Prompts: the speaker line ("ROMEO:\n") of --num-prompts documents spread over the validation
split, so the model writes one speech and should end it. Every configuration decodes the
same batch with the same threshold rule over the whole generated region (one block), and
the output is cut at each row's first end-of-text:
  fixed G      canvas [prompt, M * G] for each G of --fixed-lens
  auto         mini_dlm/sampling/length.py: generate_dynamic (--init-len, --max-len, ...)
Reported per configuration: mean useful length (tokens before end-of-text), forward passes,
positions computed (every position of every row in every pass: the compute), canvas tokens
(the rows' final canvas lengths summed), seconds, and generative perplexity of the useful
tokens under the AR checkpoint (bench/quality.py). The question: does auto match the best
fixed length's perplexity with fewer canvas tokens?
"""

import math
import statistics

import torch

from mini_dlm.plumbing.checkpoint import load_checkpoint
from mini_dlm.plumbing.cli import Parser, comma_list, non_negative_float, positive_int, print_config, probability, resolve_device, run
from mini_dlm.data import DEFAULT_DATA, read_text, split_documents, split_text
from mini_dlm.sampling.length import Daedal, generate_dynamic
from mini_dlm.sampler import Decoding, finish, generate
from mini_dlm.tokenizer import useful_lengths

from bench.quality import distinct3, generative_nll, load_judge
from bench.roofline import count_forwards, device_name, timed_call


def get_parser():
    p = Parser(prog="python -m bench.length",
               description="Variable length (DAEDAL) vs fixed generation lengths on validation prompts (notes/07).")
    p.add_argument("--ckpt", default="out-d-mdm/ckpt.pt", help="full-attention diffusion checkpoint trained with --docs")
    p.add_argument("--ar", default="out-d-ar/ckpt.pt", help="AR checkpoint (same tokenizer) that scores the output")
    p.add_argument("--data", default=DEFAULT_DATA, help="text whose validation documents give the prompts")
    p.add_argument("--num-prompts", type=positive_int, default=50, help="prompts (one batch)")
    p.add_argument("--fixed-lens", type=comma_list(positive_int), default="16,32,64,96",
                   help="comma-separated fixed generation lengths")
    p.add_argument("--threshold", type=probability, default=0.9, help="Fast-dLLM's tau, for every configuration")
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="Gumbel temperature; 0 = argmax")
    p.add_argument("--seed", type=int, default=1337, help="the Gumbel noise (the same seed for every configuration)")
    p.add_argument("--init-len", type=positive_int, default=16, help="auto: first canvas length")
    p.add_argument("--max-len", type=positive_int, default=96, help="auto: longest canvas")
    p.add_argument("--grow", type=positive_int, default=16, help="auto: masks appended per growth")
    p.add_argument("--tail", type=positive_int, default=8, help="auto: positions averaged for end-of-text")
    p.add_argument("--eot-threshold", type=probability, default=0.5, help="auto: grow below this")
    p.add_argument("--low-threshold", type=probability, help="auto: insert masks below this (default: off)")
    p.add_argument("--insert", type=positive_int, default=4, help="auto: masks per insertion")
    p.add_argument("--confidence-eos-eot-inf", action="store_true", help="every configuration: a guess of "
                   "end-of-text commits after the others (LLaDA's switch)")
    p.add_device_flag()
    return p


def written_lengths(tok, data):
    """Tokens of each validation document after its first line (the speaker): what a model
    prompted with that line should write before its end-of-text."""
    docs = split_documents(split_text(read_text(data)[0])[1])
    return [len(tok.encode(d)) - len(tok.encode(d.split("\n")[0] + "\n")) for d in docs]


def speaker_prompts(tok, data, n):
    """The first line (the speaker) of n documents spread evenly over the validation split."""
    docs = split_documents(split_text(read_text(data)[0])[1])
    if len(docs) < n:
        raise ValueError(f"the validation split of {data} has {len(docs)} documents, fewer than --num-prompts {n}")
    return [tok.encode(docs[i * len(docs) // n].split("\n")[0] + "\n") for i in range(n)]


def main(argv=None):
    args = get_parser().parse_args(argv)
    device = resolve_device(args.device)
    model, tok, ckpt = load_checkpoint(args.ckpt, device)
    ar = load_judge(args.ar, tok, device)
    fixed = args.fixed_lens
    prompts = speaker_prompts(tok, args.data, args.num_prompts)
    print_config("config", {**vars(args), "device": f"{device} ({device_name(device)})",
                            "trained_docs": bool(ckpt["train_config"].get("docs"))})

    T = args.temperature

    def gen():
        return torch.Generator(device).manual_seed(args.seed)
    rule = dict(temperature=T, threshold=args.threshold, confidence_eos_eot_inf=args.confidence_eos_eot_inf,
                eot_id=tok.eot_id)  # every configuration's
    runs = [(f"fixed {G}", lambda G=G: finish(generate(model, prompts, Decoding(block_len=G, **rule), G, gen())))
            for G in fixed]
    length = Daedal(args.init_len, args.max_len, args.grow, args.tail, args.eot_threshold, args.low_threshold, args.insert)
    runs.append(("auto", lambda: finish(generate_dynamic(model, prompts, Decoding(**rule), length, gen()))))
    finish(generate(model, prompts[:2], Decoding(steps=16, block_len=16), 16))  # warm-up
    P = max(len(p) for p in prompts)
    median = statistics.median(written_lengths(tok, args.data))
    print(f"\nvalidation documents: median {median:g} tokens after the speaker line (within 30%: "
          f"{0.7 * median:.1f} to {1.3 * median:.1f})")
    print(f"{len(prompts)} prompts, threshold {args.threshold}, temperature {T}, one batch, on {device_name(device)}")
    print(f"{'config':<10} {'useful':>7} {'ended':>6} {'passes':>6} {'positions':>10} {'canvas':>7} {'seconds':>8} "
          f"{'gen ppl':>8} {'distinct3':>9}")
    for name, fn in runs:
        with count_forwards(model) as log:
            (x, stats), sec = timed_call(fn, device)
        G = x.shape[1] - P
        useful = useful_lengths(x[:, P:], tok.eot_id)  # (B,)
        gens = [x[r, P:P + int(n)].tolist() for r, n in enumerate(useful)]
        canvas = int(stats["lengths"].sum()) if "lengths" in stats else G * len(prompts)
        nll = generative_nll(ar, prompts, gens)
        ended = float((useful < (stats["lengths"] if "lengths" in stats else G)).float().mean())
        uniq = statistics.mean(distinct3(g) for g in gens if len(g) >= 3) if any(len(g) >= 3 for g in gens) else 0.0
        print(f"{name:<10} {useful.float().mean():>7.1f} {ended:>6.0%} {stats['forward_passes']:>6d} "
              f"{log.positions:>10,d} {canvas:>7,d} {sec:>8.2f} {math.exp(nll):>8.2f} {uniq:>9.2f}")
    print("(useful: mean tokens before end-of-text; ended: rows that wrote an end-of-text inside their canvas; "
          "positions: computed by the model, all rows and passes; canvas: final canvas tokens, all rows)")


if __name__ == "__main__":
    run(main)
