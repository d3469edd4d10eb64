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
evaluation, at the end, and on Ctrl-C. --resume continues from it, with the settings it was
trained with as the defaults.
"""

import argparse
import functools
import math
import os
import sys
import time

import torch

from mini_dlm.conversion.a2d import check_init_tokenizer, load_init
from mini_dlm.conversion.complementary import complementary_loss
from mini_dlm.data import DEFAULT_DATA, get_batch, prepare_data, train_slice
from mini_dlm.diffusion import evaluate, loss_at, loss_fn
from mini_dlm.model import OBJECTIVES, ModelConfig
from mini_dlm.plumbing import distributed
from mini_dlm.plumbing.checkpoint import load_checkpoint, new_model, save_checkpoint
from mini_dlm.plumbing.cli import (Parser, autocast, check_out_dir, comma_list, non_negative_float, non_negative_int,
                                   positive_int, print_config, resolve_device, run, set_threads)
from mini_dlm.tasks.rows import prepare_task, task_loss
from mini_dlm.tasks.sudoku import SUDOKUS, TEST_POOL
from mini_dlm.tokenizer import GPT2_VOCAB, MIN_VOCAB

# dense bf16 tensor-core peaks (FLOP/s) for the MFU column; other GPUs print no MFU
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12}


# Workshop presets (notes/02: what was tried, what each gave): defaults that a flag given on the
# command line overrides. cpu: measured on a 2-core CPU, ~0.28 s/step: 2000 steps in about
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
    data_flags(p.add_argument_group("data"))
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


def data_flags(g):
    """The data flags, into the argument group g."""
    g.add_argument("--data", default=DEFAULT_DATA, help="UTF-8 text file; the shipped tiny Shakespeare")
    g.add_argument("--out-dir", default="out", help="checkpoint and token-cache directory")
    g.add_argument("--vocab-size", type=positive_int, default=2048, help="BPE vocabulary incl. 2 special tokens "
                   f"(--tokenizer gpt2: {GPT2_VOCAB}; --task: {MIN_VOCAB}, its bytes)")
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
                   "rows of puzzle ':' solution, one byte = one token, the loss on the "
                   "solution only; --seq-len becomes the row's length (default: off)")
    g.add_argument("--task-train", type=positive_int, default=50_000, help="training puzzles of --task")
    g.add_argument("--task-seed", type=int, default=0, help="the puzzles' seed; training, validation and held-out "
                   "puzzles are three streams of it")
    g.add_argument("--task-test", type=positive_int, default=TEST_POOL, help="held-out puzzles whose solution grids "
                   "are kept out of training and validation (bench/task.py scores the first --n of them)")


def escaped(s):
    """A flag value with backslash escapes ('\\n\\n' -> two newlines)."""
    try:
        return s.encode("utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError):
        raise argparse.ArgumentTypeError(f"bad escape sequence in {s!r}") from None


def fmt_preset(values):
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in values.items())


FIXED = ("preset", "objective", "block_size", "token_shift", "n_layer", "n_head", "n_embd", "seq_len", "dropout",
         "vocab_size", "tokenizer", "docs", "doc_sep", "train_tokens", "task", "task_train", "task_seed", "task_test",
         "complementary_masks")  # what --resume keeps as it was: the model, its tokenizer, its data
PER_RUN = ("resume", "init_from", "out_dir", "device", "threads")  # never taken from a checkpoint


def parse_args(argv=None):
    """-> (args, the checkpoint --resume continues or None). The flags of argv win over defaults
    that depend on three of them: with --resume, the settings the run was trained with (its
    model, tokenizer and data may not change); else the values of --preset (auto: this
    device's) and those of --task (its row length and byte vocabulary) or --tokenizer gpt2."""
    parser = get_parser()
    first = parser.parse_known_args(argv)[0]
    if first.init_from and first.resume:
        raise ValueError("--init-from starts a new run and --resume continues one: give one of them")
    if first.resume:
        resumed = load_checkpoint(os.path.join(first.out_dir, "ckpt.pt"), flag="--resume")  # (model, tokenizer, dict)
        saved = resumed[2]["train_config"]
        parser.set_defaults(**{k: v for k, v in saved.items() if k in vars(first) and k not in PER_RUN})
        args = parser.parse_args(argv)
        changed = [f"--{k.replace('_', '-')} {saved[k]!r}" for k in FIXED if k in saved and getattr(args, k) != saved[k]]
        if changed:
            raise ValueError(f"--resume continues the run as it was trained, with {', '.join(changed)}: leave "
                             f"{'those flags' if len(changed) > 1 else 'the flag'} out")
        return args, resumed
    preset = first.preset
    if preset == "auto":
        preset = "gpu" if resolve_device(first.device).type == "cuda" else "cpu"
        print(f"preset: {preset}, this machine's ({'a GPU' if preset == 'gpu' else 'no GPU'}); "
              "--preset and any flag override it")
    parser.set_defaults(**PRESETS.get(preset, {}), preset=preset)
    if first.task:
        parser.set_defaults(seq_len=SUDOKUS[first.task].row_len, vocab_size=MIN_VOCAB)
    elif first.tokenizer == "gpt2":
        parser.set_defaults(vocab_size=GPT2_VOCAB)
    return parser.parse_args(argv), None


def check_flags(args):
    """What the flag types alone cannot check, before the data is read or anything is kept."""
    if args.task:
        need = SUDOKUS[args.task].row_len
        if args.seq_len != need:
            raise ValueError(f"--task {args.task} rows are {need} tokens: leave --seq-len out or give {need}")
        if args.vocab_size != MIN_VOCAB:
            raise ValueError(f"--task {args.task} tokens are bytes ({MIN_VOCAB} ids): leave --vocab-size out")
        if args.docs or args.block_size or args.complementary_masks:
            raise ValueError("--task trains full-attention diffusion or AR models on its own rows: no --docs, "
                             "--block-size, --complementary-masks")
    if args.complementary_masks and args.objective == "ar":
        raise ValueError("--complementary-masks is for diffusion training: an AR model masks nothing")
    if args.min_lr > args.lr:
        raise ValueError(f"--min-lr {args.min_lr} is above --lr {args.lr}: the learning rate would rise as it decays")
    if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 alone, while the others wait to join it
        check_out_dir(args.out_dir)


def main(argv=None):
    args, resumed = parse_args(argv)
    check_flags(args)
    args.threads = set_threads(args.threads)
    world = distributed.setup(resolve_device(args.device))  # torchrun: join the process group; else a world of one
    try:
        train(args, world, resumed)
    finally:
        world.close()


def load_data(args, tokenizer):
    """-> (tokenizer, train_ids, val_ids): generated task rows, document rows or a packed token
    stream (mini_dlm/data.py), cached in out-dir. The tokenizer is trained unless one is given.
    Under DDP every rank makes the same: BPE training is deterministic, the cache atomic."""
    if args.task:  # rows of puzzle ':' solution, byte-level (mini_dlm/tasks/rows.py)
        data = prepare_task(args.task, args.task_seed, args.task_train, args.task_test, args.out_dir)
    else:
        data = prepare_data(args.data, args.vocab_size, args.out_dir, args.seq_len, args.tokenizer, tokenizer,
                            args.doc_sep if args.docs else None)
    tokenizer, train_ids, val_ids = data
    if args.train_tokens:  # a fixed slice, repeated for many epochs (notes 09)
        train_ids = train_slice(train_ids, args.train_tokens, args.seq_len + 1)
    return tokenizer, train_ids, val_ids


def new_run(args):
    """-> (model, tokenizer, train_ids, val_ids) of a new run. Its ModelConfig comes from the
    flags, checked before any data is read; the weights are random or --init-from's
    (AR-to-diffusion, mini_dlm/conversion/a2d.py)."""
    cfg = ModelConfig(vocab_size=args.vocab_size, seq_len=args.seq_len, n_layer=args.n_layer, n_head=args.n_head,
                      n_embd=args.n_embd, dropout=args.dropout, mask_id=args.vocab_size - 1,
                      objective=args.objective, block_size=args.block_size, token_shift=args.token_shift)
    init = load_init(args.init_from, cfg) if args.init_from else None  # (weights, tokenizer)
    tokenizer, train_ids, val_ids = load_data(args, None)
    if tokenizer.vocab_size != cfg.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids, --vocab-size {cfg.vocab_size}")
    torch.manual_seed(args.seed)  # the initial weights depend on --seed only
    model = new_model(cfg)
    if init:
        check_init_tokenizer(args.init_from, init[1], tokenizer)
        model.load_state_dict(init[0])  # the same weights, now trained as cfg.objective
    return model, tokenizer, train_ids, val_ids


def build(args, device, resumed):
    """-> (model, tokenizer, train_ids, val_ids, optimizer, start step): a new run, or the one
    --resume continues, with its checkpoint's weights, tokenizer, optimizer state and step."""
    if resumed:
        model, tokenizer, ckpt = resumed
        tokenizer, train_ids, val_ids = load_data(args, tokenizer)
    else:
        model, tokenizer, train_ids, val_ids = new_run(args)
    model.to(device).train()
    optimizer = model.configure_optimizer(args.lr, args.weight_decay, (0.9, 0.95), device.type)
    if resumed:
        optimizer.load_state_dict(ckpt["optimizer"])
    return model, tokenizer, train_ids, val_ids, optimizer, ckpt["step"] if resumed else 0


def objectives(args):
    """(training loss, validation loss), each the loss of a batch under given noise
    (diffusion.loss_at's signature): a task's answer given its puzzle, or the plain loss;
    --complementary-masks trains on each window and its complement, and validates on the plain
    bound, so that runs compare."""
    if args.task:
        return task_loss(args.task), task_loss(args.task)
    return complementary_loss if args.complementary_masks else loss_at, loss_at


def lr_at(it, args):
    """Linear warmup to --lr, then cosine decay to --min-lr at --max-iters."""
    if it < args.warmup_iters:
        return args.lr * (it + 1) / args.warmup_iters
    frac = (it - args.warmup_iters) / max(1, args.max_iters - args.warmup_iters)
    return args.min_lr + 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))) * (args.lr - args.min_lr)


