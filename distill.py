"""
Distil a trained diffusion model into a student that samples in few steps (notes/10), by one
of two methods:

  sdtt  rounds of self-distillation through time (mini_dlm/distillation/sdtt.py), each halving the
        steps: round r trains the student, from the weights it has, to do in one step what a
        frozen copy of itself (the first round's: --teacher) does in two, at the grid of
        --teacher-steps / 2^r steps;
  didi  distribution matching after DiDi-Instruct (mini_dlm/distillation/didi.py): the student samples in
        --student-steps, a discriminator learns to tell its noised samples from the teacher's
        (--teacher-steps samples, drawn once and kept in <out-dir>), and a policy gradient
        moves the student towards the teacher's.

    python distill.py --teacher out/ckpt.pt --out-dir out-distill             # sdtt, 256 -> 16 steps
    python distill.py --teacher out/ckpt.pt --out-dir out-distill --iters 20  # a first try, about a minute
    python distill.py --teacher out/ckpt.pt --method didi --out-dir out-didi
    python -m bench.few_step --teacher out/ckpt.pt --student out-distill/ckpt.pt --ar out-ar/ckpt.pt

Writes <out-dir>/ckpt.pt, a checkpoint like train_tiny.py's (sample.py reads it), atomically
after every round (sdtt) or at the end (didi).
"""

import copy
import functools
import math
import os
import time

import torch

from mini_dlm.plumbing.checkpoint import load_checkpoint, save_checkpoint
from mini_dlm.plumbing.files import atomic_save
from mini_dlm.plumbing.cli import (Parser, autocast, check_out_dir, non_negative_float, positive_int, print_config,
                                   resolve_device, run, set_threads)
from mini_dlm.data import DEFAULT_DATA, get_batch, prepare_data
from mini_dlm.distillation.didi import (Discriminator, discriminator_loss, group_normalise, log_prob, rewards, rollout,
                                        start_states)
from mini_dlm.distillation.sdtt import sdtt_loss, sdtt_targets

METHODS = ("sdtt", "didi")


