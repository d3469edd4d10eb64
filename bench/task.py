"""
Sudoku accuracy: a diffusion model against its AR twin on held-out puzzles (notes/08).

    python -m bench.task --dlm out-sd-mdm/ckpt.pt --ar out-sd-ar/ckpt.pt              # 500 puzzles
    python -m bench.task --quick --dlm out-sd-mdm/ckpt.pt --ar out-sd-ar/ckpt.pt      # 64 puzzles

Trains nothing: it takes two checkpoints that train_tiny.py --task trained on the same task
and seed, and regenerates the task's held-out puzzles from that seed (mini_dlm/tasks/sudoku.py: none
of their solution grids was trained on). Every decoder sees the same puzzles, greedy:

  ar             AR, left to right, KV cache: the cells in reading order, one per pass
  llada          steps = cells, one block: one cell per pass, the most confident first
  llada-margin   ... ranked by the margin between the two best digits
  llada-random   ... in a random order (an any-order AR model with a random order)
  llada-rows     ... in blocks of one grid row, left to right (semi-autoregressive)
  t<tau>         Fast-dLLM threshold tau: every cell at least tau sure, at least one per pass
  t<tau>-prefix  ... with the prefix cache (the prompt's keys/values from the block's first pass)
  t<tau>-dual    ... with the dual cache (one block: nothing after it, so the same as prefix)

Scores: exact (the answer is the solution), valid (it obeys the rules and keeps the givens;
tasks.check_answer), passes per puzzle and tokens per pass (cells / passes). Then where the
decoders go wrong: puzzles solvable by singles alone against the others, and cells by
their singles depth (tasks.singles_depth: the round of naked and hidden singles that decides
the cell), with the order each decoder fills them in. Before anything runs,
the checks: the true solutions score exact and valid, a wrong one neither, and AR with its KV
cache equals AR without it. Output: the tables and --out (JSON).
"""

import json
import os

import torch

from mini_dlm.tasks import sudoku as tasks
from mini_dlm.tasks.rows import check_rows, held_out, load_task_model, prompt_ids
from mini_dlm.plumbing.cli import (Parser, comma_list, parse_quick, positive_int, print_config, probability,
                                   resolve_device, run, set_threads)
from mini_dlm.sampler import Decoding, generate, generate_ar

from bench.roofline import device_name, timed_call

QUICK_N = 64


def get_parser():
    p = Parser(prog="python -m bench.task",
               description="Held-out Sudoku accuracy of a diffusion model and its AR twin, by decoder (notes/08).")
    p.add_argument("--dlm", default="out-sd-mdm/ckpt.pt", help="diffusion checkpoint (train_tiny.py --task)")
    p.add_argument("--ar", default="out-sd-ar/ckpt.pt", help="AR checkpoint of the same task, seed and size")
    p.add_argument("--n", type=positive_int, default=500, help=f"held-out puzzles (at most {tasks.TEST_POOL})")
    p.add_argument("--batch-size", type=positive_int, default=100, help="puzzles decoded together")
    p.add_argument("--thresholds", type=comma_list(probability, empty_ok=True), default="0.9,0.7", help="comma-separated Fast-dLLM taus, "
                   "each run with no cache, the prefix and the dual cache")
    p.add_argument("--decoders", default="all", help="comma-separated names from the list above, or all")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_N} puzzles (an --n you give wins)")
    p.add_argument("--out", default="bench-out/task.json", help="JSON: the tables, per decoder")
    p.add_device_flag()
    p.add_threads_flag()
    return p


# ---- the answer checks, checked (mini_dlm/tasks/rows.py: check_rows) ------------------------

def validate_checks(tok, sudoku, pairs):
    """The checks must tell right from wrong before they score anything."""
    right = torch.tensor([tok.encode(tasks.to_text(s)) for _, s in pairs])  # (N, cells)
    wrong = right.clone()
    wrong[:, [0, 1]] = wrong[:, [1, 0]]  # two different digits of a row swapped: a column breaks
    if not all(check_rows(tok, sudoku, pairs, right)[0]) or any(check_rows(tok, sudoku, pairs, wrong)[1]):
        raise ValueError("the answer checks do not tell solutions from non-solutions")


