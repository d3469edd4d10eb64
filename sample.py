"""
Sample from a checkpoint written by train_tiny.py.

    python sample.py --ckpt out/ckpt.pt --prompt "ROMEO:" --gen-len 128 --steps 128 --block-len 32
    python sample.py --threshold 0.9 --cache dual          # Fast-dLLM: parallel decoding + dual cache
    python sample.py --factor 1.0                          # Fast-dLLM's factor rule, as its code does it
    python sample.py --show-steps --gen-len 32 --steps 8 --block-len 16   # watch the canvas fill in
    python sample.py --prompt "ROMEO:" --prompt "JULIET: O Romeo"         # a batch of two prompts
    python sample.py --ckpt out-d-mdm/ckpt.pt --gen-len auto --threshold 0.9   # DAEDAL: the length adapts
    python sample.py --infill "ROMEO:{24} my lord." --block-len 8     # fill a blank of 24 tokens
    python sample.py --prompt "ROMEO:" --gen-len 64 --cfg-scale 1     # classifier-free guidance

Diffusion checkpoints use LLaDA's reverse process with Fast-dLLM's options (mini_dlm/sampler.py:
generate; the flags become one Decoding); block-diffusion checkpoints (trained with --block-size)
sample with their own block length and may use the exact --cache block. AR checkpoints decode left
to right with their exact KV cache, one new token per forward pass (generate_ar), ignoring
--steps, --block-len, --remasking, --threshold, --factor, --factor-rule, --cache and LLaDA's two
end-of-text switches. --gen-len auto (full-attention checkpoints trained with --docs) sizes the
canvas as it goes (mini_dlm/sampling/length.py: generate_dynamic, DAEDAL) and cuts each sample at
its end-of-text. --infill TEXT fills the blanks {N} of a template instead of continuing a prompt
(mini_dlm/sampling/infill.py, diffusion checkpoints only); the filled parts print between
FILL_MARKS. --cfg-scale S guides any diffusion sampler (mini_dlm/sampling/guidance.py).
"""

import argparse
import os
import sys
import time

import torch

from mini_dlm.plumbing.checkpoint import load_checkpoint
from mini_dlm.plumbing.backend import BACKENDS, backends_ran, describe_backend, reset_backends_ran, set_backend
from mini_dlm.plumbing.cli import (Parser, autocast, non_negative_float, positive_float, positive_int, print_config,
                                   probability, resolve_device, run, set_threads)
from mini_dlm.plumbing.checks import FACTOR_RULES, REMASKING
from mini_dlm.sampler import CACHES, Decoding, denoise, finish, generate, generate_ar
from mini_dlm.sampling import guidance
from mini_dlm.sampling.infill import infill_canvas
from mini_dlm.sampling.length import Daedal, generate_dynamic, stop_at
from mini_dlm.tokenizer import useful_lengths

SCHEDULE = ("steps", "block_len", "remasking", "threshold", "factor", "factor_rule", "cache", "logits_eos_inf",
            "confidence_eos_eot_inf", "show_steps", "cfg_scale")
DAEDAL = ("init_len", "max_len", "grow", "tail", "eot_threshold", "low_threshold", "insert", "remasking", "threshold",
          "confidence_eos_eot_inf", "cfg_scale")
CONTINUE = ("prompt", "gen_len")  # a run that continues prompts; an infill run has its template instead
MODES = {  # how a run samples -> the flags it uses, besides those every run uses (all the others)
    "diffusion": CONTINUE + SCHEDULE,
    "block diffusion": CONTINUE + SCHEDULE,
    "block diffusion, auto length": CONTINUE + ("max_len", "remasking", "threshold", "cache", "cfg_scale"),
    "DAEDAL, auto length": CONTINUE + DAEDAL,
    "AR": CONTINUE + ("show_steps",),
    "infill": ("infill",) + SCHEDULE,
    "block diffusion, infill": ("infill",) + SCHEDULE,
}
MODE_ONLY = {flag for flags in MODES.values() for flag in flags}
MASK_GLYPH = "░"  # how a still-masked position is drawn by --show-steps
FILL_MARKS = ("⟦", "⟧")  # around what --infill filled in
DEFAULT_GEN_LEN = 128
FRESH, DIM, RESET = "\033[1;32m", "\033[2m", "\033[0m"  # --show-steps colours on a terminal


