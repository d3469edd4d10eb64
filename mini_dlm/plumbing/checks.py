"""
Argument checks at the core's boundary: the decoding options (mini_dlm/sampler.py: Decoding)
against each other, the model and the canvas; the two ops' arguments (mini_dlm/ops.py, the
Python side of csrc/unmask_args.h and csrc/attention_args.h). A bad argument is a ValueError
that says what is wrong, before anything runs, so the algorithms' files trust their inputs.
"""

import math

import torch

REMASKING = ("low_confidence", "random", "margin", "entropy")  # how unmask scores its guesses
FACTOR_RULES = ("fastdllm", "strict")  # Fast-dLLM's factor rule as its code does it, or as the paper writes it


# ---- the decoding options ---------------------------------------------------------------

def check_rule(rule):
    """An ops.Rule (or a sampler.Decoding, which has its fields) on its own."""
    if rule.remasking not in REMASKING:
        raise ValueError(f"remasking must be one of {REMASKING}, got {rule.remasking!r}")
    if not 0 <= rule.temperature < math.inf:
        raise ValueError(f"temperature must be a finite number >= 0, got {rule.temperature}")
    if rule.threshold is not None and math.isnan(rule.threshold):
        raise ValueError("threshold must be a number")
    if rule.threshold is not None and rule.factor is not None:
        raise ValueError("give --threshold or --factor, not both")
    if rule.factor is not None and not rule.factor > 0:
        raise ValueError(f"factor must be > 0, got {rule.factor}")
    if rule.factor_rule not in FACTOR_RULES:
        raise ValueError(f"factor_rule must be one of {FACTOR_RULES}, got {rule.factor_rule!r}")


def check_decoding(opts, caches):
    """A sampler.Decoding on its own, when it is built; caches: the cache names there are."""
    check_rule(opts)
    if opts.block_len <= 0:
        raise ValueError(f"block-len must be positive, got {opts.block_len}")
    if opts.steps is not None and opts.steps <= 0:
        raise ValueError(f"steps must be positive (None: one per mask), got {opts.steps}")
    if opts.cache not in caches:
        raise ValueError(f"cache must be one of {caches}, got {opts.cache!r}")
    check_cfg_scale(opts.cfg_scale)


def check_cfg_scale(scale):
    """ValueError unless scale is a finite number >= 0."""
    if not (isinstance(scale, (int, float)) and 0 <= scale < math.inf):
        raise ValueError(f"--cfg-scale must be a finite number >= 0, got {scale}")


def check_model(model, opts, guided):
    """The options against the model they decode with; guided: whether denoise was given a
    strategy that runs guidance (mini_dlm/sampling/guidance.py) -> the end-of-text id."""
    cfg, b = model.config, model.config.block_size
    if cfg.objective != "mdm":
        raise ValueError("generate() needs a diffusion checkpoint; use generate_ar() for an AR model")
    if b and opts.block_len != b:
        raise ValueError(f"this block-diffusion checkpoint was trained with blocks of {b}: use --block-len {b}")
    if b and opts.cache in ("prefix", "dual"):
        raise ValueError(f"--cache {opts.cache} is for full-attention checkpoints; a block-diffusion checkpoint "
                         "uses --cache block (exact)")
    if not b and opts.cache == "block":
        raise ValueError("--cache block needs a block-diffusion checkpoint (train_tiny.py --block-size N); use prefix "
                         "or dual")
    if opts.cfg_scale and not guided:
        raise ValueError("cfg_scale > 0: pass strategy=guidance.strategy(opts) (mini_dlm/sampling/guidance.py)")
    return end_of_text(model, opts.eot_id)


def check_daedal(model, opts):
    """The options DAEDAL takes (mini_dlm/sampling/length.py) -> the end-of-text id."""
    cfg = model.config
    if cfg.objective != "mdm" or cfg.block_size:
        raise ValueError("dynamic length needs a full-attention diffusion checkpoint (block-diffusion models: not yet)")
    if opts.threshold is not None and not opts.threshold > 0:
        raise ValueError(f"--threshold must be > 0, got {opts.threshold}")
    if opts.factor is not None or opts.cache != "none" or opts.logits_eos_inf or opts.steps is not None:
        raise ValueError("DAEDAL takes --threshold, not --factor, --cache, --logits-eos-inf or --steps")
    return end_of_text(model, opts.eot_id)


def end_of_text(model, eot_id=None):
    """The end-of-text id: eot_id, or by default the id just below the mask token (as in
    mini_dlm's tokenizer). ValueError unless it is a token id other than the mask token."""
    cfg = model.config
    eot = cfg.mask_id - 1 if eot_id is None else eot_id
    if not 0 <= eot < cfg.vocab_size or eot == cfg.mask_id:
        raise ValueError(f"eot_id must be a token id in [0, {cfg.vocab_size}) other than the mask token, got {eot}")
    return eot