# ---- decoding -------------------------------------------------------------------------------

def decoders(G, n, thresholds):
    """{name: (objective, its sampler.Decoding or None for AR)}; G cells, rows of n."""
    out = {"ar": ("ar", None),
           "llada": ("mdm", Decoding(steps=G, block_len=G)),
           "llada-margin": ("mdm", Decoding(steps=G, block_len=G, remasking="margin")),
           "llada-random": ("mdm", Decoding(steps=G, block_len=G, remasking="random")),
           "llada-rows": ("mdm", Decoding(steps=G, block_len=n))}
    for tau in thresholds:
        for cache in ("none", "prefix", "dual"):
            out[f"t{tau:g}" + ("" if cache == "none" else f"-{cache}")] = ("mdm", Decoding(block_len=G, threshold=tau,
                                                                                           cache=cache))
    return out


def pick(table, names):
    """The decoders named (comma-separated, or 'all'); ValueError for an unknown one."""
    if names == "all":
        return table
    wanted = [n.strip() for n in names.split(",")]
    unknown = [n for n in wanted if n not in table]
    if unknown:
        raise ValueError(f"unknown decoder(s) {', '.join(unknown)}; known: {', '.join(table)}")
    return {n: table[n] for n in wanted}


def decode(model, prompts, G, opts):
    """-> (generated ids (B, G), when (B, G): the pass that committed each cell, passes per row (B,));
    opts: the Decoding of a diffusion model (an AR model takes none)."""
    if model.config.objective == "ar":
        steps = generate_ar(model, prompts, gen_len=G)
    else:
        steps = generate(model, prompts, opts, G, torch.Generator().manual_seed(0))
    when, P = None, None
    for k, step in enumerate(steps):
        if when is None:
            P = step.x.shape[1] - G
            when = torch.full((step.x.shape[0], G), -1, dtype=torch.long)
        when[step.committed[:, P:].cpu()] = k
    return step.x[:, P:].cpu(), when, when.max(dim=1).values + 1


def run_decoder(model, tok, sudoku, pairs, opts, batch_size, device):
    """All puzzles through one decoder, in batches -> dict of per-puzzle tensors and the seconds."""
    G, parts, seconds = sudoku.answer_len, [], 0.0
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        prompts = [prompt_ids(tok, p) for p, _ in chunk]
        (gen, when, passes), dt = timed_call(lambda: decode(model, prompts, G, opts), device)
        exact, valid = check_rows(tok, sudoku, chunk, gen)
        parts.append(dict(gen=gen, exact=exact, valid=valid, when=when, passes=passes))
        seconds += dt
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}, seconds


# ---- analysis -------------------------------------------------------------------------------

DEPTHS = ("given", "1", "2", "3", "4", "5+", "none")


def depth_labels(sudoku, pairs):
    """(N, cells) index into DEPTHS of every cell's singles depth."""
    rows = []
    for puzzle, _ in pairs:
        d = tasks.singles_depth(puzzle, sudoku)
        rows.append([len(DEPTHS) - 1 if x is None else min(x, 5) for x in d])
    return torch.tensor(rows)


def order_agreement(when, depth):
    """Of the pairs of blank cells of different, known singles depth in one puzzle, the share a
    decoder fills shallower first (ties, the same pass, count half): 1 = it follows the
    propagation, about 0.5 = it ignores it."""
    agree, total = 0.0, 0
    known = (depth > 0) & (depth < len(DEPTHS) - 1)  # (N, G): blank and decided by singles
    for w, d, k in zip(when, depth, known):
        w, d = w[k], d[k]
        shallower = d[:, None] < d[None, :]  # (n, n): cell a is shallower than cell b
        before, same = w[:, None] < w[None, :], w[:, None] == w[None, :]  # (n, n): a filled before b, with b
        agree += float((before & shallower).sum() + 0.5 * (same & shallower).sum())
        total += int(shallower.sum())
    return agree / max(total, 1)