def get_parser():
    p = Parser(description="Generate text with a mini_dlm checkpoint (LLaDA / Fast-dLLM / BD3-LM sampling, or AR).")
    p.add_argument("--ckpt", default="out/ckpt.pt", help="checkpoint from train_tiny.py")
    p.add_argument("--prompt", action="append", help="text the generation continues; repeat for a batch of "
                   "prompts (default: 'ROMEO:')")
    p.add_argument("--gen-len", type=gen_len, help="tokens to generate (G), or 'auto': DAEDAL's variable length "
                   "(full-attention checkpoints trained with --docs; the flags below) (default: what the model's context "
                   f"leaves after the prompt, at most {DEFAULT_GEN_LEN}, in whole blocks)")
    p.add_argument("--infill", metavar="TEMPLATE", help="fill the blanks of a text instead of continuing a prompt: "
                   "{N} is a blank of N tokens, e.g. 'ROMEO:{24} my lord.' (diffusion checkpoints; the filled parts "
                   f"print as {FILL_MARKS[0]}...{FILL_MARKS[1]}; no --prompt, --gen-len or --max-len)")
    p.add_argument("--steps", type=positive_int, help="denoising steps S, a multiple of G / block-len; with "
                   "--threshold or --factor only a cap (default: G, one token per step). --infill: S of any size up "
                   "to the blanks' tokens, shared by the blocks in proportion to their masks")
    p.add_argument("--block-len", type=positive_int, help="semi-autoregressive block length b, G %% b == 0 "
                   "(default: 32, or the block size a block-diffusion checkpoint was trained with)")
    p.add_argument("--remasking", choices=REMASKING, default="low_confidence", help="how guesses are scored "
                   "(the best commit first): p(x0), p1 - p2, -entropy, or at random")
    p.add_argument("--threshold", type=probability, help="Fast-dLLM: commit every guess with confidence >= TAU, "
                   "at least one per step (default: off, LLaDA's schedule)")
    p.add_argument("--factor", type=positive_float, metavar="F", help="Fast-dLLM's factor rule instead of a fixed threshold: "
                   "the guess of rank n passes if its confidence is >= 1 - F / (n + 1) (default: off)")
    p.add_argument("--factor-rule", choices=FACTOR_RULES, default="fastdllm", help="which ranks --factor commits: "
                   "fastdllm as Fast-dLLM's code (those before the first that fails, plus that one if it is the first "
                   "or the last), strict the longest run that passes")
    p.add_argument("--logits-eos-inf", action="store_true", help="LLaDA's logits_eos_inf: end-of-text is never "
                   "guessed (its logit is -inf)")
    p.add_argument("--confidence-eos-eot-inf", action="store_true", help="LLaDA's confidence_eos_eot_inf: "
                   "end-of-text guesses score -inf, so they commit after the block's others")
    p.add_argument("--cache", choices=CACHES, default="none", help="KV cache: prefix / dual (Fast-dLLM, approximate) "
                   "for full-attention checkpoints, block (exact) for block-diffusion ones; AR checkpoints always use "
                   "their exact one")
    p.add_argument("--temperature", type=non_negative_float, default=0.8, help="Gumbel temperature; 0 = argmax "
                   "(greedy, as LLaDA's and Fast-dLLM's reference runs); 0.8 reads most like the corpus (notes 03)")
    p.add_argument("--cfg-scale", type=non_negative_float, default=0.0, help="classifier-free guidance s (LLaDA): "
                   "logits u + (s + 1)(c - u), u with the prompt (or the --infill text) masked, both in one forward of "
                   "twice the batch; 0 = off (diffusion checkpoints)")
    p.add_argument("--num-samples", type=positive_int, default=1, help="samples per prompt, all generated as one batch")
    p.add_argument("--seed", type=int, default=1337, help="Gumbel noise and random remasking")
    p.add_device_flag()
    p.add_threads_flag()
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="the sampler's ops (unmask, "
                   "block_attention): the compiled csrc/ kernels where built (auto, ext) or the PyTorch reference (torch)")
    g = p.add_argument_group("variable length (--gen-len auto, mini_dlm/sampling/length.py)")
    g.add_argument("--init-len", type=positive_int, default=32, help="first canvas length")
    g.add_argument("--max-len", type=positive_int, help="longest canvas (default: what the context leaves after the prompt)")
    g.add_argument("--grow", type=positive_int, default=16, help="masks appended while the tail is not end-of-text")
    g.add_argument("--tail", type=positive_int, default=8, help="positions whose end-of-text probability is averaged")
    g.add_argument("--eot-threshold", type=probability, default=0.5, help="grow while the tail's mean "
                   "end-of-text probability is below this")
    g.add_argument("--low-threshold", type=probability, help="insert masks where the best guess's confidence "
                   "is below this (default: off)")
    g.add_argument("--insert", type=positive_int, default=4, help="masks a low-confidence position becomes")
    p.add_argument("--show-steps", action="store_true", help="print the first sample's canvas after every step, "
                   "with the tokens committed in that step (in colour on a terminal)")
    return p


