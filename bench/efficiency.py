"""
End-to-end efficiency study (notes/appendix-spec.md section 6, notes/06): tokens per second of AR decoding
with a KV cache and of the diffusion samplers, across batch sizes, with a quality figure and
a roofline. The question of "How Efficient Are Diffusion Language Models?" (2025), on models
trained here.

    python -m bench.efficiency --ar-ckpt out-ar/ckpt.pt --dlm-ckpt out/ckpt.pt --block-ckpt out-bd3/ckpt.pt
    python -m bench.efficiency --quick        # a small grid: under a minute on a 2-core CPU
    python -m bench.efficiency --task --ar-ckpt out-sd-ar/ckpt.pt --dlm-ckpt out-sd-mdm/ckpt.pt --block-ckpt ''
                                              # Sudoku (notes/08): only solved puzzles' tokens count

Configurations, each with the compiled ops (ext) and the PyTorch reference ops (torch):
  ar               the AR checkpoint, one token per pass, KV cache      (sampler.generate_ar)
  dlm              LLaDA baseline: steps = gen-len, blocks of 32, no cache
  threshold        Fast-dLLM: threshold tau, no cache
  threshold+dual   ... with the dual cache (approximate)
  threshold+block  the block-diffusion checkpoint, tau, exact block cache

Method, per configuration and batch size B:
  - prompts: --prompt-len tokens from B windows spread evenly over the validation split;
  - one untimed run logs every forward's FLOPs and bytes (bench/roofline.py) and gives the
    tokens; --repeats timed runs (synchronised) must reproduce them (greedy decoding is
    deterministic), and their median time is the result;
  - tokens_per_s counts the fixed canvas, B * gen-len; useful_tokens_per_s counts each row's
    tokens before its first end-of-text (mini_dlm/tokenizer.py: useful_lengths);
  - gen_ppl: generative perplexity of the useful tokens under the AR checkpoint (for the AR
    configuration that is the model scoring itself);
  - a batch whose median exceeds --max-seconds, or that runs out of memory, ends the sweep of
    that configuration.
With --task (checkpoints of train_tiny.py --task): the prompts are the task's held-out puzzles,
the same max(--batch-sizes) of them at every batch size (batch B decodes them B at a time),
gen-len and the block length are the answer's length, and the useful tokens are those of the
puzzles solved exactly (mini_dlm/tasks/rows.py: check_rows); gen_ppl is then of the solved answers only.
Before any timing, two exactness checks run: AR with the cache == AR without it, and the
block cache == no cache, token for token.
Output: a table, --out FILE (JSON records, rewritten after every point), and two plots beside it (tokens/s vs batch; the
roofline), then the crossover batch B* where AR overtakes each DLM configuration: predicted
by the roofline model and measured.
"""

import itertools
import json
import math
import os
import statistics

import torch

from mini_dlm.data import DEFAULT_DATA
from mini_dlm.plumbing import backend
from mini_dlm.plumbing.checkpoint import load_checkpoint
from mini_dlm.plumbing.cli import (Parser, comma_list, one_of, parse_quick, positive_float, positive_int, print_config,
                                   probability, resolve_device, run)
from mini_dlm.sampler import Decoding, finish, generate, generate_ar
from mini_dlm.tasks import sudoku as tasks
from mini_dlm.tasks.rows import check_rows, held_out, load_task_model, prompt_ids
from mini_dlm.tokenizer import useful_lengths

from bench.common import import_pyplot, make_prompts, save
from bench.quality import generative_nll
from bench.roofline import copy_bandwidth, count_forwards, crossover_closed_form, device_name, matmul_peak, timed_call

CONFIGS = ("ar", "dlm", "threshold", "threshold+dual", "threshold+block")
QUICK = dict(batch_sizes=[1, 4, 16], gen_lens=[64], prompt_len=32, repeats=1)  # --quick, for the flags not given


