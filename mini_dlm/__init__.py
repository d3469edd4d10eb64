"""mini_dlm: a minimal, educational masked diffusion language model.

    model.py      the mask-predictor Transformer (full attention, block diffusion, AR twin)
    diffusion.py  forward masking process, ELBO loss (and BD3-LM's block version), validation bound
    sampler.py    LLaDA's reverse process, Fast-dLLM thresholds and caches; AR decoding
    dynamic.py    DAEDAL variable length: grow the canvas, then denoise with insertions
    ops.py        the two hot ops in plain PyTorch: unmask, block_attention (the kernels' spec)
    op_args.py    the ops' argument checks
    gumbel.py     counter-based Gumbel noise, the same on every device and backend
    backend.py    compiled kernels (csrc/, mini_dlm._C) or the PyTorch references
    kvcache.py    the KV cache the attention records into and reads from
    tokenizer.py  byte-level BPE trained here, wrapped in tiktoken
    data.py       corpus reading, split, token cache, batches
    checkpoint.py atomic save, safe load
    cli.py        what the scripts share
    distributed.py torchrun + DistributedDataParallel: process group, rank 0, gradient average
"""