def gen_len(s):
    """--gen-len: a positive integer or 'auto'."""
    if s == "auto":
        return s
    try:
        return positive_int(s)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {s!r}") from None


def sampling_mode(cfg, auto, infill=False):
    """The MODES key for a checkpoint's model config, --gen-len auto (auto) or not, and --infill."""
    if cfg.objective == "ar":
        return "AR"
    if infill:
        return "block diffusion, infill" if cfg.block_size else "infill"
    if cfg.block_size:
        return "block diffusion, auto length" if auto else "block diffusion"
    return "DAEDAL, auto length" if auto else "diffusion"


def flags_used(args, mode):
    """The flags (name -> value) a run in mode uses: every run's, and its mode's."""
    return {k: v for k, v in vars(args).items() if k not in MODE_ONLY or k in MODES[mode]}


def render(tokenizer, ids, mask_id, newline="\n", fresh=None, colour=False, marks=("", "")):
    """Token ids -> text, each mask token drawn as MASK_GLYPH. Runs of real tokens are decoded
    together so characters split across tokens come out whole. Runs of tokens where fresh[i]
    is True are put between marks (open, close), and with colour they are bold green and masks
    dim."""
    fresh = fresh or [False] * len(ids)
    out, run_, kind_ = [], [], None
    for i, f in list(zip(ids, fresh)) + [(None, None)]:
        kind = None if i is None else "mask" if i == mask_id else "fresh" if f else "old"
        if run_ and kind != kind_:
            text = MASK_GLYPH * len(run_) if kind_ == "mask" else \
                b"".join(tokenizer.token_bytes(t) for t in run_).decode("utf-8", errors="replace")
            text = text.replace("\n", newline)
            if kind_ == "fresh":
                text = marks[0] + text + marks[1]
            style = {"mask": DIM, "fresh": FRESH}.get(kind_) if colour else None
            out.append(f"{style}{text}{RESET}" if style else text)
            run_ = []
        run_.append(i)
        kind_ = kind
    return "".join(out)


def show_steps(steps, tokenizer, P, colour):
    """Print the first sample's canvas from column P after every step, with what the step
    committed, and pass the steps on."""
    for n, step in enumerate(steps, 1):
        text = render(tokenizer, step.x[0, P:].tolist(), tokenizer.mask_id, "↵", step.committed[0, P:].tolist(), colour)
        print(f"step {n:4d} | block {step.block} | +{int(step.committed[0].sum()):<3d} | {text}")
        yield step


def decoding(args, eot_id, block_size):
    """The Decoding the flags ask for. --gen-len auto takes the flags of its mode (MODES): a
    block-diffusion model's blocks, DAEDAL no blocks (mini_dlm/plumbing/checks.py: check_daedal)."""
    if args.gen_len == "auto":
        return Decoding(block_len=block_size or 32, temperature=args.temperature, remasking=args.remasking,
                        threshold=args.threshold, cache=args.cache, cfg_scale=args.cfg_scale,
                        confidence_eos_eot_inf=args.confidence_eos_eot_inf, eot_id=eot_id)
    return Decoding(steps=args.steps, block_len=args.block_len, temperature=args.temperature, remasking=args.remasking,
                    threshold=args.threshold, factor=args.factor, factor_rule=args.factor_rule, cache=args.cache,
                    cfg_scale=args.cfg_scale, logits_eos_inf=args.logits_eos_inf,
                    confidence_eos_eot_inf=args.confidence_eos_eot_inf, eot_id=eot_id)


