"""The generated Sudoku task (mini_dlm/tasks/sudoku.py): the solver, unique and minimal puzzles,
disjoint and deterministic splits, the answer checks, the answer-only losses.

    python -m pytest -q tests/test_tasks.py
"""

import functools
import itertools

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_model
from mini_dlm.diffusion import forward_process, loss_fn
from mini_dlm.tasks import sudoku as tasks
from mini_dlm.tasks.rows import answer_loss, keep_prompt
from mini_dlm.tokenizer import Tokenizer

S4, S6, S6_MIN = tasks.SUDOKUS["sudoku4"], tasks.SUDOKUS["sudoku6"], tasks.SUDOKUS["sudoku6-min"]


def all_4x4_grids():
    """Every valid 4x4 grid, by brute force over rows that are permutations (columns and boxes
    checked as the rows are stacked): a list made without tasks' solver."""
    perms = list(itertools.permutations(range(1, 5)))
    units = [u for u in S4.units()]

    def fits(cells):  # no unit repeats a digit among the cells placed so far
        return all(len({cells[i] for i in u if i < len(cells)}) == len([i for i in u if i < len(cells)]) for u in units)

    grids = [()]
    for _ in range(4):
        grids = [g + p for g in grids for p in perms if fits(g + p)]
    return grids


def naive_count(puzzle, sudoku, limit=2):
    """Solutions of puzzle counted up to limit by the plainest search: cells in reading order,
    digits 1..n, each checked against its peers. A second opinion on count_solutions."""
    grid, n, peers = list(puzzle), sudoku.n, sudoku.peers()
    if any(v and v in (grid[p] for p in peers[i]) for i, v in enumerate(grid)):
        return 0

    def search(i, limit):
        if i == len(grid):
            return 1
        if grid[i]:
            return search(i + 1, limit)
        found = 0
        for d in range(1, n + 1):
            if found < limit and all(grid[p] != d for p in peers[i]):
                grid[i] = d
                found += search(i + 1, limit - found)
        grid[i] = 0
        return found

    return search(0, limit)


def test_count_solutions_knows_the_4x4_grids():
    grids = all_4x4_grids()
    assert len(grids) == 288  # the known number of 4x4 Sudoku grids
    assert tasks.count_solutions([0] * 16, S4, limit=1000) == 288
    assert tasks.count_solutions([1, 1] + [0] * 14, S4) == 0  # two 1s in a row
    assert tasks.count_solutions(list(grids[0]), S4) == 1


@pytest.mark.parametrize("sudoku,count", [(S4, 40), (S6_MIN, 12), (S6, 20)])
def test_puzzles_have_one_solution(sudoku, count):
    """Unique (by a second solver, and for 4x4 against all 288 grids); minimal without a number
    of blanks, else exactly that many."""
    grids = set(all_4x4_grids()) if sudoku is S4 else None
    for puzzle, solution in tasks.puzzles(sudoku, 3, "train", count):
        assert tasks.is_solution(solution, puzzle, sudoku)
        assert naive_count(puzzle, sudoku) == 1
        if grids is not None:  # 4x4: the one grid of all 288 that keeps the givens is the solution
            assert [g for g in grids if all(p in (0, v) for p, v in zip(puzzle, g))] == [tuple(solution)]
        if sudoku.blanks:
            assert puzzle.count(0) == sudoku.blanks
            continue
        for i in (i for i, v in enumerate(puzzle) if v):  # minimal: any given taken away, a second solution
            assert naive_count(puzzle[:i] + [0] + puzzle[i + 1:], sudoku) == 2


def test_splits_are_disjoint_and_deterministic():
    a = tasks.make_splits(S6, 7, n_train=60, n_test=30, n_val=20)
    grids = {k: {tuple(s) for _, s in v} for k, v in a.items()}
    assert [len(grids[k]) for k in ("train", "val", "test")] == [60, 20, 30]  # no repeats inside a split
    assert not grids["train"] & grids["test"] and not grids["train"] & grids["val"] and not grids["val"] & grids["test"]
    assert tasks.make_splits(S6, 7, n_train=60, n_test=30, n_val=20) == a
    assert tasks.make_splits(S6, 7, n_train=10, n_test=30, n_val=5)["test"] == a["test"]  # test: whatever the rest
    assert tasks.make_splits(S6, 8, n_train=60, n_test=30, n_val=20)["test"] != a["test"]