def train(args, world, resumed):
    if args.batch_size % world.size:  # every rank trains on an equal share of the global batch
        raise ValueError(f"--batch-size {args.batch_size} must be divisible by the number of processes ({world.size}): "
                         "each trains on an equal share of the global batch")
    t0 = time.time()
    model, tokenizer, train_ids, val_ids, optimizer, start = build(args, world.device, resumed)
    run_config = {**vars(args), "device": str(world.device), "vocab_size": tokenizer.vocab_size,
                  "tokenizer": "bytes" if args.task else args.tokenizer}
    describe(run_config, model, train_ids, val_ids, start, time.time() - t0, world)
    checkpoint = functools.partial(save, args.out_dir, model, tokenizer, optimizer, run_config, world.master)
    loop(args, model, optimizer, (train_ids, val_ids), start, checkpoint, world)


def describe(run_config, model, train_ids, val_ids, start, seconds, world):
    """Print the resolved configuration, the data, the model and the processes."""
    args, cfg = argparse.Namespace(**run_config), model.config
    print_config("config", {**run_config, "model": cfg})
    prompt_len = SUDOKUS[args.task].prompt_len if args.task else 0
    unit = f"rows of {args.seq_len + 1} (documents ended and padded with end-of-text)" if args.docs else \
        f"{args.task} puzzles (rows of {args.seq_len + 1}; the loss on the last {args.seq_len - prompt_len})" \
        if args.task else "tokens"
    print(f"data: {len(train_ids):,} train / {len(val_ids):,} val {unit}, vocab {args.vocab_size} "
          f"({args.tokenizer}), ready in {seconds:.1f} s")
    if args.train_tokens:  # epochs: tokens the run reads / tokens it has
        epochs = args.max_iters * args.batch_size * cfg.seq_len / train_ids.numel()
        print(f"data: --train-tokens keeps {train_ids.numel():,} training tokens; {args.max_iters} steps read them "
              f"{epochs:,.1f} times (epochs)")
    print(f"model: {model.num_params() / 1e6:.2f}M parameters (+{model.wte.weight.numel() / 1e6:.2f}M embedding), "
          f"objective {cfg.objective}" + (f", blocks of {cfg.block_size}" if cfg.block_size else "") +
          (", token shift" if cfg.token_shift else "") + (f", resuming at step {start}" if start else "") +
          (f", initialised from {args.init_from}" if args.init_from else ""))
    if world.ddp:
        print(f"ddp: {world.size} processes, each trains on {args.batch_size // world.size} of the "
              f"{args.batch_size} rows of a batch")


