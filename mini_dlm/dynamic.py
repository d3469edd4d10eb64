"""
Variable-length generation for full-attention diffusion models: DAEDAL (Li et al. 2025,
"Beyond Fixed: Variable-Length Denoising for Diffusion LLMs"), DESIGN.md section 7.

A fixed --gen-len is a guess: too short and the text is cut, too long and the model pads the
tail with end-of-text (compute spent on nothing) or fills it with more text. DAEDAL needs no
retraining, only a model that has learnt to end documents (train_tiny.py --docs):

  1. length: start from a short canvas [prompt, M * init_len]. One forward pass; if the mean
     probability of end-of-text over the last `tail` positions is below eot_threshold, the
     model does not think the text ends there: append `grow` masks and look again, until it
     does or the canvas reaches max_len. The last look is also the first denoising pass.
  2. denoise: Fast-dLLM's threshold rule over the whole generated region (no blocks: their
     boundaries would move), or one token per pass without a threshold. With low_threshold
     set, a still-masked position whose best guess has confidence below it is where the
     model lacks room: after the pass's commits, the least confident such position of each
     row becomes `insert` masks (while the canvas stays within max_len). Every pass commits
     at least one token per row and insertions stop at max_len, so the loop ends.

Rows of a batch have their own lengths. Each row's canvas is [left pad, prompt, its region],
right-padded to the batch's longest with end-of-text columns that no query sees (like the
left pads), so every row computes what it would alone. A row with no mask left drops out:
later passes run on the unfinished rows only (there is no KV cache here, so dropping a row
costs nothing). The caller cuts each row at its first end-of-text (quality.useful_lengths).
"""

import torch

from mini_dlm.ops import confidence, unmask
from mini_dlm.sampler import REMASKING, canvas_attention, canvas_positions, draw_seed, make_canvas


def check_dynamic(model, init_len, max_len, grow, tail, eot_threshold, low_threshold, insert, threshold, remasking):
    cfg = model.config
    if cfg.objective != "mdm" or cfg.block_size:
        raise ValueError("dynamic length needs a full-attention diffusion checkpoint (block-diffusion models: not yet)")
    if min(init_len, grow, tail) <= 0 or insert < 2:
        raise ValueError(f"--init-len, --grow and --tail must be positive and --insert at least 2, got {init_len}, "
                         f"{grow}, {tail}, {insert}")
    if max_len < init_len:
        raise ValueError(f"--max-len {max_len} is shorter than --init-len {init_len}")
    if not 0 <= eot_threshold <= 1 or (low_threshold is not None and not 0 <= low_threshold <= 1):
        raise ValueError("--eot-threshold and --low-threshold are probabilities in [0, 1]")
    if remasking not in REMASKING:
        raise ValueError(f"remasking must be one of {REMASKING}, got {remasking!r}")
    if threshold is not None and not threshold > 0:
        raise ValueError(f"--threshold must be > 0, got {threshold}")


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


def forward_region(model, x, pad, P, g):
    """Logits (b, G, V) of the generated region of every row of x (b, P + G); row r sees its
    columns [pad[r], P + g[r]) only (a hidden column's query sees itself, to stay defined)."""
    L = x.shape[1]
    mask = canvas_attention(model, pad, L, P, 0, end=P + g)  # (b, 1, L, L)
    return model(x, mask, canvas_positions(pad, L), only=slice(P, L))


@torch.no_grad()
def generate_dynamic(model, prompts, init_len=32, max_len=128, grow=16, tail=8, eot_threshold=0.5, low_threshold=None,
                     insert=4, threshold=0.9, temperature=0.0, remasking="low_confidence", generator=None, eot_id=None):
    """DAEDAL (see the module docstring). prompts: as for sampler.make_canvas. eot_id: the
    tokenizer's end-of-text (default: the id just below the mask token, as in mini_dlm's tokenizer).
    Returns x (B, Pmax + max length), left-padded and right-padded with end-of-text, and stats
    {"forward_passes", "length_passes" (stage 1), "insertions", "lengths" (B,) final canvas
    length of each row, "pad" (B,)}."""
    check_dynamic(model, init_len, max_len, grow, tail, eot_threshold, low_threshold, insert, threshold, remasking)
    x, pad = make_canvas(prompts, max_len, model)  # checks that prompt + max_len fits the context
    P, M = x.shape[1] - max_len, model.config.mask_id
    eot = M - 1 if eot_id is None else eot_id
    g = torch.full((x.shape[0],), init_len, dtype=torch.long, device=x.device)  # (B,) each row's region length
    x = resize(x, P, g, g, M, eot)
    B = x.shape[0]

    # -- 1. length: grow until the tail is confidently end-of-text
    settled, passes = torch.zeros(B, dtype=torch.bool, device=x.device), 0
    while True:
        logits = forward_region(model, x, pad, P, g)  # (B, G, V)
        passes += 1
        p_eot = logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(dim=-1)[..., eot]  # (B, G)
        last = g[:, None] - tail + torch.arange(tail, device=x.device)  # (B, tail): the last min(tail, g) count
        inside = (last >= 0).to(p_eot.dtype)
        tail_eot = (p_eot.gather(1, last.clamp(min=0)) * inside).sum(dim=1) / inside.sum(dim=1)  # (B,)
        grows = ~settled & (tail_eot < eot_threshold) & (g < max_len)
        settled |= ~grows
        if not grows.any():
            break
        g_new = torch.where(grows, (g + grow).clamp(max=max_len), g)
        x, g = resize(x, P, g, g_new, M, eot), g_new
    length_passes, insertions = passes, 0

    # -- 2. denoise, inserting masks where the model is lost
    mode = {"banned": [M], "kind": remasking, "temperature": temperature}
    rows = torch.arange(B, device=x.device)  # the first pass reuses stage 1's logits, over every row
    while True:
        G = int(g[rows].max())
        region = x[rows, P:P + G]  # (b, G) a copy, written back below
        eligible = region == M
        if remasking == "random":
            mode["scores"] = torch.rand(eligible.shape, dtype=torch.float64, device=x.device, generator=generator)
        if temperature > 0:
            mode["seed"] = draw_seed(generator)
        if low_threshold is not None:  # where is each row least sure, before this pass commits?
            lg = logits.flatten(0, 1).clone()
            lg[:, M] = float("-inf")  # the guess unmask could commit: never the mask token
            c = confidence(lg, lg.argmax(dim=-1), "low_confidence").view(eligible.shape)
            c_min, j_min = c.masked_fill(~eligible, float("inf")).min(dim=1)  # (b,)
            lost = (c_min < low_threshold) & (g[rows] + insert - 1 <= max_len)
        if threshold is None:
            unmask(logits, region, eligible, k=torch.ones(len(rows), dtype=torch.long, device=x.device), **mode)
        else:
            unmask(logits, region, eligible, tau=threshold, **mode)
        x[rows, P:P + G] = region
        if low_threshold is not None and lost.any():
            x, g, n = insert_masks(x, P, g, rows[lost], j_min[lost], insert, M, eot)
            insertions += n
        done = ~(x[:, P:] == M).any(dim=1)
        rows = (~done).nonzero().squeeze(1)
        if len(rows) == 0:
            break
        xr = x[rows, :P + int(g[rows].max())]
        logits = forward_region(model, xr, pad[rows], P, g[rows])
        passes += 1
    return x, {"forward_passes": passes, "length_passes": length_passes, "insertions": insertions,
               "lengths": g, "pad": pad}
