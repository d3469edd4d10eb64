"""
Cloze: how well does the diffusion model fill a blank in real text, seeing both sides of it,
against the AR model of the same data, which sees only the left side?

    python -m bench.cloze --dlm out/ckpt.pt --ar out-ar/ckpt.pt
    python -m bench.cloze --dlm out/ckpt.pt --ar out-ar/ckpt.pt --quick

Windows (window_starts, cloze_windows): --n windows of real validation text, evenly spaced,
each --left tokens, then the k tokens of the blank, then --right tokens; the same starts for
every k of --k. Per k:
  DLM exact, acc   the full-attention DLM fills [left, M * k, right] with its sampler
                   (sampler.denoise: greedy, one token per step, one block over the blank);
                   exact = all k tokens right, acc = tokens right / k.
  DLM nll          nats per blank token of the true tokens, two ways with the same mask
                   predictor, each the exact NLL of a proper distribution over the k tokens,
                   so each compares with the AR one as it is:
                   1-shot  one forward with the whole blank masked, sum_i -log p(x_i | left,
                           right): the product of the model's marginals, as if the k tokens were
                           independent (exact for k = 1, pessimistic beyond);
                   l2r     k forwards that reveal the blank left to right, sum_i -log p(x_i |
                           left, x_<i, masks, right): the chain rule with the mask predictor's
                           conditionals, a joint distribution as an AR model's is.
                   Not the diffusion ELBO: that is an upper bound on a likelihood the sampler
                   does not define, and the blank's own bound needs many forwards per window.
  AR exact, acc    the AR model continues `left` greedily for k tokens (sampler.generate_ar).
  AR nll           teacher-forced NLL of the k true tokens given `left` (bench/quality.py).
The DLM sees k + left + right tokens of context, the AR model left; the gap between the two
NLLs is what the right side is worth (and what each model has learnt).
"""

import os

import torch
import torch.nn.functional as F

from mini_dlm.plumbing.cli import (Parser, autocast, check_out_dir, comma_list, parse_quick, positive_int, print_config,
                                   resolve_device, run)
from mini_dlm.data import DEFAULT_DATA, read_text, split_text
from mini_dlm.sampler import Decoding, denoise, finish, generate_ar

from bench.common import print_table, save
from bench.quality import generative_nll, load_with_judge
from bench.roofline import device_name

QUICK = dict(n=8, left=16, right=16)  # --quick, for the flags not given


def get_parser():
    p = Parser(prog="python -m bench.cloze",
               description="Cloze on validation text: the DLM fills a blank seeing both sides, the AR model "
                           "continues the left side (exact match, accuracy, NLL).")
    p.add_argument("--dlm", default="out/ckpt.pt", help="full-attention diffusion checkpoint")
    p.add_argument("--ar", default="out-ar/ckpt.pt", help="AR checkpoint of the same data and tokenizer")
    p.add_argument("--data", default=DEFAULT_DATA, help="text whose validation split gives the windows")
    p.add_argument("--k", type=comma_list(positive_int), default="1,4,16", help="comma-separated blank lengths")
    p.add_argument("--n", type=positive_int, default=200, help="windows per blank length")
    p.add_argument("--left", type=positive_int, default=64, help="real tokens left of the blank")
    p.add_argument("--right", type=positive_int, default=64, help="real tokens right of the blank")
    p.add_argument("--batch-size", type=positive_int, default=50, help="windows per forward")
    p.add_argument("--quick", action="store_true", help=f"{QUICK['n']} windows, {QUICK['left']} tokens each side "
                   "(flags you give win)")
    p.add_device_flag()
    p.add_argument("--out", default="bench-out/cloze.json", help="JSON records (bench-out/ is git-ignored)")
    return p


def window_starts(n_ids, n, width):
    """n starts of windows of width tokens, evenly spaced over a stream of n_ids tokens, the
    last one ending at most at its end. ValueError if the stream holds fewer than n distinct ones."""
    if n_ids - width + 1 < n:
        raise ValueError(f"the validation split ({n_ids} tokens) is too short for {n} windows of {width} tokens")
    step = (n_ids - width) / max(n - 1, 1)
    return [round(i * step) for i in range(n)]


def cloze_windows(ids, starts, left, k, right):
    """ids (N,) -> (lefts (n, left), truths (n, k), rights (n, right)): the windows at starts,
    cut into the text before the blank, the blank's true tokens and the text after it."""
    w = torch.stack([ids[s:s + left + k + right] for s in starts])  # (n, left + k + right)
    return w[:, :left], w[:, left:left + k], w[:, left + k:]


@torch.no_grad()
def dlm_fill(model, lefts, k, rights):
    """The DLM's greedy fill (n, k) of each window's blank: one block over it, a token per step."""
    M = model.config.mask_id
    x = torch.cat([lefts, torch.full((len(lefts), k), M, device=lefts.device), rights], dim=1)
    out, _ = finish(denoise(model, x, Decoding(steps=k, block_len=k)))
    return out[:, lefts.shape[1]:lefts.shape[1] + k]


