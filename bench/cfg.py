"""
Classifier-free guidance (mini_dlm/sampling/guidance.py): what it costs, and whether it makes the text
follow its prompt more closely.

    python -m bench.cfg --dlm out/ckpt.pt --ar out-ar/ckpt.pt
    python -m bench.cfg --dlm out/ckpt.pt --ar out-ar/ckpt.pt --quick

Prompts: --n windows of --prompt-len tokens spread over the validation split
(bench/common.py: make_prompts), decoded as one batch for each scale of --scales, greedy,
with the same decoder (--gen-len, --block-len, --threshold, --cache). Reported per scale:
  seconds, tok/s      mean wall time of --repeats runs of the batch (after a warm-up), tokens/s
  passes, positions   forward passes, and positions computed (rows x tokens, summed): a guided
                      pass is one forward over twice the batch, so it costs about twice the
                      positions for the same passes
  gen ppl             exp of the AR judge's NLL of the generated text given the prompt
  PMI                 prompt adherence: NLL_AR(g[1:] | g[0]) - NLL_AR(g[1:] | prompt, g[0]) in
                      nats per token, averaged over the tokens of every row: how much better the
                      judge predicts the generated text when it also reads the prompt (pointwise
                      mutual information between prompt and text). Text that ignores its prompt
                      scores about 0; text that carries on the prompt's speaker, names and line
                      scores more. Both sides condition on the first generated token g[0] because
                      the judge has no start-of-text token to predict it from; the difference is
                      then the prompt alone. It is measured under the AR judge, not the DLM, since
                      guidance itself moves the DLM's own likelihoods.
  distinct3           repetition check: strong guidance can loop, which a low gen ppl rewards
Before timing, a check: on the first pass, the batched guided logits equal u + (s + 1)(c - u)
computed from two separate forwards (the largest scale of --scales).
"""

import math
import os

import torch

from mini_dlm.plumbing.cli import (Parser, autocast, check_out_dir, comma_list, non_negative_float, parse_quick,
                                   positive_int, print_config, probability, resolve_device, run)
from mini_dlm.data import DEFAULT_DATA
from mini_dlm.sampling import guidance
from mini_dlm.sampler import CACHES, Decoding, NoCache, finish, generate, make_canvas

from bench.common import make_prompts, print_table, save
from bench.quality import distinct3, generative_nll, load_with_judge
from bench.roofline import count_forwards, device_name, timed

QUICK = dict(n=4, prompt_len=16, gen_len=16, block_len=16, repeats=1)  # --quick, for the flags not given


def get_parser():
    p = Parser(prog="python -m bench.cfg",
               description="Classifier-free guidance: cost and prompt adherence across --cfg-scale values.")
    p.add_argument("--dlm", default="out/ckpt.pt", help="diffusion checkpoint (full attention or block diffusion)")
    p.add_argument("--ar", default="out-ar/ckpt.pt", help="AR checkpoint (same tokenizer) that judges the output")
    p.add_argument("--data", default=DEFAULT_DATA, help="text whose validation split gives the prompts")
    p.add_argument("--scales", type=comma_list(non_negative_float), default="0,0.5,1,2",
                   help="comma-separated guidance scales s >= 0")
    p.add_argument("--n", type=positive_int, default=32, help="prompts (one batch)")
    p.add_argument("--prompt-len", type=positive_int, default=32, help="prompt tokens")
    p.add_argument("--gen-len", type=positive_int, default=64, help="tokens generated per prompt")
    p.add_argument("--block-len", type=positive_int, default=32, help="block length (a block-diffusion checkpoint: "
                   "its own)")
    p.add_argument("--threshold", type=probability, help="Fast-dLLM's tau (default: off, one token per step)")
    p.add_argument("--cache", choices=CACHES, default="none", help="KV cache of every run")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed runs per scale (their mean)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK['n']} prompts of {QUICK['prompt_len']} tokens, "
                   f"{QUICK['gen_len']} generated, 1 timed run (flags you give win)")
    p.add_device_flag()
    p.add_argument("--out", default="bench-out/cfg.json", help="JSON records (bench-out/ is git-ignored)")
    return p


