"""
Benchmark: the speed/quality curve of Fast-dLLM's parallel decoding (notes/04), its central
figure redrawn for a mini_dlm checkpoint.

    python -m bench.threshold --ckpt out/ckpt.pt --ar out-ar/ckpt.pt

For --num-prompts validation prompts, at batch 1, it generates --gen-len tokens with LLaDA's
one-token-per-pass schedule (the reference point), then with the threshold rule for every tau
of --taus and with the factor rule for every f of --factors, and reports tokens per forward
pass, tokens/s, the generative perplexity under the AR judge and distinct3 (bench/quality.py).
The plot (bench-out/threshold.png): tokens per pass and generative perplexity against tau,
the factor rule's points beside them. Parallel decoding pays off where tokens per pass rise
while the perplexity stays flat.
"""

import os

import torch

from mini_dlm.plumbing.checkpoint import load_checkpoint
from mini_dlm.plumbing.cli import Parser, check_out_dir, comma_list, non_negative_float, positive_float, positive_int, probability, print_config, resolve_device, run
from mini_dlm.data import DEFAULT_DATA
from mini_dlm.sampler import CACHES, Decoding

from bench.common import import_pyplot, make_prompts
from bench.quality import decode_each, load_judge, quality
from bench.roofline import device_name


def get_parser():
    p = Parser(prog="python -m bench.threshold",
               description="Tokens per pass, tokens/s and generative perplexity against Fast-dLLM's tau (and factor).")
    p.add_argument("--ckpt", default="out/ckpt.pt", help="diffusion checkpoint")
    p.add_argument("--ar", default="out-ar/ckpt.pt", help="AR checkpoint (same tokenizer): the judge")
    p.add_argument("--data", default=DEFAULT_DATA, help="text whose validation split gives the prompts")
    p.add_argument("--num-prompts", type=positive_int, default=16, help="validation prompts, decoded one at a time")
    p.add_argument("--prompt-len", type=positive_int, default=16, help="tokens per prompt")
    p.add_argument("--gen-len", type=positive_int, default=48, help="tokens generated per prompt")
    p.add_argument("--block-len", type=positive_int, help="block length (default: 16, or the checkpoint's block size)")
    p.add_argument("--taus", type=comma_list(probability, empty_ok=True), default="0.3,0.5,0.7,0.8,0.9,0.95,0.99",
                   help="comma-separated thresholds ('' for none)")
    p.add_argument("--factors", type=comma_list(positive_float, empty_ok=True), default="1,2,4",
                   help="comma-separated factors f of the factor rule ('' for none)")
    p.add_argument("--cache", choices=CACHES, default="none", help="KV cache for every run")
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="Gumbel temperature; 0 = argmax")
    p.add_argument("--seed", type=int, default=1337, help="Gumbel noise")
    p.add_argument("--out", default="bench-out/threshold", help="writes OUT.png")
    p.add_device_flag()
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    device = resolve_device(args.device)
    check_out_dir(os.path.dirname(args.out) or ".")
    model, tok, _ = load_checkpoint(args.ckpt, device, "--ckpt")
    ar = load_judge(args.ar, tok, device)
    prompts = make_prompts(tok, args.data, args.num_prompts, args.prompt_len)
    G, b = args.gen_len, args.block_len or model.config.block_size or 16
    print_config("config", {**vars(args), "device": f"{device} ({device_name(device)})"})
    runs = [("one per pass", {}, None)] + [(f"tau {t:g}", {"threshold": t}, t) for t in args.taus] + \
           [(f"factor {f:g}", {"factor": f}, f) for f in args.factors]

    decode_each(model, prompts[:1], device, Decoding(block_len=b), b)  # warm-up: thread pools, allocators
    print(f"\n{len(prompts)} prompts x {G} tokens, batch 1, blocks of {b}, cache {args.cache}, "
          f"temperature {args.temperature:g}, on {device_name(device)}")
    print(f"{'decoding':<14} {'passes':>7} {'tok/pass':>8} {'tok/s':>8} {'speedup':>8} {'gen ppl':>8} {'distinct3':>9}")
    records = []
    for label, kw, value in runs:
        gen = torch.Generator(device).manual_seed(args.seed)
        opts = Decoding(block_len=b, temperature=args.temperature, cache=args.cache, **kw)
        outs, seconds, passes = decode_each(model, prompts, device, opts, G, gen)
        ppl, d3 = quality(ar, prompts, outs)
        n_tok = G * len(prompts)
        records.append(dict(label=label, rule=next(iter(kw), "schedule"), value=value, tok_per_pass=n_tok / passes,
                            tok_per_s=n_tok / seconds, gen_ppl=ppl, distinct3=d3))
        r = records[-1]
        print(f"{label:<14} {passes:>7d} {r['tok_per_pass']:>8.2f} {r['tok_per_s']:>8.1f} "
              f"{r['tok_per_s'] / records[0]['tok_per_s']:>7.2f}x {ppl:>8.2f} {d3:>9.2f}")
    print(f"wrote {plot(records, args, device_name(device))}")


def plot(records, args, device):
    """OUT.png: tokens per pass (left) and generative perplexity (right) against tau; the
    one-per-pass schedule as a dashed line, the factor rule's points labelled f=..."""
    plt = import_pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    base = records[0]
    for ax, key, name in ((axes[0], "tok_per_pass", "tokens per forward pass"), (axes[1], "gen_ppl", "generative perplexity")):
        taus = [r for r in records if r["rule"] == "threshold"]
        ax.plot([r["value"] for r in taus], [r[key] for r in taus], "o-", color="tab:blue", label="threshold tau")
        ax.axhline(base[key], ls="--", color="grey", label="one token per pass")
        for r in records:
            if r["rule"] == "factor":
                ax.plot([1.0], [r[key]], "s", color="tab:orange")
                ax.annotate(f"factor {r['value']:g}", (1.0, r[key]), fontsize=7, xytext=(4, 0), textcoords="offset points")
        ax.set(xlabel="tau (factor rule at the right edge)", ylabel=name)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{os.path.basename(os.path.dirname(os.path.abspath(args.ckpt)))}: gen-len {args.gen_len}, "
                 f"cache {args.cache}, T={args.temperature:g}, {device}", fontsize=9)
    fig.tight_layout()
    path = args.out + ".png"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    run(main)
