"""
Infilling: blanks anywhere in a text, filled by the diffusion model, which sees both sides.

    "ROMEO:{24} my lord."     {N} is a blank of N masked tokens; any other brace is text

A template becomes one canvas: each piece of fixed text is tokenized on its own (so no token
straddles a blank's edge) and each blank becomes N mask tokens, [text, M * N, text, ...].
sampler.denoise then fills it: only the blanks' positions are eligible, so the fixed text
never changes, and the blocks run left to right over the span from the first blank to the end
of the last (notes/appendix-spec.md section 9, "Infilling"). An AR model cannot infill: it never
sees the text to the right of a blank.

A full-attention model sees the whole template at every step, text after the last blank
included. A block-diffusion model does not: its attention is block-causal, so a blank sees the
blocks before it and its own block, never the text to the right beyond its block. For it,
a blank followed by text is a continuation that must end where the text begins.
"""

import re

import torch

from mini_dlm.sampler import Decoding, denoise
from mini_dlm.sampling import guidance

BLANK = re.compile(r"\{(\d+)\}")


def parse_template(text):
    """'a{3}b' -> ['a', 3, 'b']: the fixed pieces (str, never empty) and blank sizes (int) in
    order. ValueError for a template without a blank or with a blank of size 0."""
    pieces, at = [], 0
    for m in BLANK.finditer(text):
        n = int(m.group(1))
        if n == 0:
            raise ValueError(f"the blank {m.group(0)} at character {m.start()} has size 0: a blank is {{N}} "
                             "with N >= 1 tokens to fill")
        pieces += [text[at:m.start()], n]
        at = m.end()
    if not pieces:
        raise ValueError("the template has no blank: mark each with {N}, N tokens to fill (e.g. 'ROMEO:{24} my lord.')")
    pieces.append(text[at:])
    return [p for p in pieces if p != ""]


def template_ids(tokenizer, pieces, mask_id):
    """parse_template's pieces -> canvas ids: each fixed piece tokenized alone, each blank of N
    as N * mask_id."""
    ids = []
    for piece in pieces:
        ids += [mask_id] * piece if isinstance(piece, int) else tokenizer.encode(piece)
    return ids


def infill_canvas(model, tokenizer, text, rows=1):
    """The template as a canvas x (rows, L) on the model's device, M at the blanks. ValueError
    for an AR model, a bad template or one longer than the model's context."""
    cfg = model.config
    if cfg.objective != "mdm":
        raise ValueError("an AR model cannot infill: it never sees the text right of a blank (use a diffusion "
                         "checkpoint)")
    pieces = parse_template(text)
    n_blank = sum(p for p in pieces if isinstance(p, int))
    n_fixed = sum(len(tokenizer.encode(p)) for p in pieces if isinstance(p, str))
    if n_fixed + n_blank > cfg.seq_len:  # checked before a blank of {10000000} is built
        raise ValueError(f"the template is {n_fixed + n_blank} tokens ({n_fixed} fixed + {n_blank} in blanks), "
                         f"more than the model's context of {cfg.seq_len}")
    ids = template_ids(tokenizer, pieces, cfg.mask_id)
    return torch.tensor(ids, device=next(model.parameters()).device).repeat(rows, 1)


def infill(model, tokenizer, text, opts=Decoding(), rows=1, generator=None):
    """A generator of Steps that fills the template's blanks in `rows` identical rows:
    sampler.denoise on infill_canvas with the Decoding opts (steps: default one blank token per
    step; guidance with opts.cfg_scale > 0). The canvas's first column is the template's first
    token, so Step.x is the filled template."""
    canvas = infill_canvas(model, tokenizer, text, rows)
    return denoise(model, canvas, opts, generator=generator, strategy=guidance.strategy(opts))
