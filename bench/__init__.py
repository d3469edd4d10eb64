"""
The benchmarks: scripts that validate, then measure, run from the repository root as
`python -m bench.<name> ...` (`--help` lists each one's flags; output goes to bench-out/).

Scripts:
    efficiency.py        AR (KV cache) vs the DLM configurations across batch sizes: throughput, roofline, B* (notes 06)
    sampling.py          LLaDA vs Fast-dLLM's threshold and caches at batch 1 (notes 04)
    decoding.py          remasking rule x temperature: generative perplexity and distinct3 (notes 03)
    threshold.py         Fast-dLLM's speed/quality curve over tau and the factor rule, as a PNG (notes 04)
    kernels.py           each compiled op validated against its reference, then timed (notes 05)
    length.py            DAEDAL's variable length vs fixed generation lengths (notes 07)
    cloze.py             filling a blank: the DLM seeing both sides vs AR seeing the left (notes 08)
    cfg.py               classifier-free guidance: cost and prompt adherence per scale (notes 08)
    task.py              held-out Sudoku accuracy: AR vs each diffusion decoder (notes 08)
    data_constrained.py  AR vs diffusion on training slices repeated for many epochs (notes 09)
    few_step.py          a distilled few-step student vs its teacher (notes 10)

Helper modules:
    common.py            what the benchmarks share: prompts, JSON output, plots, tables
    roofline.py          the cost model: FLOPs and bytes of a forward, measured roofs, timers
    quality.py           generation quality: generative NLL under an AR judge, distinct3
"""
