"""
Variable length (notes 07). A block-diffusion model grows block by block until every row has
written end-of-text (stop_at). A full-attention model uses DAEDAL (Li et al. 2025,
"Beyond Fixed: Variable-Length Denoising for Diffusion LLMs"), notes/appendix-spec.md section 7.

A fixed --gen-len is a guess: too short and the text is cut, too long and the model pads the
tail with end-of-text (compute spent on nothing) or fills it with more text. DAEDAL needs no
retraining, only a model that has learnt to end documents (train_tiny.py --docs). Two stages:

  1. grow (grow_canvas): start from a short canvas [prompt, M * init_len]. One forward pass;
     if the mean probability of end-of-text over the last `tail` positions is below
     eot_threshold, the model does not think the text ends there: append `grow` masks and
     look again, until it does or the canvas reaches max_len. The last look is also the first
     denoising pass.
  2. denoise (denoise_with_insertions): Fast-dLLM's threshold rule over the whole generated
     region (no blocks: their boundaries would move), or one token per pass without a
     threshold. With low_threshold set, a still-masked position whose best guess has
     confidence below it is where the model lacks room: after the pass's commits, the least
     confident such position of each row becomes `insert` masks (while the canvas stays within
     max_len). Every pass commits at least one token per row and insertions stop at max_len,
     so the loop ends.

Rows of a batch have their own lengths. Each row's canvas is [left pad, prompt, its region],
right-padded to the batch's longest with end-of-text columns that no query sees (like the
left pads), so every row computes what it would alone. A row with no mask left drops out:
later passes run on the unfinished rows only (there is no KV cache here, so dropping a row
costs nothing). The caller cuts each row at its first end-of-text (tokenizer.useful_lengths).
"""

from dataclasses import dataclass

import torch

from mini_dlm.ops import confidence, unmask
from mini_dlm.plumbing.checks import check_daedal, end_of_text
from mini_dlm.sampler import Step, canvas_attention, canvas_positions, make_canvas, step_noise
from mini_dlm.sampling.guidance import guide, with_unconditional


def stop_at(steps, token, start):
    """Pass a sampler's steps on until a block finishes that leaves every row with `token` (an
    end-of-text) among its generated tokens (columns start ..); that last Step's canvas is cut
    after the block. Exact: a finished block never changes, and the blocks before it were
    computed on the same canvas. For a block-diffusion model this is growth block by block."""
    for step in steps:
        end = step.block_end
        if step.block_done and (step.x[:, start:end] == token).any(dim=1).all():
            yield Step(step.x[:, :end], step.committed[:, :end], step.block, step.passes, step.pad, end, True, step.info)
            return
        yield step


@dataclass
class Daedal:
    """DAEDAL's knobs (sample.py: --init-len ... --insert)."""
    init_len: int = 32  # first canvas length
    max_len: int = 128  # longest canvas
    grow: int = 16  # masks appended while the tail is not end-of-text
    tail: int = 8  # positions whose end-of-text probability is averaged
    eot_threshold: float = 0.5  # grow while the tail's mean end-of-text probability is below this
    low_threshold: float = None  # insert masks where the best guess's confidence is below this (None: never)
    insert: int = 4  # masks a low-confidence position becomes

    def __post_init__(self):
        if min(self.init_len, self.grow, self.tail) <= 0 or self.insert < 2:
            raise ValueError(f"--init-len, --grow and --tail must be positive and --insert at least 2, got "
                             f"{self.init_len}, {self.grow}, {self.tail}, {self.insert}")
        if self.max_len < self.init_len:
            raise ValueError(f"--max-len {self.max_len} is shorter than --init-len {self.init_len}")
        if not 0 <= self.eot_threshold <= 1 or (self.low_threshold is not None and not 0 <= self.low_threshold <= 1):
            raise ValueError("--eot-threshold and --low-threshold are probabilities in [0, 1]")


def resize(x, P, g_old, g, M, eot):
    """x (B, P + G) with row r's region in its first g_old[r] slots -> (B, P + max(g)): the
    region keeps its first min(g_old, g) slots, slots g_old .. g - 1 are new masks, and the
    row is right-padded with end-of-text."""
    B, L = x.shape
    G = int(g.max())
    old = x[:, P:P + G] if L - P >= G else torch.cat([x[:, P:], x.new_full((B, P + G - L), eot)], dim=1)  # (B, G)
    col = torch.arange(G, device=x.device)[None, :]  # (1, G)
    region = torch.where(col < torch.minimum(g_old, g)[:, None], old, torch.where(col < g[:, None], M, eot))
    return torch.cat([x[:, :P], region], dim=1)


def insert_masks(x, P, g, rows, js, insert, M, eot):
    """Turn position js[i] of row rows[i] into `insert` masks where it is still masked, moving
    the rest of the row right. -> (x, g, number of insertions)."""
    hits = [(r, j) for r, j in zip(rows.tolist(), js.tolist()) if x[r, P + j] == M]
    g_new = g.clone()
    for r, _ in hits:
        g_new[r] += insert - 1
    x = resize(x, P, g, g_new, M, eot)  # room at the end of each growing row
    for r, j in hits:
        n = int(g[r])
        x[r, P + j + insert:P + n + insert - 1] = x[r, P + j + 1:P + n].clone()  # the text right of j
        x[r, P + j:P + j + insert] = M
    return x, g_new, len(hits)


