"""
Synthetic tasks the project generates itself: Sudoku, a puzzle whose answer is fixed by its
input and where left-to-right order hurts (notes/08). "Beyond Autoregression" (Ye et al. 2024)
found a discrete diffusion model solving 9x9 Sudoku where a same-size AR model mostly fails:
AR must write the top-left cell first, however hard it is; a diffusion model can fill the
easy cells first and let them decide the hard ones.

A grid of n = r * c digits per row, in boxes of r rows by c columns (4x4: 2x2, 6x6: 2x3,
9x9: 3x3), with a given number of blanks or as many as uniqueness allows (a minimal puzzle).
A row of the training data, one character per cell, so one byte = one token:

    puzzle (n * n chars, '.' for a blank) + ':' + solution (n * n digits)
    .13.4......3.2.5...45312.3..5.15..3.:213645564123321564645312436251152436   (sudoku6, 20 blanks)

The sampler's prompt is the puzzle and the ':', the generated part the n * n solution digits.

Generation (deterministic given the seed):
  1. a full grid by randomised backtracking (digits tried in a shuffled order);
  2. blanks dug in a shuffled cell order: a cell stays blank only if no other digit there
     still leads to a solution (count_solutions), so every puzzle has exactly one solution;
     digging stops at the task's number of blanks (a grid that cannot reach it is skipped),
     or, without one, when no cell can go: a minimal puzzle, where blanking any one more
     given would let in a second solution.
sudoku6 (20 blanks, 16 givens) is the task that trains on a CPU in minutes (notes/08): almost
every puzzle is solvable by naked singles alone, one easy cell after another, yet nearly every
one has a cell that reading order reaches before it is easy. sudoku6-min (minimal puzzles,
about 26 blanks) and sudoku9 (minimal, 9x9) are harder.
Splits: test, val and train each draw from their own random stream (seeded with the size, the
seed and the split's name); val skips the grids of test, train those of test and val, so no
solution grid of a held-out puzzle is ever trained on (6x6 has 28,200,960 grids, 4x4 only 288).
"""

import random
from dataclasses import dataclass

BLANK, SEP = ".", ":"
TEST_POOL = 2000  # held-out puzzles per seed; train and val never contain their solution grids
VAL_SIZE = 256  # puzzles for the training run's validation loss


