"""
Variable-length generation for full-attention diffusion models: DAEDAL (Li et al. 2025,
"Beyond Fixed: Variable-Length Denoising for Diffusion LLMs"), notes/00-spec.md section 7.

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

from mini_dlm.sampling.guidance import check_cfg_scale, guide, with_unconditional
from mini_dlm.plumbing.checks import check_remasking
from mini_dlm.ops import confidence, unmask
from mini_dlm.sampler import Step, canvas_attention, canvas_positions, end_of_text, make_canvas, step_noise


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


def denoise_with_insertions(model, x, pad, P, g, logits, passes, d, eot, threshold, temperature, remasking, generator,
                            cfg_scale=0.0, demote=()):
    """Stage 2: commit by threshold (or one per pass) over each unfinished row's region, turning
    a lost position into d.insert masks; yields a Step after every pass. passes: stage 1's."""
    M, B, insertions, length_passes = model.config.mask_id, x.shape[0], 0, passes
    rows = torch.arange(B, device=x.device)  # the unfinished rows; the first pass reuses stage 1's logits
    while len(rows):
        G = int(g[rows].max())
        region = x[rows, P:P + G]  # (b, G) a copy, written back below
        eligible = region == M
        noise = step_noise(remasking, temperature, generator, eligible)
        if d.low_threshold is not None:  # where is each row least sure, before this pass commits?
            c_min, j_min = least_confident(logits, eligible, M)
            lost = (c_min < d.low_threshold) & (g[rows] + d.insert - 1 <= d.max_len)
        rule = {"k": torch.ones_like(rows)} if threshold is None else {"threshold": threshold}
        before = eligible.clone()
        unmask(logits, region, eligible, **rule, remasking=remasking, temperature=temperature, banned=[M],
               demote=list(demote), **noise)
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
            logits = forward_region(model, x[rows, :P + int(g[rows].max())], pad[rows], P, g[rows], cfg_scale)
            passes += 1


@torch.no_grad()
def generate_dynamic(model, prompts, *, length=Daedal(), threshold=0.9, temperature=0.0, remasking="low_confidence",
                     cfg_scale=0.0, generator=None, eot_id=None, confidence_eos_eot_inf=False):
    """DAEDAL (see the module docstring), yielding a Step after every denoising pass; the last
    one's info holds "length_passes" (stage 1), "insertions" and "lengths" (B,), each row's
    final canvas length. prompts: as for sampler.make_canvas. eot_id: the tokenizer's
    end-of-text (default: the id just below the mask token, as in mini_dlm's tokenizer). The
    canvas is left-padded and right-padded with end-of-text. cfg_scale: classifier-free guidance
    in every pass of both stages (mini_dlm/sampling/guidance.py). confidence_eos_eot_inf: LLaDA's switch,
    a guess of end-of-text commits after every other guess of its row (sampler.denoise)."""
    check_dynamic(model, threshold, remasking)
    check_cfg_scale(cfg_scale)
    x, pad = make_canvas(prompts, length.max_len, model)  # checks that prompt + max_len fits the context
    P, eot = x.shape[1] - length.max_len, end_of_text(model, eot_id)
    x, g, logits, passes = grow_canvas(model, x, pad, P, length, eot, cfg_scale)
    yield from denoise_with_insertions(model, x, pad, P, g, logits, passes, length, eot, threshold, temperature,
                                       remasking, generator, cfg_scale, [eot] if confidence_eos_eot_inf else [])


def check_dynamic(model, threshold, remasking):
    cfg = model.config
    if cfg.objective != "mdm" or cfg.block_size:
        raise ValueError("dynamic length needs a full-attention diffusion checkpoint (block-diffusion models: not yet)")
    check_remasking(remasking)
    if threshold is not None and not threshold > 0:
        raise ValueError(f"--threshold must be > 0, got {threshold}")
