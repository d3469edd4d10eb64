"""Generated tasks (train_tiny.py --task, notes 08): Sudoku puzzles with unique solutions
(sudoku.py) and their rows of prompt and answer: data, the answer's loss, answer checks
(rows.py)."""