@dataclass(frozen=True)
class Sudoku:
    """An n x n Sudoku with boxes of box_rows x box_cols (n = box_rows * box_cols, n <= 9), and
    puzzles of `blanks` blanks (None: minimal puzzles)."""
    box_rows: int
    box_cols: int
    blanks: int = None

    @property
    def n(self):
        return self.box_rows * self.box_cols

    @property
    def cells(self):
        return self.n * self.n

    @property
    def prompt_len(self):
        """Characters (= tokens) of the prompt: the puzzle and the separator."""
        return self.cells + 1

    @property
    def answer_len(self):
        return self.cells

    @property
    def row_len(self):
        """Tokens of a row, prompt + answer: the context a --task model is trained with."""
        return self.prompt_len + self.answer_len

    def units(self):
        """The 3n units (rows, columns, boxes), each a list of n cell indices."""
        n, r, c = self.n, self.box_rows, self.box_cols
        rows = [[i * n + j for j in range(n)] for i in range(n)]
        cols = [[i * n + j for i in range(n)] for j in range(n)]
        boxes = [[(bi * r + i) * n + bj * c + j for i in range(r) for j in range(c)]
                 for bi in range(n // r) for bj in range(n // c)]
        return rows + cols + boxes

    def peers(self):
        """peers[i]: the cells sharing a unit with cell i, i excluded."""
        out = [set() for _ in range(self.cells)]
        for unit in self.units():
            for i in unit:
                out[i].update(unit)
        return [sorted(p - {i}) for i, p in enumerate(out)]


SUDOKUS = {"sudoku4": Sudoku(2, 2), "sudoku6": Sudoku(2, 3, blanks=20), "sudoku6-min": Sudoku(2, 3),
           "sudoku9": Sudoku(3, 3)}


# ---- solving --------------------------------------------------------------------------------

def candidates(grid, peers, n, i):
    """The digits 1..n cell i may take: those no peer holds (grid: list of ints, 0 = blank)."""
    used = {grid[p] for p in peers[i]}
    return [d for d in range(1, n + 1) if d not in used]


def count_solutions(grid, sudoku, limit=2):
    """How many completions grid (list of n*n ints, 0 = blank) has, counting up to limit.
    Depth-first, always on the blank with the fewest candidates. Each unit keeps a bit mask of
    the digits it holds (bit d-1 for digit d), so a cell's candidates are one OR and one NOT."""
    n, r, c = sudoku.n, sudoku.box_rows, sudoku.box_cols
    unit_of = [(i // n, n + i % n, 2 * n + (i // n // r) * (n // c) + i % n // c) for i in range(n * n)]
    used = [0] * (3 * n)  # rows, then columns, then boxes
    for i, v in enumerate(grid):
        if v:
            bit = 1 << (v - 1)
            if any(used[u] & bit for u in unit_of[i]):
                return 0  # two equal givens in a unit
            for u in unit_of[i]:
                used[u] |= bit
    blanks, full = [i for i, v in enumerate(grid) if not v], (1 << n) - 1

    def search(blanks):
        if not blanks:
            return 1
        best, best_free, best_k = 0, 0, n + 1
        for j, i in enumerate(blanks):  # the blank with the fewest candidates
            a, b, cc = unit_of[i]
            free = full & ~(used[a] | used[b] | used[cc])
            k = bin(free).count("1")
            if k < best_k:
                best, best_free, best_k = j, free, k
                if k <= 1:
                    break
        i, rest = blanks[best], blanks[:best] + blanks[best + 1:]
        found = 0
        while best_free and found < limit:
            bit = best_free & -best_free
            best_free ^= bit
            for u in unit_of[i]:
                used[u] |= bit
            found += search(rest)
            for u in unit_of[i]:
                used[u] ^= bit
        return found

    return search(blanks)


def random_grid(sudoku, rng, peers):
    """A full valid grid, by backtracking with shuffled digits (the rng decides which grid)."""
    grid = [0] * sudoku.cells

    def fill(i):
        if i == sudoku.cells:
            return True
        digits = candidates(grid, peers, sudoku.n, i)
        rng.shuffle(digits)
        for d in digits:
            grid[i] = d
            if fill(i + 1):
                return True
        grid[i] = 0
        return False

    fill(0)
    return grid


def dig(solution, sudoku, rng, peers):
    """A puzzle whose only solution is solution: blank the cells in a shuffled order, keeping a
    blank only while no other digit in it still leads to a solution, until sudoku.blanks cells
    are blank (None: until no cell can go, a minimal puzzle). Fewer blanks than asked: None."""
    puzzle = list(solution)
    order = list(range(sudoku.cells))
    rng.shuffle(order)
    for i in order:
        if sudoku.blanks is not None and puzzle.count(0) == sudoku.blanks:
            return puzzle
        v, puzzle[i] = puzzle[i], 0
        for d in candidates(puzzle, peers, sudoku.n, i):
            puzzle[i] = d
            if d != v and count_solutions(puzzle, sudoku, 1):
                puzzle[i] = v  # a second solution: the given stays
                break
            puzzle[i] = 0
    return puzzle if sudoku.blanks is None or puzzle.count(0) == sudoku.blanks else None


# ---- checking -------------------------------------------------------------------------------

def is_solution(answer, puzzle, sudoku):
    """Whether answer (list of n*n ints) satisfies the rules (every unit holds 1..n once) and
    keeps the puzzle's givens (puzzle: 0 = blank)."""
    if len(answer) != sudoku.cells or any(not 1 <= d <= sudoku.n for d in answer):
        return False
    if any(p and p != a for p, a in zip(puzzle, answer)):
        return False
    return all(sorted(answer[i] for i in unit) == list(range(1, sudoku.n + 1)) for unit in sudoku.units())


def singles_depth(puzzle, sudoku, peers=None):
    """For every cell, the round of singles at which it is decided: 0 for a given, k when k
    rounds decide it, None if singles alone never do. A round finds, on the grid so far, every
    naked single (a blank with one candidate left) and hidden single (a digit with one place
    left in a unit), and fills them all at once. What makes a cell easy."""
    peers = peers or sudoku.peers()
    grid, depth = list(puzzle), [0 if v else None for v in puzzle]
    for k in range(1, sudoku.cells + 1):
        cands = {i: candidates(grid, peers, sudoku.n, i) for i in range(sudoku.cells) if grid[i] == 0}
        forced = {i: c[0] for i, c in cands.items() if len(c) == 1}  # naked singles
        for unit in sudoku.units():  # hidden singles
            for d in range(1, sudoku.n + 1):
                places = [i for i in unit if d in cands.get(i, ())]
                if len(places) == 1 and d not in (grid[i] for i in unit):
                    forced.setdefault(places[0], d)
        if not forced:
            break
        for i, d in forced.items():
            grid[i], depth[i] = d, k
    return depth


# ---- text -----------------------------------------------------------------------------------

def to_text(grid):
    """[5, 0, 3, ...] -> '5.3...'."""
    return "".join(str(v) if v else BLANK for v in grid)


def from_text(s):
    """'5.3...' -> [5, 0, 3, ...]; anything but a digit 1-9 reads as 0 (a blank, or garbage)."""
    return [int(ch) if ch in "123456789" else 0 for ch in s]


def row_text(puzzle, solution):
    """One training row: puzzle, separator, solution."""
    return to_text(puzzle) + SEP + to_text(solution)


def check_answer(puzzle, solution, answer, sudoku):
    """(exact, valid) of a generated answer (text) to a puzzle with this solution (lists of ints):
    exact when it is the solution digit for digit, valid when it obeys the rules and keeps the
    givens. A puzzle with one solution has one valid answer, so the two agree unless something
    (a bad generator) let a second solution in: valid and not exact."""
    grid = from_text(answer) if len(answer) == sudoku.cells else []
    return grid == list(solution), bool(grid) and is_solution(grid, puzzle, sudoku)


# ---- splits ---------------------------------------------------------------------------------

def puzzles(sudoku, seed, split, count, exclude=frozenset()):
    """count (puzzle, solution) pairs of one split, deterministic given (sudoku, seed, split):
    the split's own random stream, skipping solution grids in exclude and repeats."""
    rng, peers = random.Random(f"{sudoku.n}-{sudoku.blanks}-{seed}-{split}"), sudoku.peers()
    out, seen, misses = [], set(exclude), 0
    while len(out) < count:
        solution = random_grid(sudoku, rng, peers)
        key = tuple(solution)
        if key in seen:
            misses += 1
            if misses > 100 * count + 1000:  # 4x4 has only 288 grids
                raise ValueError(f"{sudoku.n}x{sudoku.n}: only {len(out)} new grids found for {count} {split} puzzles")
            continue
        seen.add(key)
        puzzle = dig(solution, sudoku, rng, peers)
        if puzzle is not None:  # else the grid could not lose that many cells and stay unique
            out.append((puzzle, solution))
    return out


def make_splits(sudoku, seed, n_train, n_test=TEST_POOL, n_val=VAL_SIZE):
    """{'test', 'val', 'train'}: lists of (puzzle, solution); no solution grid is in two splits.
    Each split is its own stream, so test is the same whatever n_train and n_val are."""
    test = puzzles(sudoku, seed, "test", n_test)
    held = {tuple(s) for _, s in test}
    val = puzzles(sudoku, seed, "val", n_val, held)
    train = puzzles(sudoku, seed, "train", n_train, held | {tuple(s) for _, s in val})
    return {"test": test, "val": val, "train": train}
