"""
Benchmark: diffusion vs AR when data is scarce (notes/09), after Prabhudesai et al. (2025),
"Diffusion Beats Autoregressive in Data-Constrained Settings": an AR model stops profiting from
repeated data after some epochs and overfits, a masked diffusion model keeps profiting for
many more.

    python -m bench.data_constrained --quick     # a few minutes: 2 slices, a tiny model
    python -m bench.data_constrained             # the study of notes/09 (42 minutes on one CPU thread)
    python -m bench.data_constrained --replot bench-out/data_constrained.json

For every slice size N of --slices and both objectives, one train_tiny.py run (in this
process) of the same model on the first N tokens of the training split (--train-tokens N),
repeated for as many epochs as --steps take, evaluated at --evals steps spaced evenly on a log
scale from step 10 (so that the small slices' first epochs are seen too), on the same
validation windows: AR's exact NLL, the diffusion model's ELBO bound, both nats/token.
The learning rate is constant after its warmup (no cosine decay), so each evaluation along a
run stands for a model trained that long; epochs = steps x batch x context / N, and training
FLOPs = ModelConfig.flops_per_token x tokens read (the same for both objectives: the same
network, the same tokens per step).

It prints, per slice, each objective's best validation loss and the epoch it came at (after
it, more passes over the data made the model worse: it overfits), and the first evaluation at
which the diffusion bound is below the AR NLL, if any. Writes JSON and OUT.png: validation
loss against epochs and against training FLOPs.
"""

import contextlib
import io
import json
import os
import re

import train_tiny
from mini_dlm.plumbing.cli import Parser, check_out_dir, comma_list, parse_quick, positive_float, positive_int, print_config, run
from mini_dlm.data import DEFAULT_DATA
from mini_dlm.model import ModelConfig, Transformer

from bench.common import import_pyplot, print_table, save

OBJECTIVES = ("ar", "mdm")
QUICK = dict(slices=[2048, 8192], steps=120, evals=4, n_layer=1, n_head=2, n_embd=32, seq_len=32, batch_size=8,
             eval_windows=8, vocab_size=512)  # --quick, for the flags not given
EVAL = re.compile(r"eval step (\d+) \| val (?:bound|nll) ([\d.]+) nats/token")


def get_parser():
    p = Parser(prog="python -m bench.data_constrained",
               description="Diffusion vs AR on repeated data: validation loss against epochs and FLOPs (notes/09).")
    p.add_argument("--data", default=DEFAULT_DATA, help="text to train on; its validation split scores every run")
    p.add_argument("--slices", type=comma_list(positive_int), default="5000,20000,80000,340000",
                   help="comma-separated training-slice sizes, tokens (the shipped corpus has 346,899)")
    p.add_argument("--steps", type=positive_int, default=1200, help="optimizer steps of every run")
    p.add_argument("--evals", type=positive_int, default=12, help="evaluations per run (besides step 0), log-spaced")
    p.add_argument("--n-layer", type=positive_int, default=4, help="the model of every run (the cpu preset's)")
    p.add_argument("--n-head", type=positive_int, default=4, help="attention heads")
    p.add_argument("--n-embd", type=positive_int, default=128, help="width")
    p.add_argument("--seq-len", type=positive_int, default=64, help="context")
    p.add_argument("--batch-size", type=positive_int, default=32, help="windows per step")
    p.add_argument("--lr", type=positive_float, default=3e-3, help="learning rate, constant after --warmup-iters")
    p.add_argument("--warmup-iters", type=positive_int, default=50, help="linear warmup steps")
    p.add_argument("--vocab-size", type=positive_int, default=2048, help="BPE vocabulary (trained on --data)")
    p.add_argument("--eval-windows", type=positive_int, default=64, help="validation windows per evaluation")
    p.add_argument("--threads", type=positive_int, help="CPU threads (default: train_tiny.py's)")
    p.add_argument("--quick", action="store_true", help=f"slices {QUICK['slices']}, {QUICK['steps']} steps of a "
                   "1 x 32 model (flags you give win)")
    p.add_argument("--work-dir", default="bench-out/data_constrained", help="the runs' checkpoints and token caches")
    p.add_argument("--out", default="bench-out/data_constrained.json", help="JSON records; the plot beside it (.png)")
    p.add_argument("--replot", help="redraw the plot of an earlier --out JSON and exit")
    p.add_argument("--no-plots", action="store_true", help="write no PNG")
    return p


def eval_steps(steps, n):
    """n steps from 10 (or 1) to steps, evenly spaced on a log scale, without repeats."""
    lo = min(10, steps)
    return sorted({round(lo * (steps / lo) ** (k / max(1, n - 1))) for k in range(n)})


def train_run(args, objective, n_tokens):
    """One train_tiny.py run on the first n_tokens training tokens -> [(step, val nats/token)]."""
    out_dir = os.path.join(args.work_dir, f"{objective}-{n_tokens}")
    argv = ["--preset", "none", "--data", args.data, "--out-dir", out_dir, "--objective", objective,
            "--train-tokens", str(n_tokens), "--max-iters", str(args.steps),
            "--eval-interval", str(args.steps), "--eval-at", ",".join(map(str, eval_steps(args.steps, args.evals))),
            "--log-interval", str(args.steps),
            "--n-layer", str(args.n_layer), "--n-head", str(args.n_head), "--n-embd", str(args.n_embd),
            "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size), "--vocab-size", str(args.vocab_size),
            "--lr", str(args.lr), "--min-lr", str(args.lr), "--warmup-iters", str(args.warmup_iters),
            "--dropout", "0", "--eval-windows", str(args.eval_windows), "--device", "cpu"]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if os.path.exists(os.path.join(out_dir, "ckpt.pt")):
        os.remove(os.path.join(out_dir, "ckpt.pt"))  # a fresh run, never a resumed one
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        train_tiny.main(argv)
    return [(int(s), float(v)) for s, v in EVAL.findall(log.getvalue())]