def random_streams(seed, world):
    """(batch generator, noise generator). Batches and masking noise are the same streams on every
    rank, and each rank keeps its rows of the global draw (loop's rows, diffusion.draw_noise's
    shard): together the ranks train on exactly what one process would. Dropout must differ
    between ranks, so under DDP the noise gets a generator of its own, seeded alike, and the
    global stream (dropout) a seed per rank. Without DDP the noise draws from the global stream."""
    torch.manual_seed(seed)  # masking noise and dropout
    batch_gen, noise_gen = torch.Generator().manual_seed(seed), None
    if world.ddp:
        noise_gen = torch.Generator(world.device).manual_seed(seed)
        torch.manual_seed(seed + 1 + world.rank)  # dropout alone
    return batch_gen, noise_gen


def loop(args, model, optimizer, data, start, checkpoint, world):
    """The training loop: batch, loss, backward, step; a progress line every --log-interval
    steps; validation and checkpoint(step, val) every --eval-interval steps, at the end and on
    Ctrl-C."""
    (train_ids, val_ids), cfg, amp = data, model.config, autocast(world.device)
    batch_gen, noise_gen = random_streams(args.seed + start, world)  # a resumed run draws fresh noise
    step_fn = torch.compile(model) if args.compile else model  # evaluates (no DDP: no rank waits for another)
    train_fn = world.wrap(step_fn)  # trains; under DDP it all-reduces the gradients
    train_loss, val_loss = objectives(args)
    rows = slice(world.rank * args.batch_size // world.size, (world.rank + 1) * args.batch_size // world.size)
    step, val = start, None
    try:
        if start == 0:
            val = validate(step_fn, val_ids, args, val_loss, amp, 0)
        meter = Meter(args, model, world, start)
        while step < args.max_iters:
            lr = lr_at(step, args)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = get_batch(train_ids, args.batch_size, cfg.seq_len + 1, batch_gen, world.device)[rows]  # (B / ranks, T + 1)
            with amp:
                loss = loss_fn(train_fn, batch, noise_gen, (world.rank, world.size), train_loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if args.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            step += 1
            if step % args.log_interval == 0 or step == args.max_iters:
                meter.log(step, world.mean(loss).item(), lr)  # the global batch's loss; syncs the device
            if step % args.eval_interval == 0 or step == args.max_iters or step in args.eval_at:
                val = validate(step_fn, val_ids, args, val_loss, amp, step)
                checkpoint(step, val)
                meter.restart()  # evaluation time is not training time
    except KeyboardInterrupt:
        checkpoint(step, val)
        if world.master:
            print(f"\ninterrupted: saved step {step} to {os.path.join(args.out_dir, 'ckpt.pt')}", file=sys.stderr)
        sys.exit(130)
    if start >= args.max_iters:
        print(f"checkpoint is already at step {start} >= --max-iters {args.max_iters}; nothing to do")
    else:
        print(f"saved {os.path.join(args.out_dir, 'ckpt.pt')} (step {step})")


class Meter:
    """The progress line: step, loss, lr, ms per step and tokens per second since the last line,
    and on a known GPU the model FLOPs utilisation (MFU) over all the GPUs."""

    def __init__(self, args, model, world, start):
        self.args, self.model, self.step_last = args, model, start
        self.tokens = args.batch_size * model.config.seq_len * (2 if args.complementary_masks else 1)  # computed
        device = world.device
        peak = next((f for name, f in PEAK_BF16.items()
                     if device.type == "cuda" and name in torch.cuda.get_device_name(device)), None)
        self.peak = peak and peak * world.size
        self.restart()

    def restart(self):
        self.t_last = time.time()

    def log(self, step, loss, lr):
        dt = (time.time() - self.t_last) / (step - self.step_last)
        self.t_last, self.step_last = time.time(), step
        line = (f"step {step:05d}/{self.args.max_iters:05d} | loss {loss:.4f} | lr {lr:.2e} | "
                f"{dt * 1000:7.1f} ms | {self.tokens / dt:9,.0f} tok/s")
        if self.peak:
            flops = self.model.flops_per_token(self.model.config.seq_len) * self.tokens
            line += f" | mfu {flops / dt / self.peak:5.1%}"
        print(line, flush=True)


def validate(model, val_ids, args, loss, amp, step):
    """The validation figure (diffusion.evaluate), printed: a bound for diffusion, the NLL for AR.
    Every rank evaluates (the same weights and windows: the same figures, and the other ranks
    would only wait for rank 0 otherwise)."""
    t = time.time()
    with amp:
        v = evaluate(model, val_ids, model.config.seq_len, args.batch_size, args.eval_windows, loss=loss)
    what, rel = ("val nll", "=") if model.config.objective == "ar" else ("val bound", "<=")
    print(f"eval step {step:05d} | {what} {v['nats']:.4f} nats/token | ppl {rel} {v['ppl']:.2f} | {time.time() - t:.1f} s")
    return v


def save(out_dir, model, tokenizer, optimizer, run_config, master, step, val):
    """<out-dir>/ckpt.pt, atomically, by rank 0 (master) alone: the unwrapped model, its
    tokenizer, the optimizer and the run's settings (--resume restores them)."""
    if master:
        os.makedirs(out_dir, exist_ok=True)
        save_checkpoint(os.path.join(out_dir, "ckpt.pt"), model, tokenizer, step, optimizer, run_config, val)


if __name__ == "__main__":
    run(main)