def check_schedule(gen_len, steps, block_len):
    """ValueError unless LLaDA's schedule is well defined for [prompt, M * gen_len]."""
    if min(gen_len, steps, block_len) <= 0:
        raise ValueError(f"gen-len, steps and block-len must be positive, got {gen_len}, {steps}, {block_len}")
    if gen_len % block_len:
        raise ValueError(f"--gen-len {gen_len} is not divisible by --block-len {block_len}")
    n_blocks = gen_len // block_len
    if steps % n_blocks:
        raise ValueError(f"--steps {steps} is not a multiple of the number of blocks ({n_blocks} = gen-len / block-len)")
    if steps > gen_len:
        raise ValueError(f"--steps {steps} is larger than --gen-len {gen_len}: some steps would commit nothing")


def check_canvas(model, x):
    """ValueError unless the canvas x (B, L) fits the model's context and has a mask."""
    ctx, M = model.config.seq_len, model.config.mask_id
    if x.shape[1] > ctx:
        raise ValueError(f"the canvas ({x.shape[1]} tokens) exceeds the model's context of {ctx} tokens")
    if not (x == M).any():
        raise ValueError("the canvas has no mask token: nothing to fill")


def check_steps(steps, n_masks):
    """ValueError unless 1 <= steps <= n_masks (a step that commits nothing is no step) -> steps."""
    if not 0 < steps <= n_masks:
        raise ValueError(f"--steps must be between 1 and the {n_masks} masked tokens, got {steps}")
    return steps


# ---- the ops' arguments -----------------------------------------------------------------

def _host_checkable(t):
    """Whether a check may read t's values here: on the CPU, outside torch.compile. Reading a
    GPU tensor's values would synchronise with the device (and break CUDA graph capture), and
    under torch.compile it would break the graph; there the compiled ops check the values
    themselves (the CUDA ones with a device-side assert)."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def check_unmask(logits, tokens, eligible, rule, k, scores):
    if logits.dim() != 3 or logits.dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        raise ValueError(f"logits must be (B, L, V) float32/bfloat16/float16/float64, got {tuple(logits.shape)} {logits.dtype}")
    B, L, V = logits.shape
    if tokens.shape != (B, L) or tokens.dtype != torch.long:
        raise ValueError(f"tokens must be ({B}, {L}) int64, got {tuple(tokens.shape)} {tokens.dtype}")
    if eligible.shape != (B, L) or eligible.dtype != torch.bool:
        raise ValueError(f"eligible must be ({B}, {L}) bool, got {tuple(eligible.shape)} {eligible.dtype}")
    if sum(a is not None for a in (k, rule.threshold, rule.factor)) != 1:
        raise ValueError("give exactly one of k (schedule), threshold or factor")
    if k is not None and (k.shape != (B,) or k.dtype != torch.long or (_host_checkable(k) and (k < 0).any())):
        raise ValueError(f"k must be ({B},) int64 and >= 0")
    if rule.remasking == "random" and (scores is None or scores.shape != (B, L)):
        raise ValueError(f"remasking='random' needs scores of shape ({B}, {L})")
    banned, demote = rule.banned, rule.demote
    if len(banned) == 0 or min(banned) < 0 or max(banned) >= V:
        raise ValueError(f"banned must hold at least the mask token, ids in [0, {V}), got {list(banned)}")
    if len(demote) and (min(demote) < 0 or max(demote) >= V):
        raise ValueError(f"demote must hold ids in [0, {V}), got {list(demote)}")


def check_attention(q, k, v, k_prefix, v_prefix, prefix_len, k_suffix, v_suffix):
    if q.dim() != 4 or q.dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        raise ValueError(f"q must be (B, H, b, D) floating point, got {tuple(q.shape)} {q.dtype}")
    B, H, b, D = q.shape
    if b == 0:
        raise ValueError("the block must hold at least one position (q of shape (B, H, 0, D))")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"the block's k and v must have q's shape {tuple(q.shape)}")
    for name, ks, vs in (("prefix", k_prefix, v_prefix), ("suffix", k_suffix, v_suffix)):
        if (ks is None) != (vs is None):
            raise ValueError(f"give both {name} k and v, or neither")
        if ks is not None and (ks.shape != vs.shape or ks.shape[:2] != (B, H) or ks.shape[3] != D or ks.dim() != 4):
            raise ValueError(f"{name} k/v must be ({B}, {H}, n, {D}), got {tuple(ks.shape)} and {tuple(vs.shape)}")
    for t in (k, v, k_prefix, v_prefix, k_suffix, v_suffix):
        if t is not None and t.dtype != q.dtype:
            raise ValueError(f"all of q, k, v must have one dtype, got {q.dtype} and {t.dtype}")
    if k_prefix is not None:
        Lc = k_prefix.shape[2]
        if prefix_len is None or prefix_len.shape != (B,) or prefix_len.dtype != torch.long:
            raise ValueError(f"prefix_len must be ({B},) int64 when a prefix is given")
        if len(prefix_len) and _host_checkable(prefix_len) and (prefix_len.min() < 0 or prefix_len.max() > Lc):
            raise ValueError(f"prefix_len must lie in [0, {Lc}]")
