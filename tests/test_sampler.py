"""LLaDA reverse process and AR decoding.  python -m pytest -q tests/test_sampler.py

The oracle below is an independent, deliberately naive transcription of the algorithm in
LLaDA's reference generate(): a Python loop per row, the transfer schedule built element by
element, confidences from a softmax over the whole canvas, -inf after the block end, then the k
best positions (ties: lowest position). The softmax is float64 here, as in mini_dlm; LLaDA's
code takes it in the logits' dtype, which orders confidences the same unless they tie or round
together there (notes/appendix-spec.md section 3). The vectorised sampler must match it token for
token at temperature 0. Its end-of-text switches are checked on a model built to propose
end-of-text, confidently, at every other position."""

import pytest
import torch

from conftest import record, tiny_model
from mini_dlm.ops import descending_rank
from mini_dlm.plumbing.checks import check_schedule
from mini_dlm.sampler import Decoding, finish, generate, generate_ar, num_transfer_tokens


def llada_oracle(model, prompt, steps, gen_length, block_length, mask_id):
    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, :prompt.shape[1]] = prompt
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    for nb in range(num_blocks):
        start = prompt.shape[1] + nb * block_length
        end = start + block_length
        schedule = []
        for row in range(x.shape[0]):
            n = int((x[row, start:end] == mask_id).sum())
            schedule.append([n // steps_per_block + (1 if i < n % steps_per_block else 0) for i in range(steps_per_block)])
        for i in range(steps_per_block):
            logits = model(x)
            x0 = logits.argmax(-1)
            prob = torch.softmax(logits.double(), dim=-1)
            for row in range(x.shape[0]):
                conf = []
                for j in range(x.shape[1]):
                    if x[row, j] == mask_id and j < end:
                        conf.append((-prob[row, j, x0[row, j]].item(), j))
                chosen = [j for _, j in sorted(conf)[:schedule[row][i]]]
                for j in chosen:
                    x[row, j] = x0[row, j]
    return x


@pytest.mark.parametrize("gen_len, steps, block_len", [(24, 24, 8), (24, 6, 8), (20, 6, 10), (16, 4, 16)])
def test_matches_llada_reference_at_temperature_zero(gen_len, steps, block_len):
    model = tiny_model(seed=gen_len + steps)
    prompt = torch.randint(0, 63, (3, 7), generator=torch.Generator().manual_seed(steps))
    with torch.no_grad():
        expected = llada_oracle(model, prompt, steps, gen_len, block_len, model.config.mask_id)
    x, stats = finish(generate(model, prompt, Decoding(steps=steps, block_len=block_len), gen_len=gen_len))
    assert torch.equal(x, expected)
    assert stats["forward_passes"] == steps


def test_ties_commit_lowest_position_first():
    model = tiny_model()
    torch.nn.init.zeros_(model.lm_head.weight)  # every logit 0: all confidences tie
    seen = []
    for step in generate(model, [5, 6], Decoding(steps=4, block_len=8), gen_len=8):
        seen.append(step.committed[0].nonzero().flatten().tolist())
    assert seen == [[2, 3], [4, 5], [6, 7], [8, 9]]


@pytest.mark.parametrize("remasking, temperature", [("low_confidence", 0.0), ("low_confidence", 1.0), ("random", 0.7)])
def test_invariants(remasking, temperature):
    model = tiny_model(seed=5)
    M, P, gen_len, block_len, steps = model.config.mask_id, 5, 30, 10, 9
    prompt = torch.randint(0, 63, (4, P), generator=torch.Generator().manual_seed(1))
    history = []

    opts = Decoding(steps=steps, block_len=block_len, temperature=temperature, remasking=remasking)
    x, stats = finish(record(generate(model, prompt, opts, gen_len, torch.Generator().manual_seed(0)), history))
    assert torch.equal(x[:, :P], prompt)  # prompt untouched
    assert not (x == M).any()  # no mask left
    assert stats["forward_passes"] == steps == len(history)
    # per-step transfer counts follow LLaDA's schedule: 10 masks over 3 steps -> 4, 3, 3
    assert stats["transfers"].tolist() == [[4] * 4, [3] * 4, [3] * 4] * 3
    prev = torch.cat([prompt, torch.full((4, gen_len), M)], dim=1)
    for step, b, x_s, committed in history:
        lo, hi = P + b * block_len, P + (b + 1) * block_len
        assert b == (step - 1) // 3  # blocks in order, 3 steps each
        assert not committed[:, :lo].any() and not committed[:, hi:].any()  # only the current block
        assert (prev[committed] == M).all()  # only masks are committed ...
        assert torch.equal(x_s[~committed], prev[~committed])  # ... and nothing else changes
        assert (x_s[:, hi:] == M).all()  # later blocks still fully masked
        if step % 3 == 0:
            assert not (x_s[:, lo:hi] == M).any()  # block finished within its steps
        prev = x_s


def test_temperature_sampling_is_seeded():
    model = tiny_model(seed=2)
    run = lambda seed: finish(generate(model, [1, 2, 3], Decoding(steps=16, block_len=8, temperature=1.0), gen_len=16,
                                       generator=torch.Generator().manual_seed(seed)))[0]
    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_mask_token_never_emitted_even_if_the_model_favours_it():
    model = tiny_model()
    with torch.no_grad():
        model.lm_head.weight[model.config.mask_id] = 100.0  # the raw logit of M would win everywhere
    x, _ = finish(generate(model, [1, 2], Decoding(steps=8, block_len=8), gen_len=8))
    assert not (x == model.config.mask_id).any()


def test_num_transfer_tokens_and_rank():
    assert num_transfer_tokens(torch.tensor([10, 3, 0]), 4).tolist() == [[3, 3, 2, 2], [1, 1, 1, 0], [0, 0, 0, 0]]
    c = torch.tensor([[0.1, 0.9, 0.9, float("-inf")], [0.5, 0.5, 0.5, 0.5]])
    assert descending_rank(c).tolist() == [[2, 0, 1, 3], [0, 1, 2, 3]]


class ProposesEndOfText(torch.nn.Module):
    """A tiny model whose logits get +20 on end-of-text at even positions: its guess there is
    end-of-text, with a confidence near 1, far above the others'."""

    def __init__(self, model, eot):
        super().__init__()
        self.inner, self.config, self.eot = model, model.config, eot

    def forward(self, idx, attn_mask=None, pos=None, cache=None, only=None):
        logits = self.inner(idx, attn_mask, pos, cache, only)  # (B, T', V): the positions of `only`
        p = pos if only is None else pos[:, only]  # (B, T')
        logits[..., self.eot] += 20.0 * (p % 2 == 0)
        return logits


RULES = [{}, {"threshold": 0.5}, {"factor": 1.0}, {"factor": 1.0, "factor_rule": "strict"}]


@pytest.mark.parametrize("rule", RULES)
def test_logits_eos_inf_never_commits_end_of_text(rule):
    model = ProposesEndOfText(tiny_model(seed=3), eot=62)
    prompts = [[1, 2, 3, 4], [5, 6, 7, 8]]  # unpadded: position = column
    run = lambda **kw: finish(generate(model, prompts, Decoding(block_len=8, **rule, **kw), 16))[0][:, 4:]  # noqa: E731
    assert (run() == 62).sum() >= 8  # every even position, at least
    assert not (run(logits_eos_inf=True) == 62).any()


@pytest.mark.parametrize("rule", RULES)
def test_confidence_eos_eot_inf_commits_end_of_text_last_in_each_block(rule):
    """Each row's end-of-text guesses (the even positions) commit only after every other
    position of the block; without the switch, they, the surest guesses, go first."""
    model = ProposesEndOfText(tiny_model(seed=3), eot=62)
    prompts, block_len = [[1, 2, 3, 4], [5, 6, 7, 8]], 8

    def commit_steps(**kw):
        """-> (B, 16) the step at which each generated position was committed, and the tokens."""
        history = []
        x, _ = finish(record(generate(model, prompts, Decoding(block_len=block_len, **rule, **kw), 16), history))
        when = torch.stack([n * committed[:, 4:] for n, _, _, committed in history]).sum(dim=0)
        return when, x[:, 4:]

    when, x = commit_steps(confidence_eos_eot_inf=True)
    assert (x[:, 0::2] == 62).all() and not (x[:, 1::2] == 62).any()  # the guesses stayed what they are
    for blk in range(2):
        w = when[:, blk * block_len:(blk + 1) * block_len]  # (B, 8)
        assert (w[:, 1::2].max(dim=1).values <= w[:, 0::2].min(dim=1).values).all()  # the others first
        if not rule:  # one token per step: strictly after
            assert (w[:, 1::2].max(dim=1).values < w[:, 0::2].min(dim=1).values).all()
    when, _ = commit_steps()
    assert (when[:, 0::2].min(dim=1).values < when[:, 1::2].min(dim=1).values).all()  # the test can tell


def test_ar_generation_is_greedy_next_token():
    model = tiny_model("ar", seed=4)
    x, stats = finish(generate_ar(model, [[1, 2, 3], [4, 5, 6]], gen_len=6))
    assert stats["forward_passes"] == 6 and x.shape == (2, 9)
    with torch.no_grad():
        for j in range(3, 9):  # each token is the argmax given everything before it
            assert torch.equal(x[:, j], model(x[:, :j])[:, -1].argmax(-1))


@pytest.mark.parametrize("gen_len, steps, block_len, msg", [
    (30, 30, 8, "not divisible"), (32, 6, 8, "multiple"), (16, 32, 8, "larger"), (0, 4, 4, "positive")])
def test_bad_schedule(gen_len, steps, block_len, msg):
    with pytest.raises(ValueError, match=msg):
        check_schedule(gen_len, steps, block_len)


def test_prompt_with_mask_token_is_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="mask token"):
        finish(generate(model, [1, model.config.mask_id, 2], Decoding(steps=8, block_len=8), gen_len=8))


def test_prompt_longer_than_context():
    model = tiny_model(seq_len=48)
    with pytest.raises(ValueError, match="context"):
        finish(generate(model, list(range(40)), Decoding(steps=16, block_len=16), gen_len=16))
    with pytest.raises(ValueError, match="context"):
        finish(generate_ar(tiny_model("ar", seq_len=48), list(range(40)), gen_len=16))
