"""mini_dlm: a minimal, educational masked diffusion language model.

The core, in reading order (notes 01-05 teach it):
    model.py       the mask-predictor Transformer (full attention, block diffusion, AR twin)
    diffusion.py   the forward process and the ELBO loss (and BD3-LM's block version), validation bound
    sampler.py     the reverse process: Decoding options, LLaDA's schedule, Fast-dLLM's threshold and
                   factor rules, one strategy per KV cache; AR decoding
    kvcache.py     the KV cache the attention records into and reads from
    ops.py         the two hot ops in plain PyTorch, unmask and block_attention: the kernels' spec
    tokenizer.py   byte-level BPE trained here, wrapped in tiktoken
    data.py        corpus reading, split, token cache, batches

What the later chapters add, hooked in from outside the core:
    sampling/      variable length (length.py: DAEDAL, stop_at), infilling (infill.py),
                   classifier-free guidance (guidance.py)                          notes 07-08
    tasks/         generated Sudoku (sudoku.py) and its rows, loss and answers (rows.py)  notes 08
    conversion/    AR-to-diffusion: --init-from (a2d.py), token shift (token_shift.py),
                   complementary masks (complementary.py)                          notes 09
    distillation/  few-step students: SDTT (sdtt.py), distribution matching (didi.py)  notes 10

Plumbing the scripts share:
    plumbing/      cli.py (flag types, one-line errors, device, threads), checkpoint.py (save, load,
                   new_model), files.py (atomic writes, safe loads), checks.py (argument checks at
                   the core's boundary), backend.py (compiled kernels or the references),
                   distributed.py (torchrun + DDP)
"""