def forward_region(model, x, pad, P, g, cfg_scale=0.0):
    """Logits (b, G, V) of the generated region of every row of x (b, P + G); row r sees its
    columns [pad[r], P + g[r]) only (a hidden column's query sees itself, to stay defined).
    cfg_scale > 0: guided, the prompt masked in a second half of the batch (mini_dlm/sampling/guidance.py)."""
    L, M = x.shape[1], model.config.mask_id
    if cfg_scale:
        fixed = (torch.arange(L, device=x.device) < P).expand_as(x)  # (b, L): the prompt columns
        x, pad, g = with_unconditional(x, fixed, M), torch.cat([pad, pad]), torch.cat([g, g])  # (2b, L)
    mask = canvas_attention(model, pad, L, P, 0, end=P + g)  # (b or 2b, 1, L, L)
    logits = model(x, mask, canvas_positions(pad, L), only=slice(P, L))
    return guide(logits, cfg_scale, M) if cfg_scale else logits


def grow_canvas(model, x, pad, P, d, eot, cfg_scale=0.0):
    """Stage 1: append d.grow masks to every row whose tail is not confidently end-of-text, until
    none is or the row reaches d.max_len. -> (x, g (B,) region lengths, the last logits, passes)."""
    B, M = x.shape[0], model.config.mask_id
    g = torch.full((B,), d.init_len, dtype=torch.long, device=x.device)  # (B,) each row's region length
    x, settled, passes = resize(x, P, g, g, M, eot), torch.zeros(B, dtype=torch.bool, device=x.device), 0
    while True:
        logits = forward_region(model, x, pad, P, g, cfg_scale)  # (B, G, V)
        passes += 1
        p_eot = logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(dim=-1)[..., eot]  # (B, G)
        last = g[:, None] - d.tail + torch.arange(d.tail, device=x.device)  # (B, tail): the last min(tail, g) count
        inside = (last >= 0).to(p_eot.dtype)
        tail_eot = (p_eot.gather(1, last.clamp(min=0)) * inside).sum(dim=1) / inside.sum(dim=1)  # (B,)
        grows = ~settled & (tail_eot < d.eot_threshold) & (g < d.max_len)
        settled |= ~grows
        if not grows.any():
            return x, g, logits, passes
        g_new = torch.where(grows, (g + d.grow).clamp(max=d.max_len), g)
        x, g = resize(x, P, g, g_new, M, eot), g_new


def least_confident(logits, eligible, M):
    """(b,) confidence and position of each row's least sure eligible guess (the guess unmask
    could commit: never the mask token)."""
    lg = logits.clone()
    lg[..., M] = float("-inf")
    c = confidence(lg, lg.argmax(dim=-1), "low_confidence")  # (b, G)
    return c.masked_fill(~eligible, float("inf")).min(dim=1)


def denoise_with_insertions(model, grown, pad, P, opts, d, generator=None):
    """Stage 2: commit by opts.threshold (or one per pass) over each unfinished row's region,
    turning a lost position into d.insert masks; yields a Step after every pass. grown: stage
    1's (x, g, logits, passes); its logits serve the first pass."""
    x, g, logits, passes = grown
    M, B, insertions, length_passes = model.config.mask_id, x.shape[0], 0, passes
    eot = end_of_text(model, opts.eot_id)
    rule = opts.rule(M, eot)
    rows = torch.arange(B, device=x.device)  # the unfinished rows
    while len(rows):
        G = int(g[rows].max())
        region = x[rows, P:P + G]  # (b, G) a copy, written back below
        eligible = region == M
        seed, scores = step_noise(rule, generator, eligible)
        if d.low_threshold is not None:  # where is each row least sure, before this pass commits?
            c_min, j_min = least_confident(logits, eligible, M)
            lost = (c_min < d.low_threshold) & (g[rows] + d.insert - 1 <= d.max_len)
        before = eligible.clone()
        unmask(logits, region, eligible, rule, torch.ones_like(rows) if rule.threshold is None else None, seed, scores)
        x[rows, P:P + G] = region
        committed = torch.zeros_like(x, dtype=torch.bool)
        committed[rows, P:P + G] = before & ~eligible
        yield Step(x, committed, 0, passes, pad,
                   info={"length_passes": length_passes, "insertions": insertions, "lengths": g})
        if d.low_threshold is not None and lost.any():
            x, g, n = insert_masks(x, P, g, rows[lost], j_min[lost], d.insert, M, eot)
            insertions += n
        rows = (x[:, P:] == M).any(dim=1).nonzero().squeeze(1)
        if len(rows):
            logits = forward_region(model, x[rows, :P + int(g[rows].max())], pad[rows], P, g[rows], opts.cfg_scale)
            passes += 1


@torch.no_grad()
def generate_dynamic(model, prompts, opts, length=Daedal(), generator=None):
    """DAEDAL (see the module docstring), yielding a Step after every denoising pass; the last
    one's info holds "length_passes" (stage 1), "insertions" and "lengths" (B,), each row's
    final canvas length. prompts: as for sampler.make_canvas. opts: a sampler.Decoding whose
    threshold (None: one token per pass), temperature, remasking, cfg_scale (guidance in every
    pass of both stages), confidence_eos_eot_inf and eot_id apply (checks.check_daedal). The
    canvas is left-padded and right-padded with end-of-text."""
    eot = check_daedal(model, opts)
    x, pad = make_canvas(prompts, length.max_len, model)  # checks that prompt + max_len fits the context
    P = x.shape[1] - length.max_len
    grown = grow_canvas(model, x, pad, P, length, eot, opts.cfg_scale)
    yield from denoise_with_insertions(model, grown, pad, P, opts, length, generator)