def get_parser():
    p = Parser(description="Few-step distillation of a diffusion model (SDTT rounds, notes/10).")
    p.add_argument("--teacher", default="out/ckpt.pt", help="a full-attention diffusion checkpoint")
    p.add_argument("--out-dir", default="out-distill", help="where the student's ckpt.pt goes")
    p.add_argument("--data", default=DEFAULT_DATA, help="text whose training split gives the windows (the teacher's "
                   "tokenizer encodes it)")
    p.add_argument("--method", choices=METHODS, default="sdtt", help="sdtt: halving rounds; didi: distribution "
                   "matching with a discriminator")
    p.add_argument("--teacher-steps", type=positive_int, default=256, help="sdtt: the steps the first round's teacher "
                   "samples in; didi: the steps of the teacher samples the student is matched to")
    p.add_argument("--student-steps", type=positive_int, default=16, help="the steps the final student samples in; "
                   "sdtt: --teacher-steps / --student-steps must be a power of 2 (the number of rounds is its log2)")
    p.add_argument("--iters", type=positive_int, default=300, help="optimizer steps per round (didi: in all)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="sdtt: windows of the teacher's context per step")
    g = p.add_argument_group("didi")
    g.add_argument("--prompt-len", type=positive_int, default=16, help="tokens of a training window kept as the "
                   "prompt; the student and teacher samples complete the rest of the teacher's context")
    g.add_argument("--bank", type=positive_int, default=64, help="teacher samples drawn once (kept in --out-dir); "
                   "an eighth (at least one) is held out to check the discriminator")
    g.add_argument("--groups", type=positive_int, default=2, help="start states per step")
    g.add_argument("--group-size", type=positive_int, default=4, help="student samples per start state, whose rewards "
                   "are normalised together (at least 2)")
    g.add_argument("--tau-min", type=non_negative_float, default=0.5, help="start states re-mask a teacher sample at "
                   "tau ~ U(tau-min, 1]; 1 starts from the prompt alone")
    g.add_argument("--score-steps", type=positive_int, default=4, help="rollout steps whose log-probabilities are "
                   "scored per update (an unbiased estimate of all)")
    g.add_argument("--disc-lr", type=non_negative_float, default=1e-3, help="the discriminator's learning rate")
    g.add_argument("--disc-steps", type=positive_int, default=1, help="discriminator updates per student update, on "
                   "the same student samples with fresh noise and teacher samples")
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
    rounds = halvings(args.teacher_steps, args.student_steps) if args.method == "sdtt" else None
    if args.method == "didi" and min(args.group_size, args.bank) < 2:
        raise ValueError("--group-size and --bank must be at least 2: rewards are normalised within a group, and the "
                         "discriminator is checked on teacher samples it does not train on")
    args.threads = set_threads(args.threads)
    device = resolve_device(args.device)
    teacher, tok, ckpt = load_teacher(args.teacher, device)
    if args.method == "didi" and args.prompt_len >= teacher.config.seq_len:
        raise ValueError(f"--prompt-len {args.prompt_len} leaves nothing to generate in a context of "
                         f"{teacher.config.seq_len}")
    check_out_dir(args.out_dir)
    os.makedirs(args.out_dir, exist_ok=True)
    _, train_ids, _ = prepare_data(args.data, tok.vocab_size, args.out_dir, teacher.config.seq_len, tokenizer=tok)
    plan = " -> ".join(map(str, rounds + [args.student_steps])) if rounds else f"{args.student_steps} steps"
    print_config("config", {**vars(args), "device": str(device), "plan": plan})
    torch.manual_seed(args.seed)
    student = copy.deepcopy(teacher).train()
    save = functools.partial(save_student, args, student, tok, ckpt)  # save(step, n_steps)
    if args.method == "sdtt":
        sdtt(args, teacher, student, train_ids, device, rounds, save)
    else:
        didi(args, teacher, student, train_ids, device, save)


def save_student(args, student, tok, teacher_ckpt, step, n_steps):
    """<out-dir>/ckpt.pt, atomically: the student for n_steps-step sampling, a checkpoint like
    train_tiny.py's with the teacher's training config and how it was distilled."""
    config = {**teacher_ckpt.get("train_config", {}), "distilled_from": args.teacher, "distill_steps": n_steps,
              "distill": dict(vars(args))}
    save_checkpoint(os.path.join(args.out_dir, "ckpt.pt"), student, tok, step, None, config)


def update(optimizer, loss, model, it, args, lr):
    """One optimizer step on loss, with linear warmup over --warmup-iters and clipping."""
    for group in optimizer.param_groups:
        group["lr"] = lr * min(1.0, (it + 1) / args.warmup_iters)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if args.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    optimizer.step()


def sdtt(args, teacher, student, train_ids, device, rounds, save):
    """SDTT rounds (mini_dlm/distillation/sdtt.py): each trains the student to do in one step what a frozen
    copy of itself does in two, then saves it."""
    L = teacher.config.seq_len
    batch_gen, noise_gen = torch.Generator().manual_seed(args.seed), torch.Generator(device).manual_seed(args.seed)
    optimizer = student.configure_optimizer(args.lr, 0.0, (0.9, 0.95), device.type)
    step = 0
    for r, n in enumerate(rounds):
        frozen = copy.deepcopy(student).eval()  # this round's teacher: the student as it is
        t0, kls = time.time(), []
        for it in range(args.iters):
            x0 = get_batch(train_ids, args.batch_size, L, batch_gen, device)  # (B, L)
            with autocast(device):
                loss = sdtt_loss(student, *sdtt_targets(frozen, x0, n, noise_gen))
            update(optimizer, loss, student, it, args, args.lr)
            step += 1
            kls.append(loss.item())
            if (it + 1) % args.log_interval == 0 or it + 1 == args.iters:
                recent = kls[-args.log_interval:]
                print(f"round {r + 1}/{len(rounds)} ({n} -> {n // 2} steps) | iter {it + 1:4d}/{args.iters} | "
                      f"KL {sum(recent) / len(recent):.4f} nats/masked token | "
                      f"{(time.time() - t0) * 1000 / (it + 1):6.1f} ms/iter", flush=True)
        save(step, n // 2)
        print(f"saved {args.out_dir}/ckpt.pt: the student of round {r + 1}, for {n // 2}-step sampling")


def teacher_bank(args, teacher, train_ids, device):
    """--bank teacher samples (N, L): prompts of --prompt-len tokens from training windows, the rest
    drawn by the teacher in --teacher-steps (didi.rollout). Kept in --out-dir and reused by a run
    with the same teacher, steps, size, prompt length and seed."""
    L, M = teacher.config.seq_len, teacher.config.mask_id
    key = dict(teacher=os.path.abspath(args.teacher), steps=args.teacher_steps, n=args.bank,
               prompt_len=args.prompt_len, seed=args.seed)
    path = os.path.join(args.out_dir, "teacher_bank.pt")
    if os.path.exists(path):
        kept = torch.load(path, weights_only=True)
        if kept["key"] == key:
            print(f"teacher samples: {args.bank} read from {path}")
            return kept["x"].to(device)
    t0, gen, xs = time.time(), torch.Generator(device).manual_seed(args.seed), []
    windows = get_batch(train_ids, args.bank, L, torch.Generator().manual_seed(args.seed + 1), device)  # (N, L)
    for i in range(0, args.bank, 16):
        z = windows[i:i + 16].clone()
        z[:, args.prompt_len:] = M
        with autocast(device):
            xs.append(rollout(teacher, z, args.teacher_steps, gen)[0])
        print(f"teacher samples: {min(i + 16, args.bank)}/{args.bank} in {args.teacher_steps} steps, "
              f"{time.time() - t0:.0f} s", flush=True)
    x = torch.cat(xs)
    atomic_save({"key": key, "x": x.cpu()}, path)
    return x


def draw(rows, n, generator):
    """n rows of rows, uniformly with replacement."""
    return rows[torch.randint(len(rows), (n,), generator=generator)]


def didi(args, teacher, student, train_ids, device, save):
    """Distribution matching (mini_dlm/distillation/didi.py): per update, the student's samples from start
    states, a discriminator step against teacher samples, a policy-gradient step of the student."""
    M, P, G = teacher.config.mask_id, args.groups, args.group_size
    bank = teacher_bank(args, teacher, train_ids, device)  # (N, L)
    n_held = max(1, len(bank) // 8)
    bank, held = bank[:-n_held], bank[-n_held:]  # held out: the discriminator's check
    disc = Discriminator(copy.deepcopy(teacher)).to(device).train()
    optimizer = student.configure_optimizer(args.lr, 0.0, (0.9, 0.95), device.type)
    d_optimizer = torch.optim.AdamW(disc.parameters(), lr=args.disc_lr, betas=(0.9, 0.95), weight_decay=0.0)
    gen, pick = torch.Generator(device).manual_seed(args.seed), torch.Generator().manual_seed(args.seed)
    t0, log = time.time(), []
    for it in range(args.iters):
        x_teacher = draw(bank, P, pick)  # (P, L): the groups' teacher samples
        z, n = start_states(x_teacher, args.prompt_len, M, args.tau_min, G, args.student_steps, gen)  # (P*G, L)
        with autocast(device), torch.no_grad():
            x, path = rollout(student, z, n, gen)  # (P*G, L)
            held_bce = discriminator_loss(disc, x, draw(held, P * G, pick), args.prompt_len, M, gen)  # never trained on
        for _ in range(args.disc_steps):
            with autocast(device):
                d_loss = discriminator_loss(disc, x, draw(bank, P * G, pick), args.prompt_len, M, gen)
            update(d_optimizer, d_loss, disc, it, args, args.disc_lr)
        with autocast(device):
            r = rewards(disc, x, args.prompt_len, M, generator=gen)  # (P*G,): log q_S / q_T, estimated
            advantage = group_normalise(r, G)
            n_gen = (z == M).sum(dim=1).clamp(min=1)  # (P*G,): tokens each rollout drew
            loss = (advantage * log_prob(student, x, path, args.score_steps, pick) / n_gen).mean()
        update(optimizer, loss, student, it, args, args.lr)
        log.append((d_loss.item(), held_bce.item(), r.mean().item()))
        if (it + 1) % args.log_interval == 0 or it + 1 == args.iters:
            d, h, rm = (sum(v) / len(v) for v in zip(*log[-args.log_interval:]))
            print(f"iter {it + 1:4d}/{args.iters} | discriminator BCE {d:.4f}, held out {h:.4f} | "
                  f"log q_S/q_T {rm:+.4f} | {(time.time() - t0) * 1000 / (it + 1):6.0f} ms/iter", flush=True)
    save(args.iters, args.student_steps)
    print(f"saved {args.out_dir}/ckpt.pt: the student, for {args.student_steps}-step sampling")


if __name__ == "__main__":
    run(main)