def get_parser():
    p = Parser(prog="python -m bench.efficiency",
               description="DLM vs AR throughput across batch sizes, with quality and a roofline (notes/06).")
    # checkpoints: same size and tokenizer
    p.add_argument("--ar-ckpt", default="out-ar/ckpt.pt", help="AR checkpoint (--objective ar); also scores quality")
    p.add_argument("--dlm-ckpt", default="out/ckpt.pt", help="full-attention diffusion checkpoint")
    p.add_argument("--block-ckpt", default="out-bd3/ckpt.pt", help="block-diffusion checkpoint, or '' to skip "
                   "threshold+block")
    # grid
    p.add_argument("--batch-sizes", type=comma_list(positive_int), default="1,2,4,8,16,32,64,128,256",
                   help="comma-separated")
    p.add_argument("--gen-lens", type=comma_list(positive_int), default="128,256",
                   help="comma-separated generation lengths")
    p.add_argument("--prompt-len", type=positive_int, default=64, help="prompt tokens per row")
    p.add_argument("--configs", type=comma_list(one_of(CONFIGS)), default=",".join(CONFIGS),
                   help=f"comma-separated subset of {','.join(CONFIGS)}")
    p.add_argument("--ops", type=comma_list(one_of(("ext", "torch"))), default="ext,torch",
                   help="comma-separated: ext (compiled) and/or torch (reference)")
    p.add_argument("--block-len", type=positive_int, default=32, help="block length of the full-attention runs")
    p.add_argument("--threshold", type=probability, default=0.9, help="Fast-dLLM's tau")
    p.add_argument("--quick", action="store_true", help=f"small grid: batch {QUICK['batch_sizes']}, gen-len "
                   f"{QUICK['gen_lens']}, prompt {QUICK['prompt_len']}, 1 repeat (flags you give win)")
    # measurement
    p.add_argument("--repeats", type=positive_int, default=3, help="timed runs per point (median)")
    p.add_argument("--max-seconds", type=positive_float, default=30.0, help="a run slower than this ends that sweep")
    p.add_argument("--compile", action="store_true", help="torch.compile each model's forward: fuses the many "
                   "small ops whose overhead dominates a pass at small batch (the untimed run pays the compiling)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                   help="weights and activations; auto: bfloat16 on a GPU, float32 on a CPU")
    p.add_argument("--data", default=DEFAULT_DATA, help="text whose validation split gives the prompts")
    p.add_argument("--task", action="store_true", help="the checkpoints' generated task (train_tiny.py --task): "
                   "held-out puzzles as prompts, only solved puzzles' tokens useful (default: off, text)")
    p.add_device_flag()
    p.add_argument("--out", default="bench-out/efficiency.json", help="JSON records (bench-out/ is git-ignored; "
                   "notes/bench/ keeps the recorded runs); the plots go beside it (_throughput.png, _roofline.png)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots (they need matplotlib)")
    p.add_argument("--replot", metavar="JSON", help="only redraw the plots of an earlier --out file, beside it")
    return p


def load_models(args, device):
    """{'ar': model, 'dlm': model, 'block': model (unless --block-ckpt '')}, tokenizer, in
    float32; ValueError unless they match in size and tokenizer and fit prompt + generation."""
    models, tok = {}, None
    for key, path in (("ar", args.ar_ckpt), ("dlm", args.dlm_ckpt), ("block", args.block_ckpt)):
        if key == "block" and not path:
            continue
        model, t, _ = load_checkpoint(path, device)
        models[key] = model
        if tok is not None and t.fingerprint() != tok.fingerprint():
            raise ValueError(f"{path} has a different tokenizer from {args.ar_ckpt}")
        tok = t
    c = {k: m.config for k, m in models.items()}
    if c["ar"].objective != "ar" or c["dlm"].objective != "mdm" or c["dlm"].block_size:
        raise ValueError("--ar-ckpt must be an AR checkpoint and --dlm-ckpt a full-attention diffusion one")
    if "block" in c and not c["block"].block_size:
        raise ValueError(f"--block-ckpt {args.block_ckpt} is not a block-diffusion checkpoint (--block-size)")
    for k, cfg in c.items():
        size = (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.vocab_size)
        if size != (c["ar"].n_layer, c["ar"].n_head, c["ar"].n_embd, c["ar"].vocab_size):
            raise ValueError(f"the {k} checkpoint's size {size} differs from the AR one's: compare like with like")
        b = cfg.block_size or args.block_len
        if k != "ar" and any(G % b for G in args.gen_lens):
            raise ValueError(f"every gen-len must be a multiple of the {k} checkpoint's block length {b}")
        if cfg.seq_len < args.prompt_len + max(args.gen_lens):
            raise ValueError(f"the {k} checkpoint's context ({cfg.seq_len}) is shorter than prompt + gen-len "
                             f"({args.prompt_len} + {max(args.gen_lens)})")
    return models, tok


def task_prompts(args):
    """--task: set gen-len, prompt-len and block-len from the checkpoints' task -> (prompts: the
    first max(--batch-sizes) held-out puzzles, useful: gen (N, G) -> (N,) G for a solved puzzle, else 0)."""
    _, tok, task = load_task_model(args.ar_ckpt, "--ar-ckpt")
    if load_task_model(args.dlm_ckpt, "--dlm-ckpt")[2][:2] != task[:2]:
        raise ValueError("--dlm-ckpt was trained on another task or seed than --ar-ckpt")
    sudoku = tasks.SUDOKUS[task[0]]
    args.gen_lens, args.prompt_len, args.block_len = [sudoku.answer_len], sudoku.prompt_len, sudoku.answer_len
    pairs = held_out(task, max(args.batch_sizes))

    def useful(gen):  # (N, G) -> (N,): every token of a solved puzzle, none of the others
        return check_rows(tok, sudoku, pairs, gen.cpu())[0].long() * sudoku.answer_len
    return [prompt_ids(tok, p) for p, _ in pairs], useful


def decode_fn(config, models, prompts, G, args, batch):
    """(the model config runs, a function that runs one generation of all prompts, batch rows at a
    time: -> (x (N, P + G), forward passes))."""
    b, tau = args.block_len, args.threshold
    if config == "ar":
        model, run_one = models["ar"], lambda p: generate_ar(models["ar"], p, gen_len=G)
    elif config == "threshold+block":
        model = models["block"]
        opts = Decoding(block_len=model.config.block_size, threshold=tau, cache="block")
        run_one = lambda p: generate(model, p, opts, G)  # noqa: E731
    else:
        kw = {"dlm": {}, "threshold": dict(threshold=tau), "threshold+dual": dict(threshold=tau, cache="dual")}[config]
        opts = Decoding(steps=G, block_len=b, **kw)
        model, run_one = models["dlm"], lambda p: generate(models["dlm"], p, opts, G)

    def fn():
        runs = [finish(run_one(prompts[i:i + batch])) for i in range(0, len(prompts), batch)]
        return torch.cat([x for x, _ in runs]), sum(s["forward_passes"] for _, s in runs)
    return model, fn


def validate(models, prompts, args):
    """The exact caches must reproduce their no-cache runs before anything is timed."""
    P, G = prompts[:2], args.gen_lens[0]
    same = torch.equal(finish(generate_ar(models["ar"], P, gen_len=G))[0],
                       finish(generate_ar(models["ar"], P, gen_len=G, kv_cache=False))[0])
    print(f"check: AR KV cache == no cache, token for token: {'yes' if same else 'NO'}")
    if "block" in models:
        m = models["block"]
        kw = dict(steps=G, block_len=m.config.block_size, threshold=args.threshold)
        exact = torch.equal(finish(generate(m, P, Decoding(**kw, cache="block"), G))[0],
                            finish(generate(m, P, Decoding(**kw), G))[0])
        print(f"check: block cache == no cache, token for token: {'yes' if exact else 'NO'}")
        same = same and exact
    if not same:
        raise ValueError("an exact cache disagrees with its no-cache run: fix the sampler before timing it")


def measure(config, models, prompts, G, args, device, useful_fn, roofs, batch):
    """One point of the grid: the prompts, batch at a time -> (record, forward log of the untimed
    run). useful_fn: gen (N, G) -> (N,) useful tokens per row. roofs: (peak FLOP/s, bytes/s) for
    the roofline's predicted time."""
    model, fn = decode_fn(config, models, prompts, G, args, batch)
    with count_forwards(model) as log:
        x, passes = fn()  # untimed: warms up, logs the cost, gives the tokens
    runs = []
    for _ in range(args.repeats):
        (xt, _), dt = timed_call(fn, device)
        if not torch.equal(xt, x):
            raise ValueError(f"{config}: a timed run differs from the logged one (non-deterministic decoding)")
        runs.append(dt)
    sec = statistics.median(runs)
    N, P = x.shape[0], x.shape[1] - G
    gen = x[:, P:]  # (N, G); every prompt has prompt_len tokens: no padding
    useful = useful_fn(gen)  # (N,)
    gens = [g[:n].tolist() for g, n in zip(gen, useful.tolist())]
    nll = generative_nll(models["ar"], prompts, gens)
    chunks = math.ceil(N / batch)
    rec = dict(config=config, batch_size=batch, rows=N, gen_len=G, prompt_len=P, seconds=sec, runs=runs,
               tokens_per_s=N * G / sec, useful_tokens=int(useful.sum()), useful_tokens_per_s=int(useful.sum()) / sec,
               forward_passes=passes, tokens_per_forward=G * chunks / passes,
               positions_per_token=log.positions / (N * G),
               gen_ppl=math.exp(nll), flops=log.total_flops, bytes=log.total_bytes,
               intensity=log.total_flops / log.total_bytes, flops_per_s=log.total_flops / sec,
               roofline_seconds=log.predict_seconds(*roofs))
    if args.task:
        rec["solved"] = float((useful > 0).float().mean())  # the share of puzzles solved exactly
    return rec, log


def main(argv=None):
    args = parse_quick(get_parser(), argv, QUICK)
    if args.replot:
        with open(args.replot) as f:
            data = json.load(f)
        for path in plot(data["records"], data["meta"], os.path.splitext(args.replot)[0]):
            print(f"wrote {path}")
        return
    configs, kinds = args.configs, args.ops
    device = resolve_device(args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(
        args.dtype, torch.bfloat16 if device.type == "cuda" else torch.float32)
    if not args.no_plots:
        import_pyplot()  # fail now, not after the run
    if "ext" in kinds and not all(backend.has_kernel(op, device) for op in ("unmask", "block_attention")):
        print(f"note: mini_dlm._C has no kernels for {device.type}: the ext runs are skipped")
        kinds.remove("ext")
    if not args.block_ckpt and "threshold+block" in configs:
        configs.remove("threshold+block")

    if args.task:  # before load_models, which checks the lengths
        prompts_all, useful_fn = task_prompts(args)
    models, tok = load_models(args, device)
    if not args.task:
        prompts_all = make_prompts(tok, args.data, max(args.batch_sizes), args.prompt_len)
        useful_fn = lambda gen: useful_lengths(gen, tok.eot_id)  # noqa: E731
    peak = matmul_peak(device, dtype)
    bandwidth = copy_bandwidth(device)
    meta = dict(device=f"{device} ({device_name(device)})", torch=torch.__version__, dtype=str(dtype).split(".")[1],
                compiled=args.compile,
                peak_flops=peak, bandwidth=bandwidth, ridge=peak / bandwidth,
                params=models["ar"].num_params(non_embedding=False), threshold=args.threshold)
    print_config("config", {**{k: v for k, v in vars(args).items() if k != "quick"}, **meta, "configs": configs,
                            "ops": kinds})
    print(f"measured roofs: {peak / 1e9:.1f} GFLOP/s ({meta['dtype']} matmul), {bandwidth / 1e9:.1f} GB/s (copy), "
          f"ridge {peak / bandwidth:.1f} FLOP/byte")
    validate(models, prompts_all, args)  # in float32: bf16 rounds the two attention paths differently
    for m in models.values():
        m.to(dtype)
    if args.compile:  # after validate(): AR without a cache would compile a graph per step
        torch._dynamo.config.recompile_limit = 64  # the dual cache's full passes change shape block by block
        for m in models.values():
            m.forward = torch.compile(m.forward)

    try:
        records, logs = sweep(args, models, prompts_all, useful_fn, configs, kinds, device, meta,
                              lambda recs: save(args.out, meta, recs, crossover=[]))  # a stopped run keeps its points
    finally:
        backend.set_backend("auto")
    save(args.out, meta, records, crossover=crossovers(records, logs, meta, configs, kinds, args.gen_lens))
    print(f"\nwrote {args.out} ({len(records)} records)")
    if not args.no_plots:
        for path in plot(records, meta, os.path.splitext(args.out)[0]):
            print(f"wrote {path}")


def sweep(args, models, prompts_all, useful_fn, configs, kinds, device, meta, on_record):
    """The grid: every gen-len, configuration, ops backend and batch size, printed as it goes;
    on_record(records) runs after each point. Batch B decodes prompts_all[:B], or with --task all
    of prompts_all, B at a time.
    -> (records, {(config, ops, gen_len): (smallest batch, its ForwardLog)})."""
    records, logs = [], {}
    print(f"\n{'config':<16} {'ops':<5} {'G':>4} {'B':>4} {'passes':>6} {'tok/pass':>8} {'tok/s':>9} "
          f"{'useful/s':>9} {'GFLOP/s':>8} {'FLOP/B':>7} {'gen ppl':>8}")
    roofs = (meta["peak_flops"], meta["bandwidth"])
    for G in args.gen_lens:
        for config in configs:
            for kind in kinds:
                backend.set_backend(kind)
                for B in args.batch_sizes:
                    try:
                        prompts = prompts_all if args.task else prompts_all[:B]
                        rec, log = measure(config, models, prompts, G, args, device, useful_fn, roofs, B)
                    except RuntimeError as e:  # torch.OutOfMemoryError on a GPU, an allocator error on a CPU
                        if not isinstance(e, torch.OutOfMemoryError) and "allocate" not in str(e):
                            raise
                        print(f"{config:<16} {kind:<5} {G:>4} {B:>4} out of memory: sweep ends")
                        break
                    rec.update(ops=kind, device=meta["device"], dtype=meta["dtype"], compiled=args.compile)
                    records.append(rec)
                    on_record(records)
                    logs.setdefault((config, kind, G), (B, log))
                    print(f"{config:<16} {kind:<5} {G:>4} {B:>4} {rec['forward_passes']:>6} "
                          f"{rec['tokens_per_forward']:>8.2f} {rec['tokens_per_s']:>9.1f} "
                          f"{rec['useful_tokens_per_s']:>9.1f} {rec['flops_per_s'] / 1e9:>8.2f} "
                          f"{rec['intensity']:>7.1f} {rec['gen_ppl']:>8.2f}" +
                          (f" solved {100 * rec['solved']:.1f}%" if args.task else ""))
                    if rec["seconds"] > args.max_seconds:
                        break
    return records, logs


def crossovers(records, logs, meta, configs, kinds, gen_lens):
    """For each DLM configuration: B* where AR's useful tokens/s overtakes it. Predicted twice
    (the spec's closed form with the measured w; the roofline model scaled from the smallest
    batch measured), and measured (the first batch of the grid where AR is at least as fast).
    Both predictions count useful tokens: when a configuration keeps a share s of what it
    generates (--task: the puzzles it solves), it computes w / s positions per useful token, so
    the closed form becomes ridge * (elem / 2) * (s_dlm / s_ar) / w."""
    out = []
    print("\ncrossover: the batch where AR (KV cache) overtakes each DLM configuration")
    print(f"{'config':<16} {'ops':<5} {'G':>4} {'w':>6} {'tok/pass':>8} {'B* formula':>10} {'B* roofline':>11} "
          f"{'B* measured':>11}")
    by_key = {(r["config"], r["ops"], r["gen_len"], r["batch_size"]): r for r in records}
    grid = sorted({round(2 ** (i / 4)) for i in range(0, 4 * 16 + 1)})  # 1 .. 65536, four per octave

    def tps(log, b0, b, G, rec):  # roofline useful tokens/s at batch b, from the log of rec (rows taken b0 at a time)
        rows = rec.get("rows", b0)
        return share(rec) * rows * b / b0 * G / log.predict_seconds(meta["peak_flops"], meta["bandwidth"], b / b0)

    def share(rec):  # the useful share of what a configuration generated
        return rec["useful_tokens"] / (rec.get("rows", rec["batch_size"]) * rec["gen_len"])

    def show(v):
        return "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)

    for G, kind, config in itertools.product(gen_lens, kinds, configs):
        if config == "ar" or (config, kind, G) not in logs or ("ar", kind, G) not in logs:
            continue
        (ar_B, ar_log), (B0, log) = logs[("ar", kind, G)], logs[(config, kind, G)]
        first = by_key[(config, kind, G, B0)]
        w = first["positions_per_token"]
        ar_first = by_key[("ar", kind, G, ar_B)]
        formula = None if not share(ar_first) else crossover_closed_form(
            meta["ridge"], 4 if meta["dtype"] == "float32" else 2, w) * share(first) / share(ar_first)
        model_b = next((b for b in grid if tps(ar_log, ar_B, b, G, ar_first) >= tps(log, B0, b, G, first)), None)
        measured = next((B for (c, o, g, B), r in sorted(by_key.items(), key=lambda kv: kv[0][3])
                         if (c, o, g) == (config, kind, G) and ("ar", kind, G, B) in by_key
                         and by_key[("ar", kind, G, B)]["useful_tokens_per_s"] >= r["useful_tokens_per_s"]), None)
        row = dict(config=config, ops=kind, gen_len=G, w=w, tokens_per_forward=first["tokens_per_forward"],
                   b_star_formula=formula, b_star_roofline=model_b, b_star_measured=measured)
        out.append(row)
        print(f"{config:<16} {kind:<5} {G:>4} {w:>6.2f} {row['tokens_per_forward']:>8.2f} {show(formula):>10} "
              f"{show(model_b):>11} {show(measured):>11}")
    print("(B* formula = ridge * bytes_per_element / 2 / w, w = positions computed per token, times the useful share "
          "of the configuration over AR's (1 / 1 for text without end-of-text); roofline: the first "
          "batch where the roofline model puts AR ahead; measured: the first batch of the grid where AR's useful "
          "tokens/s >= the configuration's; '-' = not within the range)")
    return out


def plot(records, meta, stem):
    """stem_throughput.png (useful tokens/s vs batch, one panel per gen-len) and stem_roofline.png
    (achieved FLOP/s vs intensity under the measured roofs). Returns the paths written."""
    plt = import_pyplot()
    gen_lens = sorted({r["gen_len"] for r in records})
    fig, axes = plt.subplots(1, len(gen_lens), figsize=(6 * len(gen_lens), 4.5), squeeze=False)
    colours = dict(zip(CONFIGS, ("black", "tab:blue", "tab:orange", "tab:green", "tab:red")))
    for ax, G in zip(axes[0], gen_lens):
        for config in CONFIGS:
            for kind, style in (("ext", "-"), ("torch", ":")):
                rs = sorted((r for r in records if (r["config"], r["ops"], r["gen_len"]) == (config, kind, G)),
                            key=lambda r: r["batch_size"])
                if rs:
                    ax.plot([r["batch_size"] for r in rs], [r["useful_tokens_per_s"] for r in rs], style, marker="o",
                            color=colours[config], label=f"{config} ({kind})", markersize=3)
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="useful tokens/s",
               title=f"gen-len {G}, {meta['dtype']}, {meta['device']}")
        ax.title.set_fontsize(9)
        batches = sorted({r["batch_size"] for r in records if r["gen_len"] == G})
        ax.set_xticks(batches, [str(b) for b in batches], minor=False)
        ax.minorticks_off()
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    paths = [f"{stem}_throughput.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    xs = [r["intensity"] for r in records]
    lo, hi = min(xs + [meta["ridge"]]) / 2, max(xs + [meta["ridge"]]) * 2
    grid = [lo * (hi / lo) ** (i / 100) for i in range(101)]
    ax.plot(grid, [min(meta["peak_flops"], i * meta["bandwidth"]) for i in grid], "k-", label="roof (measured)")
    for config in CONFIGS:
        rs = [r for r in records if r["config"] == config and r["ops"] == "ext"] or \
             [r for r in records if r["config"] == config]
        if rs:
            size = [8 + 4 * math.log2(r["batch_size"]) ** 2 for r in rs]
            ax.scatter([r["intensity"] for r in rs], [r["flops_per_s"] for r in rs], s=size, color=colours[config],
                       label=f"{config} ({rs[0]['ops']})", alpha=0.7)
    ax.set(xscale="log", yscale="log", xlabel="intensity (FLOP / compulsory byte)", ylabel="achieved FLOP/s",
           title=f"roofline, {meta['device']}\n(marker size ~ log batch)")
    ax.title.set_fontsize(9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(f"{stem}_roofline.png")
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths


if __name__ == "__main__":
    run(main)