def sampler(args, model, start, generator, eot_id, P):
    """The generator of Steps that the flags ask for (mini_dlm/sampler.py, mini_dlm/sampling/).
    start: the prompts' id lists, or with --infill the template's canvas (B, L)."""
    if model.config.objective == "ar":
        return generate_ar(model, start, args.gen_len, args.temperature, generator)
    opts, blocks = decoding(args, eot_id, model.config.block_size), bool(model.config.block_size)
    if args.gen_len == "auto" and not blocks:  # DAEDAL
        length = Daedal(args.init_len, args.max_len, args.grow, args.tail, args.eot_threshold, args.low_threshold,
                        args.insert)
        return generate_dynamic(model, start, opts, length, generator)
    strategy = guidance.strategy(opts)  # None without --cfg-scale
    if args.infill is not None:
        return denoise(model, start, opts, generator=generator, strategy=strategy)
    if args.gen_len == "auto":  # block diffusion grows block by block up to --max-len
        return stop_at(generate(model, start, opts, args.max_len, generator, strategy), eot_id, P)
    return generate(model, start, opts, args.gen_len, generator, strategy)


def resolve_lengths(args, cfg, tokenizer):
    """Check --gen-len auto against the checkpoint and fill in what the flags left open
    (--gen-len, --max-len, --steps, --block-len). -> whether the length is auto."""
    auto, ar = args.gen_len == "auto", cfg.objective == "ar"
    room = cfg.seq_len - max(len(tokenizer.encode(t)) for t in args.prompt)  # what the context leaves
    blocks = auto and bool(cfg.block_size)  # block diffusion grows block by block, stopping at end-of-text
    caches = ("none", "block") if blocks else ("none",)
    llada_switches = args.logits_eos_inf or (blocks and args.confidence_eos_eot_inf)
    if auto and (ar or args.show_steps or args.factor is not None or llada_switches or args.cache not in caches):
        raise ValueError("--gen-len auto works with a diffusion checkpoint (and --cache block for a block-diffusion "
                         "one); not with an AR model, --show-steps, --factor, --logits-eos-inf, "
                         "--confidence-eos-eot-inf (block diffusion) or --cache prefix/dual")
    if auto and args.max_len is None:
        args.max_len = room
    if blocks:
        if args.max_len < cfg.block_size:
            raise ValueError(f"--max-len {args.max_len} is shorter than one block ({cfg.block_size} tokens)")
        args.max_len -= args.max_len % cfg.block_size  # whole blocks
    args.block_len = args.block_len or cfg.block_size or (32 if room >= 64 else 16)
    if args.gen_len is None:
        args.gen_len = min(DEFAULT_GEN_LEN, room) if ar else min(DEFAULT_GEN_LEN, room - room % args.block_len)
        if args.gen_len <= 0:
            raise ValueError(f"the prompt leaves no room in the model's context of {cfg.seq_len} tokens")
    args.steps = args.steps or (None if auto else args.gen_len)
    return auto


def resolve_infill(args, model, tokenizer):
    """Check --infill against the other flags and build its canvas, --num-samples rows (B, L);
    fill in --steps (default: one blank token per step) and --block-len."""
    given = [flag for flag, v in (("--prompt", args.prompt), ("--gen-len", args.gen_len), ("--max-len", args.max_len))
             if v is not None]
    if given:
        raise ValueError(f"--infill takes the text and the lengths from its template: drop {' and '.join(given)}")
    canvas = infill_canvas(model, tokenizer, args.infill, rows=args.num_samples)  # ValueError: AR, bad template
    args.steps = args.steps or int((canvas[0] == model.config.mask_id).sum())
    args.block_len = args.block_len or model.config.block_size or 32
    return canvas


