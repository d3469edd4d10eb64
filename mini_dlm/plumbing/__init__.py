"""What the scripts share, none of it an idea of the course: flag types and one-line errors
(cli.py), checkpoints (checkpoint.py) and the files they are stored in (files.py), the argument
checks at the core's boundary (checks.py), the choice of compiled kernels or references
(backend.py), torchrun + DDP (distributed.py)."""
