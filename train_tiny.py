"""
Train a tiny masked diffusion LM (or its AR twin) on a text file.

    python train_tiny.py                          # the preset of this machine: --preset cpu or --preset gpu
    python train_tiny.py --max-iters 300          # the preset with fewer steps (any flag overrides it)
    python train_tiny.py --objective ar --out-dir out-ar       # the AR baseline
    python train_tiny.py --block-size 16 --out-dir out-bd3     # block diffusion (BD3-LM)
    python train_tiny.py --task sudoku6 --out-dir out-sudoku   # generated 6x6 Sudoku (notes/08)
    python train_tiny.py --init-from out-ar/ckpt.pt --out-dir out-a2d  # AR-to-diffusion (notes/09)
    python train_tiny.py --train-tokens 30000 --max-iters 4000  # 30k tokens, many epochs (notes/09)
    python train_tiny.py --preset none            # no preset: the defaults in --help
    torchrun --nproc_per_node 8 train_tiny.py     # DDP on 8 GPUs, same global batch

Writes <out-dir>/ckpt.pt (weights, optimizer, config, tokenizer, step) atomically at every
evaluation, at the end, and on Ctrl-C. --resume continues from it.
"""

import argparse
import math
import os
import sys
import time

import torch

from mini_dlm.plumbing import distributed
from mini_dlm.plumbing.checkpoint import load_checkpoint, save_checkpoint
from mini_dlm.plumbing.cli import (Parser, autocast, check_out_dir, comma_list, non_negative_float, non_negative_int, positive_int, print_config,
                          resolve_device, run, set_threads)
from mini_dlm.data import DEFAULT_DATA, get_batch, prepare_data, prepare_task, train_slice
from mini_dlm.diffusion import evaluate, loss_fn
from mini_dlm.model import OBJECTIVES, ModelConfig, Transformer
from mini_dlm.tasks.sudoku import SUDOKUS, TEST_POOL

# dense bf16 tensor-core peaks (FLOP/s) for the MFU column; other GPUs print no MFU
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12}


# Workshop presets (notes/02: what was tried, what each gave). A flag given on the command line
# wins over its preset value. cpu: measured on a 2-core CPU, ~0.28 s/step: 2000 steps in about
# 10 minutes. gpu: an estimate, not yet measured on a GPU.
PRESETS = {
    "cpu": dict(n_layer=4, n_head=4, n_embd=128, seq_len=64, batch_size=32, lr=3e-3, min_lr=3e-4, warmup_iters=50,
                max_iters=2000, dropout=0.0, eval_interval=500, log_interval=100),
    "gpu": dict(n_layer=6, n_head=6, n_embd=384, seq_len=256, batch_size=64, lr=1e-3, min_lr=1e-4, warmup_iters=200,
                max_iters=3000, dropout=0.0, eval_interval=500, log_interval=100),
}