def pmi(ar, prompts, gens):
    """Prompt adherence (see the module docstring): NLL_AR(g[1:] | g[0]) - NLL_AR(g[1:] | prompt, g[0])."""
    alone = generative_nll(ar, [g[:1] for g in gens], [g[1:] for g in gens])
    given = generative_nll(ar, [p + g[:1] for p, g in zip(prompts, gens)], [g[1:] for g in gens])
    return alone - given


@torch.no_grad()
def check_formula(model, prompts, G, b, scale):
    """The largest relative difference between the batched guided logits of the first pass and
    u + (s + 1)(c - u) from two forwards of B rows."""
    x, pad = make_canvas(prompts, G, model)
    P = x.shape[1] - G
    guided = guidance.Guided(NoCache, model, x, pad, P, b, scale).logits(x, P, P + b, 0)
    plain = NoCache(model, x, pad, P, b)
    c = plain.logits(x, P, P + b, 0)
    u = plain.logits(x.masked_fill(x != model.config.mask_id, model.config.mask_id), P, P + b, 0)
    real = torch.isfinite(c)
    expected = u + (scale + 1) * (c - u)
    return float(((guided - expected)[real]).abs().max() / expected[real].abs().max())


def measure(run_scale, s, model, ar, prompts, args, device):
    """One row: guidance scale s -> its cost and the judge's figures."""
    with count_forwards(model) as log:
        x, stats = run_scale(s)  # untimed: the tokens, and the positions computed
    seconds = timed(lambda: run_scale(s), device, args.repeats, warmup=0)
    gens = x[:, args.prompt_len:].tolist()  # every prompt has prompt_len tokens: no padding
    nll = generative_nll(ar, prompts, gens)
    return dict(scale=s, seconds=seconds, forward_passes=stats["forward_passes"], positions=log.positions,
                gen_ppl=math.exp(nll), pmi=pmi(ar, prompts, gens),
                distinct3=sum(distinct3(g) for g in gens) / len(gens))


def main(argv=None):
    args = parse_quick(get_parser(), argv, QUICK)
    scales = args.scales
    check_out_dir(os.path.dirname(os.path.abspath(args.out)), "--out")
    device = resolve_device(args.device)
    model, tok, ar = load_with_judge(args.dlm, args.ar, device)
    b = model.config.block_size or args.block_len
    prompts = make_prompts(tok, args.data, args.n, args.prompt_len)
    meta = {**vars(args), "block_len": b, "device": f"{device} ({device_name(device)})", "torch": torch.__version__}
    print_config("config", meta)

    diff = check_formula(model, prompts[:2], args.gen_len, b, max(scales))
    print(f"check: batched guided logits == u + (s + 1)(c - u) from two forwards: "
          f"{'yes' if diff < 1e-4 else 'NO'} (largest relative difference {diff:.1e})")
    if diff >= 1e-4:
        raise ValueError("the batched guidance disagrees with its formula: fix it before measuring it")

    def run_scale(s):
        opts = Decoding(steps=args.gen_len, block_len=b, threshold=args.threshold, cache=args.cache, cfg_scale=s)
        return finish(generate(model, prompts, opts, args.gen_len, strategy=guidance.strategy(opts)))
    with autocast(device):
        run_scale(max(scales))  # warm-up
        records = [measure(run_scale, s, model, ar, prompts, args, device) for s in scales]
    for r in records:
        r["tok_per_s"] = args.n * args.gen_len / r["seconds"]
    print(f"\n{args.n} prompts of {args.prompt_len} tokens x {args.gen_len} generated, one batch, greedy, "
          f"threshold {args.threshold}, cache {args.cache}, on {device_name(device)}")
    print_table([("cfg scale", ">9g", "scale"), ("seconds", ">8.2f", "seconds"), ("tok/s", ">8.1f", "tok_per_s"),
                 ("passes", ">6d", "forward_passes"), ("positions", ">10,d", "positions"), ("gen ppl", ">8.2f", "gen_ppl"),
                 ("PMI", ">7.3f", "pmi"), ("distinct3", ">9.2f", "distinct3")], records,
                "positions: computed by the model, all rows and passes; PMI: nats/token the prompt saves the AR "
                "judge on the generated text, higher = closer to the prompt")
    save(args.out, meta, records)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run(main)
