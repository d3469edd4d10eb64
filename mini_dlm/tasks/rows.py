"""
A generated task as rows of prompt and answer (train_tiny.py --task, notes 08): making the
rows, the loss of the answer given the prompt, and reading answers off generated rows.

A row is a puzzle, the separator ':', its solution and one end-of-text, byte-level (one cell
is one token). The first prompt_len columns are the condition: never masked and never scored,
so the loss is the bound on the answer's NLL given the prompt, per answer token (LLaDA's
supervised fine-tuning masks only the response); the AR twin likewise scores only the answer.
"""

import os
from functools import partial

import torch
import torch.nn.functional as F

from mini_dlm.data import CACHE_VERSION, load_cache
from mini_dlm.diffusion import elbo_loss, forward_process, x0_logits
from mini_dlm.plumbing.checkpoint import load_checkpoint
from mini_dlm.plumbing.files import atomic_save
from mini_dlm.tasks import sudoku as tasks
from mini_dlm.tokenizer import Tokenizer


def prepare_task(name, seed, n_train, n_test, cache_dir):
    """-> (tokenizer, train, val) for a generated task: (N, prompt_len + answer_len + 1) int32
    rows, each a puzzle, ':', its solution and one end-of-text (a row is seq_len + 1 tokens;
    no loss reads the last). The tokenizer is byte-level BPE with no merges, so one cell is one
    token. Cached in cache_dir by (name, seed, sizes): 50,000 6x6 puzzles take minutes."""
    blanks = tasks.SUDOKUS[name].blanks or "min"
    key = f"task-{name}-blanks{blanks}-seed{seed}-train{n_train}-test{n_test}-v{CACHE_VERSION}"
    cache = os.path.join(cache_dir, f"{key}.pt")
    c = load_cache(cache)
    if c:
        return c
    tokenizer, sudoku = Tokenizer("bpe", []), tasks.SUDOKUS[name]
    splits = tasks.make_splits(sudoku, seed, n_train, n_test)
    rows = {}
    for split in ("train", "val"):
        texts = [tasks.row_text(p, s) for p, s in splits[split]]
        rows[split] = torch.tensor([ids + [tokenizer.eot_id] for ids in tokenizer.enc.encode_ordinary_batch(texts)],
                                   dtype=torch.int32)  # (N, 2 * cells + 2)
        assert rows[split].shape[1] == sudoku.row_len + 1, "a cell is not one token"
    os.makedirs(cache_dir, exist_ok=True)
    atomic_save({"tokenizer": tokenizer.to_dict(), "train": rows["train"], "val": rows["val"]}, cache)
    return tokenizer, rows["train"], rows["val"]


def keep_prompt(u, prompt_len):
    """The mask uniforms u (B, L) with the first prompt_len columns set to 2: above any p, so
    the prompt is never masked. A copy when it changes anything."""
    if not prompt_len:
        return u
    u = u.clone()
    u[:, :prompt_len] = 2.0
    return u


def answer_loss(model, batch, t, u, prompt_len):
    """diffusion.loss_at for rows (B, L + 1) whose first prompt_len columns are the prompt: the
    ELBO of the answer given the prompt (t, u as there), or for an AR model the next-token loss
    of the answer's tokens, columns prompt_len .. L - 1 (column L, a row's filler, is not one)."""
    if model.config.objective == "ar":
        target = batch[:, 1:].clone()  # (B, L): target j is column j + 1
        target[:, :prompt_len - 1] = -100  # the prompt predicts nothing
        target[:, -1] = -100  # column L: past the answer
        return F.cross_entropy(model(batch[:, :-1]).flatten(0, 1).float(), target.flatten(), ignore_index=-100)
    x0 = batch[:, :-1]
    B, L = x0.shape
    x_t, masked, p = forward_process(x0, t, model.config.mask_id, u=keep_prompt(u, prompt_len))
    return elbo_loss(x0_logits(model, x_t, x0), x0, masked, p, n_tokens=B * (L - prompt_len))


def task_loss(name):
    """The loss (model, batch, t, u) of task name's rows, for diffusion.loss_fn and evaluate."""
    return partial(answer_loss, prompt_len=tasks.SUDOKUS[name].prompt_len)


# ---- answers of generated rows ------------------------------------------------------------

def load_task_model(path, flag, device="cpu"):
    """-> (model, tokenizer, task) of a train_tiny.py --task checkpoint; task = (name, seed,
    held-out puzzles kept out of its training)."""
    model, tok, ckpt = load_checkpoint(path, device, flag)
    tc = ckpt["train_config"]
    if not tc.get("task"):
        raise ValueError(f"{flag} {path}: not trained on a task (train_tiny.py --task)")
    return model, tok, (tc["task"], tc["task_seed"], tc["task_test"])


def held_out(task, n):
    """The first n held-out puzzles of task (name, seed, pool): [(puzzle, solution)], lists of ints."""
    name, seed, pool = task
    if n > pool:
        raise ValueError(f"only the first {pool} held-out puzzles were kept out of training, not {n}")
    return tasks.puzzles(tasks.SUDOKUS[name], seed, "test", n)


def prompt_ids(tok, puzzle):
    """The sampler's prompt: the puzzle and the separator, one token per character."""
    return tok.encode(tasks.to_text(puzzle) + tasks.SEP)


def check_rows(tok, sudoku, pairs, gen):
    """gen (B, cells) generated ids for pairs [(puzzle, solution)] -> (exact, valid) (B,) bool."""
    results = [tasks.check_answer(p, s, tok.decode(g.tolist()), sudoku) for (p, s), g in zip(pairs, gen)]
    return torch.tensor([e for e, _ in results]), torch.tensor([v for _, v in results])