@torch.no_grad()
def dlm_nll(model, lefts, truths, rights, order):
    """Summed NLL (nats) of the blanks' true tokens under the mask predictor: order "1-shot"
    (all masked, one forward) or "l2r" (revealed left to right, k forwards)."""
    L, k, M = lefts.shape[1], truths.shape[1], model.config.mask_id
    total = 0.0
    for i in range(1 if order == "1-shot" else k):
        blank = truths.clone()
        blank[:, i:] = M  # l2r: the first i tokens revealed; 1-shot: none
        cols = slice(L, L + k) if order == "1-shot" else slice(L + i, L + i + 1)
        logits = model(torch.cat([lefts, blank, rights], dim=1), only=cols)  # (n, k or 1, V)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        target = truths if order == "1-shot" else truths[:, i:i + 1]
        total += F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="sum").item()
    return total


def score(fills, truths):
    """(windows filled exactly, tokens right)."""
    right = fills == truths  # (n, k)
    return int(right.all(dim=1).sum()), int(right.sum())


def measure(dlm, ar, ids, starts, k, args):
    """One row of the table: blank length k over every window -> rates and nats per blank token."""
    sums = dict.fromkeys(("dlm_exact", "dlm_right", "dlm_nll_1shot", "dlm_nll_l2r", "ar_exact", "ar_right", "ar_nll"), 0)
    for i in range(0, len(starts), args.batch_size):
        lefts, truths, rights = cloze_windows(ids, starts[i:i + args.batch_size], args.left, k, args.right)
        got = dict(zip(("dlm_exact", "dlm_right"), score(dlm_fill(dlm, lefts, k, rights), truths)))
        got["dlm_nll_1shot"] = dlm_nll(dlm, lefts, truths, rights, "1-shot")
        got["dlm_nll_l2r"] = dlm_nll(dlm, lefts, truths, rights, "l2r")
        got.update(zip(("ar_exact", "ar_right"), score(finish(generate_ar(ar, lefts, gen_len=k))[0][:, args.left:],
                                                       truths)))
        got["ar_nll"] = generative_nll(ar, lefts.tolist(), truths.tolist()) * truths.numel()
        sums = {key: sums[key] + got[key] for key in sums}
    n, t = len(starts), len(starts) * k
    return {"k": k, "windows": n, **{key: v / (n if key.endswith("exact") else t) for key, v in sums.items()}}


def check_models(dlm, ar, args, k_max):
    """ValueError unless dlm has full attention and the windows fit both contexts."""
    cfg = dlm.config
    if cfg.block_size:
        raise ValueError(f"--dlm {args.dlm} must be a full-attention diffusion checkpoint: a block-diffusion one "
                         "does not see the text right of the blank")
    if args.left + k_max + args.right > cfg.seq_len:
        raise ValueError(f"--left + k + --right = {args.left + k_max + args.right} exceeds the DLM's context "
                         f"of {cfg.seq_len}")
    if args.left + k_max > ar.config.seq_len:
        raise ValueError(f"--left + k = {args.left + k_max} exceeds the AR model's context of {ar.config.seq_len}")


def main(argv=None):
    args = parse_quick(get_parser(), argv, QUICK)
    ks = args.k
    check_out_dir(os.path.dirname(os.path.abspath(args.out)), "--out")
    device = resolve_device(args.device)
    dlm, tok, ar = load_with_judge(args.dlm, args.ar, device)
    check_models(dlm, ar, args, max(ks))
    ids = torch.tensor(tok.encode(split_text(read_text(args.data)[0])[1]), device=device)
    starts = window_starts(len(ids), args.n, args.left + max(ks) + args.right)
    meta = {**vars(args), "device": f"{device} ({device_name(device)})", "torch": torch.__version__}
    print_config("config", meta)

    records = []
    with autocast(device):
        for k in ks:
            records.append(measure(dlm, ar, ids, starts, k, args))
    print(f"\n{args.n} windows of validation text: {args.left} tokens + a blank of k + {args.right} tokens (the AR "
          f"model sees the {args.left} on the left), greedy, on {device_name(device)}")
    print_table([("k", ">4d", "k"), ("DLM exact", ">9.1%", "dlm_exact"), ("DLM acc", ">8.1%", "dlm_right"),
                 ("nll 1-shot", ">10.3f", "dlm_nll_1shot"), ("nll l2r", ">8.3f", "dlm_nll_l2r"),
                 ("AR exact", ">9.1%", "ar_exact"), ("AR acc", ">7.1%", "ar_right"), ("AR nll", ">7.3f", "ar_nll")],
                records, "exact: windows whose blank is filled exactly; acc: tokens right; nll: nats per blank token "
                "of the true text, DLM masked all at once (1-shot) or revealed left to right (l2r), AR given the left "
                "side only")
    save(args.out, meta, records)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run(main)
