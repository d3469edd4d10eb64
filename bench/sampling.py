"""
Benchmark: how much faster do Fast-dLLM's threshold decoding and the KV caches make sampling,
and what does it cost in quality? (the table in notes/04)

    python -m bench.sampling --full out/ckpt.pt --block out-bd3/ckpt.pt --ar out-ar/ckpt.pt

For each prompt, at batch 1, it generates --gen-len tokens with
  LLaDA baseline          full-attention model, steps = gen-len (one token per pass), no cache
  threshold               the same model, Fast-dLLM's threshold tau, no cache
  threshold + prefix      ... with the prefix cache (approximate)
  threshold + dual        ... with the dual cache (approximate)
  block baseline          block-diffusion model, steps = gen-len, no cache
  block threshold         block-diffusion model, tau, no cache
  block threshold + block ... with the exact block cache
It first checks that the exact cache reproduces its no-cache run (validation before timing),
then reports forward passes, tokens/s, speedup over the LLaDA baseline, the generative
perplexity (exp of the mean NLL of the generated tokens under the AR checkpoint, given the
prompt), distinct3 (a repetition check: generative perplexity alone rewards loops) and
agreement: the fraction of generated tokens equal to the no-cache run with the same model
and decoding rule.
"""

import math

import torch

from mini_dlm.plumbing.checkpoint import load_checkpoint
from mini_dlm.plumbing.cli import Parser, autocast, positive_int, print_config, probability, resolve_device, run
from mini_dlm.sampler import Decoding, finish, generate

from bench.quality import decode_each, distinct3, generative_nll, load_judge
from bench.roofline import device_name

PROMPTS = ["ROMEO:", "JULIET:\nO", "KING RICHARD III:\nNow is the", "First Citizen:\nWe are"]


def get_parser():
    p = Parser(prog="python -m bench.sampling",
               description="Time LLaDA vs Fast-dLLM threshold decoding and KV caches at batch 1 (notes/04 table).")
    p.add_argument("--full", default="out/ckpt.pt", help="full-attention diffusion checkpoint")
    p.add_argument("--block", default="out-bd3/ckpt.pt", help="block-diffusion checkpoint (--block-size), or '' to skip")
    p.add_argument("--ar", default="out-ar/ckpt.pt", help="AR checkpoint that scores the generations (same data and tokenizer)")
    p.add_argument("--gen-len", type=positive_int, default=256, help="tokens generated per prompt")
    p.add_argument("--block-len", type=positive_int, default=32, help="block length for the full-attention model")
    p.add_argument("--threshold", type=probability, default=0.9, help="Fast-dLLM's tau")
    p.add_argument("--prompt", action="append", help=f"repeatable (default: {len(PROMPTS)} speaker prompts)")
    p.add_device_flag()
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    device = resolve_device(args.device)
    full, tok, _ = load_checkpoint(args.full, device)
    ar = load_judge(args.ar, tok, device)
    block = load_checkpoint(args.block, device)[0] if args.block else None
    if block is not None and not block.config.block_size:
        raise ValueError(f"--block {args.block} is not a block-diffusion checkpoint")
    prompts = [tok.encode(p) for p in (args.prompt or PROMPTS)]
    name = device_name(device)
    print_config("config", {**vars(args), "device": f"{device} ({name})", "torch": torch.__version__})

    G, b, tau = args.gen_len, args.block_len, args.threshold
    runs = [  # (label, model, its Decoding, label of the no-cache run it should agree with)
        ("LLaDA baseline", full, Decoding(steps=G, block_len=b), None),
        (f"threshold {tau}", full, Decoding(steps=G, block_len=b, threshold=tau), None),
        (f"threshold {tau} + prefix", full, Decoding(steps=G, block_len=b, threshold=tau, cache="prefix"),
         f"threshold {tau}"),
        (f"threshold {tau} + dual", full, Decoding(steps=G, block_len=b, threshold=tau, cache="dual"),
         f"threshold {tau}"),
    ]
    if block is not None:
        bb = block.config.block_size
        runs += [
            ("block baseline", block, Decoding(steps=G, block_len=bb), None),
            (f"block threshold {tau}", block, Decoding(steps=G, block_len=bb, threshold=tau), None),
            (f"block threshold {tau} + block", block, Decoding(steps=G, block_len=bb, threshold=tau, cache="block"),
             f"block threshold {tau}"),
        ]

    amp = autocast(device)
    with amp:  # warm-up: first calls pay for thread pools, allocators, kernel selection
        finish(generate(full, prompts[0], Decoding(steps=b, block_len=b), b))

    results = {label: decode_each(model, prompts, device, opts, G) for label, model, opts, _ in runs}

    # validation: the exact cache must reproduce its no-cache run token for token
    if block is not None:
        exact = f"block threshold {tau} + block"
        same = results[exact][0] == results[f"block threshold {tau}"][0]
        print(f"check: block cache == no cache, token for token: {'yes' if same else 'NO'}")

    n_tok = G * len(prompts)
    base_tps = n_tok / results["LLaDA baseline"][1]
    print(f"\n{len(prompts)} prompts x {G} tokens, batch 1, on {name}")
    print(f"{'decoding':<30} {'passes':>7} {'tok/pass':>8} {'tok/s':>8} {'speedup':>8} {'gen ppl':>8} "
          f"{'distinct3':>9} {'agree':>7}")
    for label, model, _, ref in runs:
        outs, seconds, passes = results[label]
        nll = generative_nll(ar, prompts, outs)  # every row has G tokens: the mean of the rows' means
        agree = "-" if ref is None else \
            f"{sum(a == r for o, ro in zip(outs, results[ref][0]) for a, r in zip(o, ro)) / n_tok:.1%}"
        tps = n_tok / seconds
        uniq = sum(distinct3(o) for o in outs) / len(outs)
        print(f"{label:<30} {passes:>7d} {n_tok / passes:>8.2f} {tps:>8.1f} {tps / base_tps:>7.2f}x "
              f"{math.exp(nll):>8.2f} {uniq:>9.2f} {agree:>7}")


if __name__ == "__main__":
    run(main)
