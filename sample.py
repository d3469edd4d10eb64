"""
Sample from a checkpoint written by train_tiny.py.

    python sample.py --ckpt out/ckpt.pt --prompt "ROMEO:" --gen-len 128 --steps 128 --block-len 32
    python sample.py --show-steps --gen-len 32 --steps 8 --block-len 16   # watch the canvas fill in

Diffusion checkpoints use LLaDA's reverse process (mini_dlm/sampler.py: generate); AR
checkpoints decode left to right (generate_ar), ignoring --steps, --block-len and --remasking.
"""

import time

import torch

from mini_dlm.checkpoint import load_checkpoint
from mini_dlm.cli import Parser, autocast, non_negative_float, positive_int, print_config, resolve_device, run
from mini_dlm.sampler import REMASKING, generate, generate_ar

MASK_GLYPH = "░"  # how a still-masked position is drawn by --show-steps


def get_parser():
    p = Parser(description="Generate text with a mini_dlm checkpoint (LLaDA reverse process or AR).")
    p.add_argument("--ckpt", default="out/ckpt.pt", help="checkpoint from train_tiny.py")
    p.add_argument("--prompt", default="ROMEO:", help="text the generation continues")
    p.add_argument("--gen-len", type=positive_int, default=128, help="tokens to generate (G)")
    p.add_argument("--steps", type=positive_int, default=128, help="denoising steps S, a multiple of G / block-len")
    p.add_argument("--block-len", type=positive_int, default=32, help="semi-autoregressive block length b; G %% b == 0")
    p.add_argument("--remasking", choices=REMASKING, default="low_confidence", help="which guesses to commit first")
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="Gumbel temperature; 0 = argmax")
    p.add_argument("--num-samples", type=positive_int, default=1, help="samples, generated as one batch")
    p.add_argument("--seed", type=int, default=1337, help="Gumbel noise and random remasking")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: cuda if available")
    p.add_argument("--show-steps", action="store_true", help="print the canvas after every step")
    return p


def render(tokenizer, ids, mask_id, newline="\n"):
    """Token ids -> text, each mask token drawn as MASK_GLYPH. Runs of real tokens are decoded
    together so characters split across tokens come out whole."""
    out, run_ = [], []
    for i in list(ids) + [None]:
        if i is None or i == mask_id:
            out.append(b"".join(tokenizer.token_bytes(t) for t in run_).decode("utf-8", errors="replace"))
            run_ = []
            if i is not None:
                out.append(MASK_GLYPH)
        else:
            run_.append(i)
    return "".join(out).replace("\n", newline)


def main(argv=None):
    args = get_parser().parse_args(argv)
    device = resolve_device(args.device)
    model, tokenizer, ckpt = load_checkpoint(args.ckpt, device)
    cfg = model.config
    ar = cfg.objective == "ar"
    prompt = tokenizer.encode(args.prompt)  # schedule and context are checked by generate()
    print_config("config", {**vars(args), "device": str(device), "objective": cfg.objective,
                            "trained_steps": ckpt["step"], "prompt_tokens": len(prompt)})

    M = cfg.mask_id
    P = len(prompt)

    def show(step, block, x, committed):
        n = "" if committed is None else f" +{int(committed[0].sum())}"
        print(f"step {step:4d} block {block}{n:>4} | {render(tokenizer, x[0, P:].tolist(), M, newline='↵')}")

    generator = torch.Generator(device).manual_seed(args.seed)
    prompts = [prompt] * args.num_samples
    amp = autocast(device)
    on_step = show if args.show_steps else None
    t0 = time.time()
    with amp:
        if ar:
            x, stats = generate_ar(model, prompts, args.gen_len, args.temperature, generator, on_step)
        else:
            x, stats = generate(model, prompts, args.gen_len, args.steps, args.block_len, args.temperature,
                                args.remasking, generator, on_step)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.time() - t0
    for r in range(args.num_samples):
        print(f"--- sample {r + 1}/{args.num_samples} ---")
        print(render(tokenizer, x[r].tolist(), M))
    n_tok = args.num_samples * args.gen_len
    print(f"--- forward passes {stats['forward_passes']} | {args.gen_len / stats['forward_passes']:.2f} tokens/forward "
          f"per sample | {n_tok} tokens in {dt:.2f} s | {n_tok / dt:.1f} tokens/s")


if __name__ == "__main__":
    run(main)