def get_parser():
    p = Parser(description="Train a tiny masked diffusion LM (LLaDA/MDLM ELBO) or its AR baseline.")
    p.add_argument("--preset", choices=("auto", *PRESETS, "none"), default="auto", help="auto: the preset of "
                   "the device it runs on; " + "; ".join(f"{k}: {fmt_preset(v)}" for k, v in PRESETS.items()) +
                   "; none: the defaults below. Flags given override the preset")
    g = p.add_argument_group("data")
    g.add_argument("--data", default=DEFAULT_DATA, help="UTF-8 text file; the shipped tiny Shakespeare")
    g.add_argument("--out-dir", default="out", help="checkpoint and token-cache directory")
    g.add_argument("--vocab-size", type=positive_int, default=2048, help="BPE vocabulary incl. 2 special tokens")
    g.add_argument("--tokenizer", choices=("bpe", "gpt2"), default="bpe",
                   help="bpe: trained here on --data; gpt2: tiktoken's GPT-2 (needs its files or network)")
    g.add_argument("--docs", action="store_true", help="train on documents, one per row, ended and padded with "
                   "end-of-text so the model learns where text ends (default: off, packed windows)")
    g.add_argument("--doc-sep", type=escaped, default="\n\n", help="what separates documents with --docs, with "
                   "backslash escapes (default: '\\n\\n', a blank line: one speech of the shipped corpus)")
    g.add_argument("--train-tokens", type=positive_int, help="train on the first N tokens of the training split only, "
                   "repeated for as many epochs as the run takes (with --docs or --task: the first N // row rows; "
                   "default: all)")
    g.add_argument("--task", choices=("sudoku6", "sudoku6-min", "sudoku9"), help="train on a generated task instead of --data (notes/08): "
                   "rows of puzzle ':' solution, one byte = one token (--vocab-size is not used), the loss on the "
                   "solution only; --seq-len becomes the row's length (default: off)")
    g.add_argument("--task-train", type=positive_int, default=50_000, help="training puzzles of --task")
    g.add_argument("--task-seed", type=int, default=0, help="the puzzles' seed; training, validation and held-out "
                   "puzzles are three streams of it")
    g.add_argument("--task-test", type=positive_int, default=TEST_POOL, help="held-out puzzles whose solution grids "
                   "are kept out of training and validation (bench/task.py scores the first --n of them)")
    g = p.add_argument_group("model")
    g.add_argument("--objective", choices=OBJECTIVES, default="mdm", help="mdm: masked diffusion; ar: next-token baseline")
    g.add_argument("--block-size", type=non_negative_int, default=0, help="block diffusion (BD3-LM): blocks of N tokens, "
                   "block-causal attention, exact KV cache when sampling; 0 = full attention (LLaDA)")
    g.add_argument("--n-layer", type=positive_int, default=6, help="Transformer blocks")
    g.add_argument("--n-head", type=positive_int, default=6, help="attention heads; must divide --n-embd")
    g.add_argument("--n-embd", type=positive_int, default=384, help="model width")
    g.add_argument("--seq-len", type=positive_int, default=512, help="training window = the model's context")
    g.add_argument("--dropout", type=non_negative_float, default=0.1, help="dropout on attention and residuals, in [0, 1)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--max-iters", type=positive_int, default=5000, help="optimizer steps in all (a resumed run stops here too)")
    g.add_argument("--batch-size", type=positive_int, default=32, help="windows of --seq-len tokens per step")
    g.add_argument("--lr", type=non_negative_float, default=1e-3, help="peak learning rate")
    g.add_argument("--min-lr", type=non_negative_float, default=1e-4, help="end of the cosine decay")
    g.add_argument("--warmup-iters", type=non_negative_int, default=200, help="linear warmup steps")
    g.add_argument("--weight-decay", type=non_negative_float, default=0.1, help="AdamW decay on matrices and embeddings")
    g.add_argument("--grad-clip", type=non_negative_float, default=1.0, help="0 disables clipping")
    g.add_argument("--complementary-masks", action="store_true", help="diffusion: every window twice, the second time "
                   "with the complement of its mask (Fast-dLLM v2); doubles the rows a step computes")
    g.add_argument("--token-shift", action="store_true", help="diffusion: a position's prediction comes from the "
                   "hidden state of the position before it, as in an AR model (Fast-dLLM v2)")
    g = p.add_argument_group("run")
    p.add_device_flag(g)
    p.add_threads_flag(g)
    g.add_argument("--seed", type=int, default=1337, help="initial weights, batches and masks")
    g.add_argument("--eval-interval", type=positive_int, default=500, help="steps between validation + checkpoint")
    g.add_argument("--eval-at", type=comma_list(positive_int, empty_ok=True), default="", help="comma-separated steps "
                   "to evaluate at besides every --eval-interval (bench/data_constrained.py: log-spaced)")
    g.add_argument("--eval-windows", type=positive_int, default=64, help="validation windows per evaluation")
    g.add_argument("--log-interval", type=positive_int, default=10, help="steps between progress lines")
    g.add_argument("--resume", action="store_true", help="continue from <out-dir>/ckpt.pt")
    g.add_argument("--init-from", help="start from the weights of this checkpoint (same tokenizer and n_layer, n_head, "
                   "n_embd; any objective): AR-to-diffusion conversion from an --objective ar checkpoint, step 0, a "
                   "fresh optimizer (default: random weights)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    return p


def escaped(s):
    """A flag value with backslash escapes ('\\n\\n' -> two newlines)."""
    try:
        return s.encode("utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError):
        raise argparse.ArgumentTypeError(f"bad escape sequence in {s!r}") from None


def fmt_preset(values):
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in values.items())


def parse_args(argv=None):
    """The flags of argv, on top of the preset's values (--preset auto: the device's), on top of
    the parser's defaults. With --task, --seq-len defaults to the task's row length."""
    args, given = get_parser().parse_given(argv)
    preset = args.preset
    if preset == "auto":
        preset = "gpu" if resolve_device(args.device).type == "cuda" else "cpu"
        print(f"preset: {preset}, this machine's ({'a GPU' if preset == 'gpu' else 'no GPU'}); "
              "--preset and any flag override it")
    values = dict(PRESETS.get(preset, {}))
    if args.task:
        values["seq_len"] = SUDOKUS[args.task].row_len
    for k, v in values.items():
        if k not in given:  # a flag given on the command line wins
            setattr(args, k, v)
    args.preset = preset
    return args


def load_init(path, args):
    """--init-from: (weights, tokenizer) of a trained checkpoint whose Transformer has this run's
    shape. The objective, block size, context and dropout may differ: none of them is a weight
    (RoPE has no parameters), so an AR model's weights serve a mask predictor as they are."""
    source, tokenizer, _ = load_checkpoint(path, flag="--init-from")
    shape = ("n_layer", "n_head", "n_embd")
    theirs, mine = [getattr(source.config, k) for k in shape], [getattr(args, k) for k in shape]
    if theirs != mine:
        theirs, mine = (" ".join(f"--{k.replace('_', '-')} {x}" for k, x in zip(shape, v)) for v in (theirs, mine))
        raise ValueError(f"--init-from {path}: its model is {theirs}, this run's {mine}: give the checkpoint's shape")
    return source.state_dict(), tokenizer


def check_init_tokenizer(path, theirs, mine):
    """ValueError unless the --init-from checkpoint's tokenizer maps ids to bytes as this run's does."""
    if theirs.fingerprint() != mine.fingerprint():
        raise ValueError(f"--init-from {path}: its tokenizer ({theirs.kind}, {theirs.vocab_size} tokens) is not "
                         f"this run's ({mine.kind}, {mine.vocab_size} tokens): train with the --data, --vocab-size "
                         "and --tokenizer it was trained with")


def lr_at(it, args):
    """Linear warmup to --lr, then cosine decay to --min-lr at --max-iters."""
    if it < args.warmup_iters:
        return args.lr * (it + 1) / args.warmup_iters
    frac = (it - args.warmup_iters) / max(1, args.max_iters - args.warmup_iters)
    return args.min_lr + 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))) * (args.lr - args.min_lr)


