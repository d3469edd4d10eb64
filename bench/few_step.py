"""
Benchmark: a distilled few-step student against its teacher (notes/10).

    python -m bench.few_step --teacher out-long/ckpt.pt --student out-distill/ckpt.pt --ar out-long-ar/ckpt.pt

For --num-prompts validation prompts of --prompt-len tokens, both models generate --gen-len
tokens in one block (no semi-autoregressive blocks) with the sampler of mini_dlm/distillation/sdtt.py:
random order at temperature 1 (MDLM's ancestral sampler; --remasking and --temperature change
it), the teacher at every step count of --teacher-steps and the student at every one of
--student-steps, all prompts in one batch, the same seed for every run. Reported: generative
perplexity under the AR judge and distinct3 (bench/quality.py), tokens per pass and seconds.
"""

import os

import torch

from mini_dlm.plumbing.cli import (Parser, autocast, check_out_dir, comma_list, non_negative_float, positive_int,
                                   print_config, resolve_device, run, set_threads)
from mini_dlm.data import DEFAULT_DATA
from mini_dlm.plumbing.checks import REMASKING
from mini_dlm.sampler import Decoding, finish, generate

from bench.common import make_prompts, print_table, save
from bench.quality import load_judge, quality
from bench.roofline import device_name, timed_call
from distill import load_teacher


def get_parser():
    p = Parser(prog="python -m bench.few_step",
               description="Generative perplexity and distinct3 of a few-step student and its teacher (notes/10).")
    p.add_argument("--teacher", default="out/ckpt.pt", help="the teacher (distill.py --teacher)")
    p.add_argument("--student", default="out-distill/ckpt.pt", help="the student distill.py wrote")
    p.add_argument("--ar", default="out-ar/ckpt.pt", help="AR checkpoint (same tokenizer): the judge")
    p.add_argument("--data", default=DEFAULT_DATA, help="text whose validation split gives the prompts")
    p.add_argument("--num-prompts", type=positive_int, default=50, help="validation prompts, one batch")
    p.add_argument("--prompt-len", type=positive_int, default=16, help="tokens per prompt")
    p.add_argument("--gen-len", type=positive_int, default=256, help="tokens generated per prompt, one block")
    p.add_argument("--teacher-steps", type=comma_list(positive_int), default="8,16,64,256", help="comma-separated")
    p.add_argument("--student-steps", type=comma_list(positive_int), default="8,16", help="comma-separated")
    p.add_argument("--remasking", choices=REMASKING, default="random", help="the order tokens are revealed in")
    p.add_argument("--temperature", type=non_negative_float, default=1.0, help="Gumbel temperature; 1: sampling")
    p.add_argument("--seed", type=int, default=1337, help="the sampling noise, the same for every run")
    p.add_argument("--out", default="bench-out/few_step.json", help="JSON records")
    p.add_device_flag()
    p.add_threads_flag()
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    args.threads = set_threads(args.threads)
    device = resolve_device(args.device)
    check_out_dir(os.path.dirname(os.path.abspath(args.out)), "--out")
    teacher, tok, _ = load_teacher(args.teacher, device)
    student, student_tok, _ = load_teacher(args.student, device, "--student")
    if student_tok.fingerprint() != tok.fingerprint() or student.config != teacher.config:
        raise ValueError(f"--student {args.student} is not of --teacher's shape and tokenizer")
    ar = load_judge(args.ar, tok, device)
    if args.prompt_len + args.gen_len > min(teacher.config.seq_len, ar.config.seq_len):
        raise ValueError(f"--prompt-len + --gen-len = {args.prompt_len + args.gen_len} exceeds the context of the "
                         f"teacher ({teacher.config.seq_len}) or the judge ({ar.config.seq_len})")
    prompts = make_prompts(tok, args.data, args.num_prompts, args.prompt_len)
    meta = {**vars(args), "device": f"{device} ({device_name(device)})", "torch": torch.__version__}
    print_config("config", meta)

    records = []
    runs = [("teacher", teacher, s) for s in args.teacher_steps] + [("student", student, s) for s in args.student_steps]
    for name, model, steps in runs:
        gen = torch.Generator(device).manual_seed(args.seed)
        opts = Decoding(steps=steps, block_len=args.gen_len, temperature=args.temperature, remasking=args.remasking)
        with autocast(device):
            (x, stats), seconds = timed_call(lambda: finish(generate(model, prompts, opts, args.gen_len, gen)), device)
        outs = x[:, args.prompt_len:].tolist()
        ppl, d3 = quality(ar, prompts, outs)
        records.append(dict(model=name, steps=steps, gen_ppl=ppl, distinct3=d3, seconds=seconds,
                            tokens_per_pass=args.gen_len / stats["forward_passes"]))
        print(f"{name} at {steps} steps: gen ppl {ppl:.2f}", flush=True)
    print(f"\n{args.num_prompts} prompts x {args.gen_len} tokens, one block, {args.remasking} order, temperature "
          f"{args.temperature:g}, one batch, on {device_name(device)}")
    print_table([("model", ">8", "model"), ("steps", ">6d", "steps"), ("tok/pass", ">8.1f", "tokens_per_pass"),
                 ("gen ppl", ">8.2f", "gen_ppl"), ("distinct3", ">9.3f", "distinct3"), ("seconds", ">8.2f", "seconds")],
                records, "gen ppl: perplexity of the generated tokens under the AR judge, given the prompt; "
                "distinct3: distinct token trigrams / all, 1 = never repeats itself")
    save(args.out, meta, records)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run(main)