def sampler_input(args, model, tokenizer):
    """What the sampler starts from, checked against the checkpoint -> (prompts: id lists, or
    with --infill the template's canvas (B, L); P: the first column shown by --show-steps;
    whether the length is auto; what the config printout says about them)."""
    cfg = model.config
    if cfg.objective == "ar" and args.cfg_scale:
        raise ValueError("--cfg-scale needs a diffusion checkpoint: an AR model has no prediction with the prompt masked")
    if args.infill is not None:
        canvas = resolve_infill(args, model, tokenizer)
        n_blank = int((canvas[0] == cfg.mask_id).sum())
        return canvas, 0, False, {"fixed_tokens": canvas.shape[1] - n_blank, "blank_tokens": n_blank}
    args.prompt = args.prompt or ["ROMEO:"]
    auto = resolve_lengths(args, cfg, tokenizer)
    prompts = [tokenizer.encode(t) for t in args.prompt for _ in range(args.num_samples)]
    P = max(len(p) for p in prompts)  # prompt columns, left-padded
    return prompts, P, auto, {"prompt_tokens": [len(p) for p in prompts[::args.num_samples]]}


def main(argv=None):
    args = get_parser().parse_args(argv)
    args.threads = set_threads(args.threads)
    device = resolve_device(args.device)
    set_backend(args.backend)
    # which implementation runs each op (ValueError if ext is asked for but missing)
    ops_used = {key: describe_backend(op, device)
                for key, op in (("unmask_op", "unmask"), ("attention_op", "block_attention"))}
    model, tokenizer, ckpt = load_checkpoint(args.ckpt, device, "--ckpt")
    cfg = model.config
    start, P, auto, inputs = sampler_input(args, model, tokenizer)
    blocks = auto and bool(cfg.block_size)
    mode = sampling_mode(cfg, auto, args.infill is not None)
    print_config("config", {"mode": mode, **flags_used(args, mode), "device": str(device),
                            "objective": cfg.objective, "block_size": cfg.block_size, "trained_steps": ckpt["step"],
                            **ops_used, **inputs})

    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    generator = torch.Generator(device).manual_seed(args.seed)
    reset_backends_ran()
    t0 = time.time()
    with autocast(device):  # schedule, options and context are checked where the samplers start
        steps = sampler(args, model, start, generator, tokenizer.eot_id, P)
        x, stats = finish(show_steps(steps, tokenizer, P, colour) if args.show_steps else steps)
        if blocks:
            stats["lengths"] = torch.full((len(start),), x.shape[1] - P)
    if device.type == "cuda":
        torch.cuda.synchronize()
    blanks = start == cfg.mask_id if args.infill is not None else None
    report(args, tokenizer, x, stats, P, time.time() - t0, blocks, blanks, colour)


def report(args, tokenizer, x, stats, P, dt, blocks, blanks=None, colour=False):
    """Print each sample (cut at its end-of-text with --gen-len auto; with --infill, blanks (B, L)
    marks the filled parts) and the run's statistics."""
    auto, B = args.gen_len == "auto", x.shape[0]
    ran = " | ops " + ", ".join(f"{op} {b}" for op, b in backends_ran().items())  # what really ran
    if blanks is not None:
        useful = blanks.sum(dim=1).cpu()
    else:
        useful = useful_lengths(x[:, P:], tokenizer.eot_id) if auto else torch.full((B,), args.gen_len)
    for r in range(B):
        print(f"--- sample {r + 1}/{B} ---")
        if blanks is not None:
            print(render(tokenizer, x[r].tolist(), tokenizer.mask_id, fresh=blanks[r].tolist(), colour=colour,
                         marks=FILL_MARKS))
        else:
            print(render(tokenizer, x[r, int(stats["pad"][r]):P + int(useful[r])].tolist(), tokenizer.mask_id))
    n_tok = int(useful.sum())
    if auto:
        how = "grown block by block until every row ended" if blocks else \
            f"{stats['length_passes']} passes to size them, {stats['insertions']} insertions"
        print(f"--- canvas lengths {stats['lengths'].tolist()} ({how}) | kept before end-of-text {useful.tolist()}")
        print(f"--- forward passes {stats['forward_passes']} | {n_tok} tokens in {dt:.2f} s | {n_tok / dt:.1f} tokens/s"
              + ran)
    else:
        print(f"--- forward passes {stats['forward_passes']} | {int(useful[0]) / stats['forward_passes']:.2f} "
              f"tokens/forward per sample | {n_tok} tokens in {dt:.2f} s | {n_tok / dt:.1f} tokens/s" + ran)


if __name__ == "__main__":
    run(main)
