"""
Distil a trained diffusion model into a student that samples in few steps (notes/10): rounds of
self-distillation through time (mini_dlm/distill.py), each halving the steps.

    python distill.py --teacher out/ckpt.pt --out-dir out-distill             # 256 -> 16 steps
    python distill.py --teacher out/ckpt.pt --out-dir out-distill --iters 20  # a first try, about a minute
    python bench/few_step.py --teacher out/ckpt.pt --student out-distill/ckpt.pt --ar out-ar/ckpt.pt

Round r trains the student, from the weights it has, to do in one step what a frozen copy of
itself (the teacher of the round; the first round's is --teacher) does in two, at the grid of
--teacher-steps / 2^r steps. Writes <out-dir>/ckpt.pt, a checkpoint like train_tiny.py's
(sample.py reads it), atomically after every round.
"""

import copy
import math
import os
import time

import torch

from mini_dlm.checkpoint import load_checkpoint, save_checkpoint
from mini_dlm.cli import (Parser, autocast, check_out_dir, non_negative_float, positive_int, print_config,
                          resolve_device, run, set_threads)
from mini_dlm.data import DEFAULT_DATA, get_batch, prepare_data
from mini_dlm.distill import sdtt_loss, sdtt_targets


def get_parser():
    p = Parser(description="Few-step distillation of a diffusion model (SDTT rounds, notes/10).")
    p.add_argument("--teacher", default="out/ckpt.pt", help="a full-attention diffusion checkpoint")
    p.add_argument("--out-dir", default="out-distill", help="where the student's ckpt.pt goes")
    p.add_argument("--data", default=DEFAULT_DATA, help="text whose training split gives the windows (the teacher's "
                   "tokenizer encodes it)")
    p.add_argument("--teacher-steps", type=positive_int, default=256, help="the steps the first round's teacher samples in")
    p.add_argument("--student-steps", type=positive_int, default=16, help="the steps the final student samples in; "
                   "--teacher-steps / --student-steps must be a power of 2 (the number of rounds is its log2)")
    p.add_argument("--iters", type=positive_int, default=300, help="optimizer steps per round")
    p.add_argument("--batch-size", type=positive_int, default=8, help="windows of the teacher's context per step")
    p.add_argument("--lr", type=non_negative_float, default=1e-4, help="learning rate, constant after warmup")
    p.add_argument("--warmup-iters", type=positive_int, default=20, help="linear warmup at the start of each round")
    p.add_argument("--grad-clip", type=non_negative_float, default=1.0, help="0 disables clipping")
    p.add_argument("--log-interval", type=positive_int, default=50, help="steps between progress lines")
    p.add_argument("--seed", type=int, default=1337, help="windows, masks and the teacher's draws")
    p.add_device_flag()
    p.add_threads_flag()
    return p


def halvings(teacher_steps, student_steps):
    """[256, 128, 64, 32] for 256 -> 16: the teacher's steps in each round."""
    rounds = math.log2(teacher_steps / student_steps) if teacher_steps > student_steps else 0
    if rounds < 1 or rounds != int(rounds):
        raise ValueError(f"--teacher-steps {teacher_steps} / --student-steps {student_steps} must be 2, 4, 8, ...: "
                         "each round halves the steps")
    return [teacher_steps >> r for r in range(int(rounds))]


def load_teacher(path, device, flag="--teacher"):
    """(model, tokenizer, checkpoint dict) of a full-attention diffusion checkpoint; ValueError naming flag else."""
    model, tok, ckpt = load_checkpoint(path, device, flag)
    if model.config.objective != "mdm" or model.config.block_size:
        raise ValueError(f"{flag} {path} must be a full-attention diffusion checkpoint (objective mdm, no "
                         "--block-size)")
    return model, tok, ckpt


def main(argv=None):
    args = get_parser().parse_args(argv)
    rounds = halvings(args.teacher_steps, args.student_steps)
    args.threads = set_threads(args.threads)
    device = resolve_device(args.device)
    teacher, tok, ckpt = load_teacher(args.teacher, device)
    check_out_dir(args.out_dir)
    os.makedirs(args.out_dir, exist_ok=True)
    L = teacher.config.seq_len
    _, train_ids, _ = prepare_data(args.data, tok.vocab_size, args.out_dir, L, tokenizer=tok)
    print_config("config", {**vars(args), "device": str(device), "rounds": " -> ".join(map(str, rounds + [args.student_steps]))})

    torch.manual_seed(args.seed)
    batch_gen, noise_gen = torch.Generator().manual_seed(args.seed), torch.Generator(device).manual_seed(args.seed)
    student = copy.deepcopy(teacher).train()
    optimizer = student.configure_optimizer(args.lr, 0.0, (0.9, 0.95), device.type)
    path, step = os.path.join(args.out_dir, "ckpt.pt"), 0
    for r, n in enumerate(rounds):
        frozen = copy.deepcopy(student).eval()  # this round's teacher: the student as it is
        t0, kls = time.time(), []
        for it in range(args.iters):
            for group in optimizer.param_groups:
                group["lr"] = args.lr * min(1.0, (it + 1) / args.warmup_iters)
            x0 = get_batch(train_ids, args.batch_size, L, batch_gen, device)  # (B, L)
            with autocast(device):
                loss = sdtt_loss(student, *sdtt_targets(frozen, x0, n, noise_gen))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if args.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(student.parameters(), args.grad_clip)
            optimizer.step()
            step += 1
            kls.append(loss.item())
            if (it + 1) % args.log_interval == 0 or it + 1 == args.iters:
                recent = kls[-args.log_interval:]
                print(f"round {r + 1}/{len(rounds)} ({n} -> {n // 2} steps) | iter {it + 1:4d}/{args.iters} | "
                      f"KL {sum(recent) / len(recent):.4f} nats/masked token | "
                      f"{(time.time() - t0) * 1000 / (it + 1):6.1f} ms/iter", flush=True)
        config = {**ckpt.get("train_config", {}), "distilled_from": args.teacher, "distill_steps": n // 2,
                  "distill": dict(vars(args))}
        save_checkpoint(path, student, tok, step, None, config)
        print(f"saved {path}: the student of round {r + 1}, for {n // 2}-step sampling")


if __name__ == "__main__":
    run(main)