def cell_table(results, pairs, depth, tok):
    """{decoder: {depth: (cell accuracy, mean commit pass)}} over every cell of every puzzle."""
    truth = torch.tensor([tok.encode(tasks.to_text(s)) for _, s in pairs])  # (N, G)
    out = {}
    for name, r in results.items():
        right = r["gen"] == truth
        out[name] = {label: (float(right[depth == i].float().mean()), float(r["when"][depth == i].float().mean()))
                     for i, label in enumerate(DEPTHS) if (depth == i).any()}
    return out


# ---- main -----------------------------------------------------------------------------------

def load(args, device):
    """-> (dlm, ar, tokenizer, task), checked to belong together."""
    dlm, tok, task = load_task_model(args.dlm, "--dlm", device)
    ar, tok_ar, task_ar = load_task_model(args.ar, "--ar", device)
    if task[:2] != task_ar[:2] or tok.fingerprint() != tok_ar.fingerprint():
        raise ValueError(f"--dlm is {task[0]} seed {task[1]}, --ar {task_ar[0]} seed {task_ar[1]}: they must share "
                         "task and seed")
    if dlm.config.objective != "mdm" or dlm.config.block_size or ar.config.objective != "ar":
        raise ValueError("--dlm must be a full-attention diffusion checkpoint and --ar an AR one")
    return dlm, ar, tok, (task[0], task[1], min(task[2], task_ar[2]))


def validate(ar, tok, sudoku, pairs):
    """Before anything is scored: the checks tell right from wrong, and AR's cache is exact."""
    validate_checks(tok, sudoku, pairs)
    prompts = [prompt_ids(tok, p) for p, _ in pairs[:4]]
    cached, _, _ = decode(ar, prompts, sudoku.answer_len, None)
    G = sudoku.answer_len
    plain = [s.x for s in generate_ar(ar, prompts, gen_len=G, kv_cache=False)][-1][:, -G:]
    if not torch.equal(cached, plain.cpu()):
        raise ValueError("AR with its KV cache disagrees with AR without it: fix the sampler first")
    print("check: solutions score exact and valid, swapped digits neither; AR KV cache == no cache: yes")


def main(argv=None):
    args = parse_quick(get_parser(), argv, dict(n=QUICK_N))
    args.threads = set_threads(args.threads)
    device = resolve_device(args.device)
    dlm, ar, tok, task = load(args, device)
    name, sudoku = task[0], tasks.SUDOKUS[task[0]]
    meta = dict(device=f"{device} ({device_name(device)})", torch=torch.__version__, task=name, seed=task[1],
                params=dlm.num_params(non_embedding=False))
    print_config("config", {**vars(args), **meta})
    pairs = held_out(task, args.n)
    validate(ar, tok, sudoku, pairs)

    results, rows = {}, []
    print(f"\n{len(pairs)} held-out {name} puzzles, batches of {args.batch_size}, {meta['device']}")
    print(f"{'decoder':<14} {'exact %':>8} {'valid %':>8} {'passes':>7} {'tok/pass':>8} {'seconds':>8}")
    for dec, (objective, opts) in pick(decoders(sudoku.answer_len, sudoku.n, args.thresholds), args.decoders).items():
        r, sec = run_decoder(ar if objective == "ar" else dlm, tok, sudoku, pairs, opts, args.batch_size, device)
        results[dec] = r
        passes = float(r["passes"].float().mean())
        row = dict(decoder=dec, exact=float(r["exact"].float().mean()), valid=float(r["valid"].float().mean()),
                   passes=passes, tokens_per_pass=sudoku.answer_len / passes, seconds=sec, n=len(pairs))
        rows.append(row)
        print(f"{dec:<14} {100 * row['exact']:>8.1f} {100 * row['valid']:>8.1f} {passes:>7.2f} "
              f"{row['tokens_per_pass']:>8.2f} {sec:>8.2f}")
    report = analyse(results, pairs, sudoku, tok)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "decoders": rows, **report}, f, indent=1)
    print(f"\nwrote {args.out}")