def check_flags(args):
    """What the flag types alone cannot check, before the data is read or anything is kept."""
    if args.task:
        need = SUDOKUS[args.task].row_len
        if args.seq_len != need:
            raise ValueError(f"--task {args.task} rows are {need} tokens: leave --seq-len out or give {need}")
        if args.docs or args.block_size:
            raise ValueError("--task trains full-attention diffusion or AR models on its own rows: no --docs, --block-size")
    if args.complementary_masks and args.objective == "ar":
        raise ValueError("--complementary-masks is for diffusion training: an AR model masks nothing")
    if args.init_from and args.resume:
        raise ValueError("--init-from starts a new run and --resume continues one: give one of them")
    if args.min_lr > args.lr:
        raise ValueError(f"--min-lr {args.min_lr} is above --lr {args.lr}: the learning rate would rise as it decays")
    if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 alone, while the others wait to join it
        check_out_dir(args.out_dir)


def main(argv=None):
    args = parse_args(argv)
    check_flags(args)
    args.threads = set_threads(args.threads)
    world = distributed.setup(resolve_device(args.device))  # torchrun: join the process group; else a world of one
    try:
        train(args, world)
    finally:
        world.close()


def train(args, world):
    if args.batch_size % world.size:  # every rank trains on an equal share of the global batch
        raise ValueError(f"--batch-size {args.batch_size} must be divisible by the number of processes ({world.size}): "
                         "each trains on an equal share of the global batch")
    ckpt_path = os.path.join(args.out_dir, "ckpt.pt")
    device = world.device

    # -- model shape: from the flags, or from the checkpoint when resuming
    resumed = None
    if args.resume:
        model, tokenizer, resumed = load_checkpoint(ckpt_path, flag="--resume")
        cfg, tc = model.config, resumed["train_config"]
        for name in ("objective", "block_size", "token_shift", "n_layer", "n_head", "n_embd", "seq_len", "dropout"):
            setattr(args, name, getattr(cfg, name))  # the checkpoint's shape wins over the flags
        args.docs, args.doc_sep = tc.get("docs", False), tc.get("doc_sep", args.doc_sep)  # and its data mode
        args.train_tokens, args.complementary_masks = tc.get("train_tokens"), tc.get("complementary_masks", False)
        args.task, args.task_train, args.task_seed, args.task_test = (tc.get(k) for k in ("task", "task_train",
                                                                                          "task_seed", "task_test"))
        vocab_size, tok_kind = tc.get("vocab_size", args.vocab_size), tc.get("tokenizer", args.tokenizer)
    else:
        tokenizer, vocab_size, tok_kind = None, args.vocab_size, args.tokenizer
        ModelConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, seq_len=args.seq_len,
                    dropout=args.dropout, objective=args.objective, block_size=args.block_size,
                    token_shift=args.token_shift)  # validate the
        # flags before anything is read or written
    init_weights, init_tokenizer = load_init(args.init_from, args) if args.init_from else (None, None)

    # -- data: tokenizer + token ids, cached in out-dir (under DDP every rank makes the same: BPE
    # training is deterministic and the cache is written atomically)
    t0 = time.time()
    if args.task:  # generated rows (mini_dlm/tasks/sudoku.py), byte-level; the prompt is the puzzle and ':'
        tokenizer, train_ids, val_ids = prepare_task(args.task, args.task_seed, args.task_train, args.task_test,
                                                     args.out_dir)
        vocab_size, tok_kind, prompt_len = tokenizer.vocab_size, "bytes", SUDOKUS[args.task].prompt_len
    else:
        tokenizer, train_ids, val_ids = prepare_data(args.data, vocab_size, args.out_dir, args.seq_len, tok_kind, tokenizer,
                                                     args.doc_sep if args.docs else None)
        prompt_len = 0
    if args.train_tokens:
        train_ids = train_slice(train_ids, args.train_tokens, args.seq_len + 1)
    if init_tokenizer is not None:
        check_init_tokenizer(args.init_from, init_tokenizer, tokenizer)
    if not resumed:
        torch.manual_seed(args.seed)  # the initial weights depend on --seed only
        cfg = ModelConfig(vocab_size=tokenizer.vocab_size, seq_len=args.seq_len, n_layer=args.n_layer,
                          n_head=args.n_head, n_embd=args.n_embd, dropout=args.dropout,
                          mask_id=tokenizer.mask_id, objective=args.objective, block_size=args.block_size,
                          token_shift=args.token_shift)
        model = Transformer(cfg)
        if init_weights is not None:
            model.load_state_dict(init_weights)  # AR-to-diffusion: the same weights, now trained as cfg.objective
    model.to(device).train()
    optimizer = model.configure_optimizer(args.lr, args.weight_decay, (0.9, 0.95), device.type)
    start = 0
    if resumed:
        optimizer.load_state_dict(resumed["optimizer"])
        start = resumed["step"]

    train_config = {**vars(args), "device": str(device), "vocab_size": vocab_size, "tokenizer": tok_kind}
    print_config("config", {**train_config, "model": cfg})
    unit = f"rows of {args.seq_len + 1} (documents ended and padded with end-of-text)" if args.docs else \
        f"{args.task} puzzles (rows of {args.seq_len + 1}; the loss on the last {args.seq_len - prompt_len})" if args.task \
        else "tokens"
    print(f"data: {len(train_ids):,} train / {len(val_ids):,} val {unit}, vocab {tokenizer.vocab_size} "
          f"({tok_kind}), ready in {time.time() - t0:.1f} s")
    if args.train_tokens:  # epochs: tokens the run reads / tokens it has
        epochs = args.max_iters * args.batch_size * cfg.seq_len / train_ids.numel()
        print(f"data: --train-tokens keeps {train_ids.numel():,} training tokens; {args.max_iters} steps read them "
              f"{epochs:,.1f} times (epochs)")
    print(f"model: {model.num_params() / 1e6:.2f}M parameters (+{model.wte.weight.numel() / 1e6:.2f}M embedding), "
          f"objective {cfg.objective}" + (f", blocks of {cfg.block_size}" if cfg.block_size else "") +
          (", token shift" if cfg.token_shift else "") +
          (f", resuming at step {start}" if resumed else "") + (f", initialised from {args.init_from}" if args.init_from else ""))
    share = args.batch_size // world.size
    rows = slice(world.rank * share, (world.rank + 1) * share)  # this rank's rows of every batch
    if world.ddp:
        print(f"ddp: {world.size} processes, each trains on {share} of the {args.batch_size} rows of a batch")

    # Randomness. Batches and masking noise are the same streams on every rank, and each rank
    # keeps its rows of the global draw (get_batch below, loss_fn's shard): together the ranks
    # train on exactly what one process would. Dropout must differ between ranks (or each would
    # drop the same units of its rows), so under DDP the noise gets a generator of its own,
    # seeded alike (the values one process draws), and the global stream a seed per rank.
    seed = args.seed + start  # a resumed run draws fresh noise
    torch.manual_seed(seed)  # masking noise and dropout
    batch_gen = torch.Generator().manual_seed(seed)
    noise_gen = None
    if world.ddp:
        noise_gen = torch.Generator(device).manual_seed(seed)
        torch.manual_seed(seed + 1 + world.rank)  # dropout alone
    step_fn = torch.compile(model) if args.compile else model  # evaluates (no DDP: no rank waits for another)
    train_fn = world.wrap(step_fn)  # trains; under DDP it all-reduces the gradients
    amp = autocast(device)
    peak = next((f for name, f in PEAK_BF16.items() if device.type == "cuda" and name in torch.cuda.get_device_name(device)), None)
    peak = peak and peak * world.size  # MFU over all the GPUs
    tokens_per_step = args.batch_size * cfg.seq_len * (2 if args.complementary_masks else 1)  # computed, global batch

    def do_eval(step):
        t = time.time()
        with amp:
            v = evaluate(step_fn, val_ids, cfg.seq_len, batch_size=args.batch_size, max_windows=args.eval_windows,
                         prompt_len=prompt_len)
        what, rel = ("val nll", "=") if cfg.objective == "ar" else ("val bound", "<=")  # AR: exact; MDM: a bound
        print(f"eval step {step:05d} | {what} {v['nats']:.4f} nats/token | ppl {rel} {v['ppl']:.2f} | {time.time() - t:.1f} s")
        return v

    # Every rank evaluates (the same weights and windows: the same figures, and the other ranks
    # would only wait for rank 0 otherwise); rank 0 alone prints and saves, the unwrapped model.
    def save(step, val):
        if world.master:
            os.makedirs(args.out_dir, exist_ok=True)
            save_checkpoint(ckpt_path, model, tokenizer, step, optimizer, train_config, val)

    step, val = start, None
    try:
        if start == 0:
            val = do_eval(0)
        t_last, step_last = time.time(), start
        while step < args.max_iters:
            lr = lr_at(step, args)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = get_batch(train_ids, args.batch_size, cfg.seq_len + 1, batch_gen, device)[rows]  # (B / ranks, T+1)
            with amp:
                loss = loss_fn(train_fn, batch, noise_gen, (world.rank, world.size), prompt_len,
                               args.complementary_masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if args.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            step += 1
            if step % args.log_interval == 0 or step == args.max_iters:
                loss_val = world.mean(loss).item()  # the global batch's loss; syncs the device
                dt = (time.time() - t_last) / (step - step_last)
                t_last, step_last = time.time(), step
                line = (f"step {step:05d}/{args.max_iters:05d} | loss {loss_val:.4f} | lr {lr:.2e} | "
                        f"{dt * 1000:7.1f} ms | {tokens_per_step / dt:9,.0f} tok/s")
                if peak:
                    line += f" | mfu {model.flops_per_token(cfg.seq_len) * tokens_per_step / dt / peak:5.1%}"
                print(line, flush=True)
            if step % args.eval_interval == 0 or step == args.max_iters or step in args.eval_at:
                val = do_eval(step)
                save(step, val)
                t_last = time.time()  # evaluation time is not training time
    except KeyboardInterrupt:
        save(step, val)
        if world.master:
            print(f"\ninterrupted: saved step {step} to {ckpt_path}", file=sys.stderr)
        sys.exit(130)
    if start >= args.max_iters:
        print(f"checkpoint is already at step {start} >= --max-iters {args.max_iters}; nothing to do")
    else:
        print(f"saved {ckpt_path} (step {step})")


if __name__ == "__main__":
    run(main)