def test_train_skips_held_out_grids():
    """Force a collision: 4x4 has 288 grids, so 250 training puzzles must meet the held-out ones."""
    s = tasks.make_splits(S4, 0, n_train=200, n_test=40, n_val=40)
    held = {tuple(g) for _, g in s["test"] + s["val"]}
    assert len(held) == 80 and not held & {tuple(g) for _, g in s["train"]}
    with pytest.raises(ValueError, match="new grids"):
        tasks.make_splits(S4, 0, n_train=250, n_test=40, n_val=40)  # 330 > 288


def test_check_answer_on_constructed_answers():
    puzzle, solution = tasks.puzzles(S6, 0, "test", 1)[0]
    right = tasks.to_text(solution)
    assert tasks.check_answer(puzzle, solution, right, S6) == (True, True)
    assert tasks.check_answer(puzzle, solution, right[:-1], S6) == (False, False)  # short
    assert tasks.check_answer(puzzle, solution, right[:-1] + ".", S6) == (False, False)  # a blank left
    wrong = list(solution)
    wrong[0], wrong[1] = wrong[1], wrong[0]  # the row still holds 1..6; its columns do not
    assert tasks.check_answer(puzzle, solution, tasks.to_text(wrong), S6) == (False, False)
    relabel = [{1: 2, 2: 1}.get(d, d) for d in solution]  # a valid grid that breaks the givens
    assert tasks.is_solution(relabel, [0] * 36, S6)
    assert tasks.check_answer(puzzle, solution, tasks.to_text(relabel), S6) == (False, False)
    loose = [v if i >= 6 else 0 for i, v in enumerate(relabel)]  # a puzzle that relabel also solves
    assert tasks.check_answer(loose, solution, tasks.to_text(relabel), S6) == (False, True)  # valid, not exact


def test_singles_depth():
    solution = [1, 2, 3, 4, 3, 4, 1, 2, 2, 1, 4, 3, 4, 3, 2, 1]
    puzzle = list(solution)
    puzzle[0] = 0  # one blank: its row holds 2, 3, 4, so one candidate at round 1
    assert tasks.singles_depth(puzzle, S4) == [1] + [0] * 15
    puzzle[1] = 0  # two blanks of one row: each still has one candidate (its column decides)
    assert tasks.singles_depth(puzzle, S4)[:2] == [1, 1]
    assert tasks.singles_depth([0] * 16, S4) == [None] * 16  # nothing decided without givens
    hidden = [0, 0, 2, 3, 0, 0, 0, 0, 0, 3, 0, 4, 4, 0, 0, 0]  # cell 1 may hold 1 or 4, but only it can take
    assert tasks.candidates(hidden, S4.peers(), 4, 1) == [1, 4]  # its row's 4 (cell 0's column has one)
    assert tasks.singles_depth(hidden, S4) == [1, 1, 0, 0, 1, 2, 1, 1, 1, 0, 1, 0, 0, 2, 1, 1]


def test_one_cell_is_one_token():
    tok = Tokenizer("bpe", [])  # what train_tiny.py --task uses: byte level, no merges
    puzzle, solution = tasks.puzzles(S6, 0, "test", 1)[0]
    text = tasks.row_text(puzzle, solution)
    ids = tok.encode(text)
    assert len(ids) == len(text) == S6.prompt_len + S6.answer_len and tok.decode(ids) == text


def test_prompt_is_never_masked_nor_scored():
    u = torch.rand(64, 10)
    x_t, masked, _ = forward_process(torch.arange(10).repeat(64, 1), torch.ones(64), 99, u=keep_prompt(u, 4))
    assert not masked[:, :4].any() and masked[:, 4:].all()
    model = tiny_model("ar", seq_len=10)
    x = torch.randint(0, 60, (3, 11))
    logits = model(x[:, :-1])
    by_hand = F.cross_entropy(logits[:, 3:9].flatten(0, 1), x[:, 4:10].flatten())  # targets in columns 4..9
    assert torch.allclose(answer_loss(model, x, None, None, prompt_len=4), by_hand)
    mdm = tiny_model("mdm", seq_len=10)
    y = x.clone()
    y[:, :4] = torch.randint(0, 60, (3, 4))  # another prompt changes the loss, another answer too ...
    answer = functools.partial(answer_loss, prompt_len=4)
    a = loss_fn(mdm, x, torch.Generator().manual_seed(0), loss=answer)
    assert a != loss_fn(mdm, y, torch.Generator().manual_seed(0), loss=answer)
    z = x.clone()
    z[:, 10] = 5  # ... but the last column (a task row's filler) does not
    assert a == loss_fn(mdm, z, torch.Generator().manual_seed(0), loss=answer)