def row_table(results, pairs, tok, n):
    """{decoder: (blank-cell accuracy per grid row, the share of its failed puzzles whose first
    wrong cell in reading order is in that row)}: where reading order goes wrong."""
    truth = torch.tensor([tok.encode(tasks.to_text(s)) for _, s in pairs])  # (N, G)
    blank = torch.tensor([[v == 0 for v in p] for p, _ in pairs]).view(-1, n, n)  # (N, rows, columns)
    out = {}
    for d, r in results.items():
        wrong = r["gen"] != truth  # (N, G)
        failed = wrong.any(dim=1)  # (N,)
        first_row = wrong[failed].float().argmax(dim=1) // n  # (failed,): the row of the first wrong cell
        out[d] = ([float((~wrong).view(-1, n, n)[:, i][blank[:, i]].float().mean()) for i in range(n)],
                  [float((first_row == i).float().mean()) if failed.any() else 0.0 for i in range(n)])
    return out


def analyse(results, pairs, sudoku, tok):
    """Print and return where each decoder succeeds: by puzzle class, by cell depth, by grid row."""
    depth = depth_labels(sudoku, pairs)  # (N, G)
    singles = (depth < len(DEPTHS) - 1).all(dim=1)  # (N,): solvable by singles alone
    taus = sorted((d for d in results if d.startswith("t") and "-" not in d), key=lambda d: float(d[1:]))
    names = [d for d in ("ar", "llada", "llada-random", "llada-rows") if d in results] + \
        [d for d in taus[-1:] + [f"{t}-dual" for t in taus[-1:]] if d in results]
    print(f"\nexact % by puzzle: solvable by singles alone ({int(singles.sum())}) or not ({int((~singles).sum())})")
    by_class = {}
    for d in names:
        e = results[d]["exact"]
        by_class[d] = {"singles": float(e[singles].float().mean()) if singles.any() else None,
                       "other": float(e[~singles].float().mean()) if (~singles).any() else None}
        shown = (f"{k} {'-' if v is None else f'{100 * v:5.1f}'}" for k, v in by_class[d].items())
        print(f"  {d:<14} " + "  ".join(shown))
    cells = cell_table({d: results[d] for d in names}, pairs, depth, tok)
    share = {label: float((depth == i).float().mean()) for i, label in enumerate(DEPTHS)}
    print("\ncells by singles depth: share of cells; per decoder, cell accuracy % / mean pass that committed it")
    print(f"{'depth':<7} {'share %':>7} " + " ".join(f"{d:>17}" for d in names))
    for label in DEPTHS:
        if label in cells[names[0]]:
            print(f"{label:<7} {100 * share[label]:>7.1f} " + " ".join(
                f"{100 * cells[d][label][0]:>9.1f} / {cells[d][label][1]:>5.1f}" for d in names))
    agreement = {d: order_agreement(results[d]["when"], depth) for d in names}
    print("order agreement (pairs of blanks of different depth filled shallower first; 0.5 = blind to depth): " +
          ", ".join(f"{d} {v:.2f}" for d, v in agreement.items()))
    rows = row_table({d: results[d] for d in names}, pairs, tok, sudoku.n)
    print("\nby grid row (AR writes row 1 first): blank cells right % / % of the failed puzzles whose first wrong "
          "cell is in the row")
    print(f"{'row':<4} " + " ".join(f"{d:>17}" for d in names))
    for i in range(sudoku.n):
        print(f"{i + 1:<4} " + " ".join(f"{100 * rows[d][0][i]:>9.1f} / {100 * rows[d][1][i]:>5.1f}" for d in names))
    return dict(by_class=by_class, cells=cells, depth_share=share, order_agreement=agreement, by_row=rows)


if __name__ == "__main__":
    run(main)