def records_of(args, objective, n_tokens, curve, flops_per_token):
    tokens_per_step = args.batch_size * args.seq_len
    return [dict(objective=objective, slice=n_tokens, step=s, val=v, epochs=s * tokens_per_step / n_tokens,
                 flops=flops_per_token * s * tokens_per_step) for s, v in curve]


def summarize(records):
    """Per slice: each objective's best validation loss and its epoch, the last one, and the
    epoch from which on the diffusion bound stays below the AR NLL to the end of the run (None:
    it is not below at the last evaluation)."""
    rows = []
    for n in sorted({r["slice"] for r in records}):
        runs = {o: [r for r in records if r["slice"] == n and r["objective"] == o and r["step"] > 0] for o in OBJECTIVES}
        row = dict(slice=n, epochs=max(r["epochs"] for r in runs["ar"] + runs["mdm"]))
        for o, rs in runs.items():
            best = min(rs, key=lambda r: r["val"])
            row.update({f"{o}_best": best["val"], f"{o}_best_epoch": best["epochs"], f"{o}_last": rs[-1]["val"]})
        ar_at = {r["step"]: r["val"] for r in runs["ar"]}
        ahead = None
        for r in reversed(runs["mdm"]):  # walk back from the end while the diffusion model is ahead
            if r["val"] >= ar_at[r["step"]]:
                break
            ahead = r["epochs"]
        row["mdm_ahead_epoch"] = ahead
        rows.append(row)
    return rows


def report(rows):
    for r in rows:
        r["ahead"] = "-" if r["mdm_ahead_epoch"] is None else f"{r['mdm_ahead_epoch']:.1f}"
    print_table([("slice tokens", ">12,d", "slice"), ("epochs", ">7.1f", "epochs"),
                 ("AR best", ">8.4f", "ar_best"), ("at epoch", ">8.1f", "ar_best_epoch"), ("AR last", ">8.4f", "ar_last"),
                 ("DLM best", ">8.4f", "mdm_best"), ("at epoch", ">8.1f", "mdm_best_epoch"),
                 ("DLM last", ">8.4f", "mdm_last"), ("DLM < AR from epoch on", ">22", "ahead")], rows,
                "validation nats/token on the same windows: AR exact NLL, DLM the ELBO bound (an upper bound on "
                "its NLL); best: the lowest over the run's evaluations, a last above it means more epochs made the "
                "model worse")


def plot(records, meta, path):
    plt = import_pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    slices = sorted({r["slice"] for r in records})
    colours = [plt.get_cmap("tab10")(i % 10) for i in range(len(slices))]
    for ax, x, label in ((axes[0], "epochs", "epochs (passes over the slice)"),
                         (axes[1], "flops", "training FLOPs")):
        for n, c in zip(slices, colours):
            for o, style in (("ar", "--"), ("mdm", "-")):
                rs = [r for r in records if r["slice"] == n and r["objective"] == o and r["step"] > 0]
                ax.plot([r[x] for r in rs], [r["val"] for r in rs], style, marker="o", markersize=3, color=c,
                        label=f"{'AR' if o == 'ar' else 'diffusion'}, {n:,} tokens")
        ax.set(xscale="log", xlabel=label, ylabel="validation nats/token (AR: NLL, diffusion: bound)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_title(f"{meta['model']}, {meta['steps']} steps per run, constant lr", fontsize=9)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    args = parse_quick(get_parser(), argv, QUICK)
    if args.replot:
        with open(args.replot) as f:
            data = json.load(f)
        print(f"wrote {plot(data['records'], data['meta'], os.path.splitext(args.replot)[0] + '.png')}")
        return
    if not args.no_plots:
        import_pyplot()  # fail now, not after an hour of training
    check_out_dir(os.path.dirname(os.path.abspath(args.out)), "--out")
    cfg = ModelConfig(vocab_size=args.vocab_size, seq_len=args.seq_len, n_layer=args.n_layer, n_head=args.n_head,
                      n_embd=args.n_embd, mask_id=args.vocab_size - 1)
    flops_per_token = Transformer(cfg).flops_per_token(args.seq_len)
    meta = {**vars(args), "model": f"{args.n_layer} x {args.n_embd}, context {args.seq_len}",
            "flops_per_token": flops_per_token}
    print_config("config", meta)
    records = []
    for n in args.slices:
        for objective in OBJECTIVES:
            curve = train_run(args, objective, n)
            records += records_of(args, objective, n, curve, flops_per_token)
            print(f"{objective:>3} on {n:>9,} tokens: {curve[-1][0]} steps, {records[-1]['epochs']:8.1f} epochs, "
                  f"val {curve[0][1]:.4f} -> best {min(v for s, v in curve if s):.4f} -> last {curve[-1][1]:.4f}",
                  flush=True)
            save(args.out, meta, records)  # after every run: an interrupted study keeps what it measured
    print()
    rows = summarize(records)
    report(rows)
    save(args.out, meta, records, summary=rows)
    print(f"wrote {args.out}")
    if not args.no_plots:
        print(f"wrote {plot(records, meta, os.path.splitext(args.out)[0] + '.png')}")


if __name__ == "__main__":
    run(main)
