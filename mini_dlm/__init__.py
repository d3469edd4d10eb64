"""mini_dlm: a minimal, educational masked diffusion language model.

    model.py      the mask-predictor Transformer (and its AR twin)
    diffusion.py  forward masking process, ELBO loss, validation bound
    sampler.py    LLaDA's reverse process; AR decoding
    tokenizer.py  byte-level BPE trained here, wrapped in tiktoken
    data.py       corpus reading, split, token cache, batches
    checkpoint.py atomic save, safe load
    cli.py        what the two scripts share
"""
