"""Variable-length generation (DAEDAL, mini_dlm/sampling/length.py).  python -m pytest -q tests/test_dynamic.py"""

import pytest
import torch

import sample
from conftest import tiny_model
from test_cli import fails_cleanly, trained  # noqa: F401 (trained: a fixture)
from mini_dlm.plumbing.checkpoint import save_checkpoint
from mini_dlm.sampling.length import Daedal, forward_region, generate_dynamic, insert_masks, resize
from mini_dlm.model import ModelConfig, Transformer
from mini_dlm.sampler import Decoding, finish, generate, make_canvas
from mini_dlm.sampling.length import stop_at

PROMPTS = [[1, 2, 3], [4, 5], [9, 10, 11, 12, 13], [20], [30, 31]]
EOT, M = 62, 63  # tiny_model: vocabulary 64, M the last id; end-of-text just below it, as in the tokenizer


def daedal(model, prompts, generator=None, threshold=0.9, **kw):
    """generate_dynamic run to the end, DAEDAL's knobs and the Decoding's given as keywords."""
    knobs = {name: kw.pop(name) for name in vars(Daedal()) if name in kw}
    return finish(generate_dynamic(model, prompts, Decoding(threshold=threshold, **kw), Daedal(**knobs), generator))


@pytest.fixture(scope="module")
def model():
    return tiny_model("mdm", seq_len=48).double()  # float64: batched and alone agree to the last bit


def split_point(conf):
    """A threshold between the rows' tail confidences: about half of the rows fall below it."""
    c = conf.sort().values
    return float(c[len(c) // 2 - 1] + c[len(c) // 2]) / 2


def tail_eot(model, prompts, init_len, tail=8):
    """What stage 1 reads on the first canvas: each row's mean end-of-text probability over its
    last `tail` positions."""
    x, pad = make_canvas(prompts, init_len, model)
    g = torch.full((len(prompts),), init_len)
    with torch.no_grad():
        p = forward_region(model, x, pad, x.shape[1] - init_len, g).softmax(dim=-1)[..., EOT]
    return p[:, -tail:].mean(dim=1)


@pytest.mark.parametrize("init_len,grow,max_len", [(8, 8, 32), (8, 10, 25), (16, 16, 16)])
def test_growth_until_confident_or_max_len(model, init_len, grow, max_len):
    kw = dict(init_len=init_len, grow=grow, max_len=max_len, threshold=None, eot_id=EOT)
    x, st = daedal(model, PROMPTS, eot_threshold=1.0, **kw)  # never confident: grows to max-len
    steps = -(-(max_len - init_len) // grow)
    assert st["lengths"].tolist() == [max_len] * len(PROMPTS) and st["length_passes"] == 1 + steps
    assert st["forward_passes"] == st["length_passes"] - 1 + max_len  # then one token per pass
    x, st = daedal(model, PROMPTS, eot_threshold=0.0, **kw)  # always confident: no growth
    assert st["lengths"].tolist() == [init_len] * len(PROMPTS) and st["length_passes"] == 1
    assert x.shape[1] == max(map(len, PROMPTS)) + init_len


def test_only_unconfident_rows_grow(model):
    conf = tail_eot(model, PROMPTS, 8)
    tau = split_point(conf)
    x, st = daedal(model, PROMPTS, init_len=8, max_len=32, grow=8, eot_threshold=tau, threshold=None,
                             eot_id=EOT)
    assert st["lengths"][conf >= tau].eq(8).all() and st["lengths"][conf < tau].gt(8).all()


def test_batched_rows_compute_what_they_would_alone(model):
    tau = split_point(tail_eot(model, PROMPTS, 8))
    kw = dict(init_len=8, max_len=32, grow=8, eot_threshold=tau, low_threshold=0.02, insert=3, threshold=0.3,
              eot_id=EOT)
    x, st = daedal(model, PROMPTS, **kw)
    assert len(set(st["lengths"].tolist())) > 1  # rows of different lengths in one batch
    P = x.shape[1] - int(st["lengths"].max())
    for r, p in enumerate(PROMPTS):
        xa, sa = daedal(model, [p], **kw)
        n = int(sa["lengths"][0])
        assert n == st["lengths"][r]
        assert torch.equal(x[r, P - len(p):P + n], xa[0, :len(p) + n])
        assert (x[r, P + n:] == EOT).all()  # right padding


def test_finished_rows_leave_the_batch(model):
    tau = split_point(tail_eot(model, PROMPTS, 8))
    widths = []
    handle = model.register_forward_pre_hook(lambda mod, args: widths.append(args[0].shape[0]))
    try:
        _, st = daedal(model, PROMPTS, init_len=8, max_len=32, grow=8, eot_threshold=tau, threshold=None,
                                 eot_id=EOT)
    finally:
        handle.remove()
    assert widths[0] == len(PROMPTS) and widths[-1] == int((st["lengths"] == st["lengths"].max()).sum())
    assert widths[-1] < len(PROMPTS) and len(widths) == st["forward_passes"]


def test_inserted_masks_are_filled(model):
    x, st = daedal(model, PROMPTS, init_len=8, max_len=30, grow=8, eot_threshold=0.0, low_threshold=1.0,
                             insert=4, threshold=0.5, eot_id=EOT)
    assert st["insertions"] > 0 and (st["lengths"] > 8).all() and (st["lengths"] <= 30).all()
    assert not (x == M).any()


@pytest.mark.parametrize("kind", ["low_confidence", "margin", "entropy", "random"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("threshold", [None, 0.2, 0.9])
def test_output_never_contains_a_mask(model, kind, temperature, threshold):
    g = torch.Generator().manual_seed(0)
    x, st = daedal(model, PROMPTS, init_len=4, max_len=24, grow=4, eot_threshold=0.016, low_threshold=0.03,
                             insert=2, threshold=threshold, temperature=temperature, remasking=kind, generator=g,
                             eot_id=EOT)
    assert not (x == M).any() and (st["lengths"] <= 24).all()


def test_resize_and_insert_masks():
    P, E = 2, EOT
    x = torch.tensor([[7, 8, 1, M, 2, E], [7, 8, 3, 4, E, E]])
    g = torch.tensor([3, 2])
    assert torch.equal(resize(x, P, g, torch.tensor([3, 3]), M, E), torch.tensor([[7, 8, 1, M, 2], [7, 8, 3, 4, M]]))
    assert torch.equal(resize(x, P, g, torch.tensor([2, 1]), M, E), torch.tensor([[7, 8, 1, M], [7, 8, 3, E]]))
    y, g2, n = insert_masks(x[:, :5], P, g, torch.tensor([0, 1]), torch.tensor([1, 0]), 3, M, E)
    assert n == 1 and g2.tolist() == [5, 2]  # row 1's position 0 is not a mask: untouched
    assert y.tolist() == [[7, 8, 1, M, M, M, 2], [7, 8, 3, 4, E, E, E]]


@pytest.mark.parametrize("kw,match", [
    (dict(init_len=0), "must be positive"), (dict(insert=1), "at least 2"), (dict(max_len=4, init_len=8), "shorter"),
    (dict(eot_threshold=1.5), "probabilities"), (dict(max_len=60), "exceeds the model's context"),
    (dict(threshold=0.0), "--threshold must be > 0"),
])
def test_bad_options(model, kw, match):
    with pytest.raises(ValueError, match=match):
        daedal(model, PROMPTS, **kw)


def test_block_models_are_refused():
    with pytest.raises(ValueError, match="full-attention"):
        daedal(tiny_model("mdm", seq_len=48, block_size=8), PROMPTS)


def test_sample_gen_len_auto(trained, capsys):
    ckpt = f"{trained}/ckpt.pt"
    sample.main(["--ckpt", ckpt, "--device", "cpu", "--gen-len", "auto", "--init-len", "4", "--max-len", "12",
                 "--grow", "4", "--tail", "2", "--eot-threshold", "1.0", "--threshold", "0.5", "--prompt", "ROMEO:",
                 "--prompt", "KING:"])
    out = capsys.readouterr().out
    assert "--- canvas lengths [12, 12] (3 passes to size them, 0 insertions)" in out
    assert out.count("--- sample") == 2 and "░" not in out


@pytest.mark.parametrize("argv,match", [
    (["--gen-len", "auto", "--cache", "dual"], "--gen-len auto works with"),
    (["--gen-len", "auto", "--show-steps"], "--gen-len auto works with"),
    (["--gen-len", "sometimes"], "expected a positive integer or 'auto'"),
    (["--gen-len", "auto", "--max-len", "200"], "exceeds the model's context"),
])
def test_sample_gen_len_auto_bad_input(trained, capsys, argv, match):
    fails_cleanly(sample.main, ["--ckpt", f"{trained}/ckpt.pt", "--device", "cpu", *argv], capsys, match)


@pytest.mark.parametrize("block_size,cache", [(8, "block"), (8, "none"), (0, "dual"), (0, "prefix"), (0, "none")])
def test_stop_at_is_exact_and_stops_early(block_size, cache):
    """stop_at(generate(), id) returns the full run's canvas up to the first block after which
    every row holds id, with fewer passes (block diffusion: growth block by block)."""
    m = tiny_model("mdm", seq_len=48, block_size=block_size).double()
    prompts = [[1, 2, 3], [1, 2, 3]]
    opts = Decoding(steps=32, block_len=8, threshold=0.5, cache=cache)
    x, st = finish(generate(m, prompts, opts, gen_len=32))
    P = 3
    stop = int(x[0, P])  # a token both rows write in their first block (same prompt, same model)
    y, st2 = finish(stop_at(generate(m, prompts, opts, gen_len=32), stop, P))
    assert torch.equal(y, x[:, :P + 8]) and st2["forward_passes"] < st["forward_passes"]
    z, _ = finish(stop_at(generate(m, prompts, opts, gen_len=32), M - 1 if stop != M - 1 else 0, P))
    if not (x[:, P:] == (M - 1 if stop != M - 1 else 0)).any(dim=1).all():
        assert torch.equal(z, x)  # never every row: the whole canvas


def test_sample_gen_len_auto_on_a_block_model(tokenizer, tmp_path, capsys):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id, seq_len=32, n_layer=1, n_head=2,
                      n_embd=32, block_size=8)
    save_checkpoint(str(tmp_path / "b.pt"), Transformer(cfg).eval(), tokenizer, 0)
    sample.main(["--ckpt", str(tmp_path / "b.pt"), "--device", "cpu", "--gen-len", "auto", "--threshold", "0.9",
                 "--cache", "block", "--max-len", "20"])
    out = capsys.readouterr().out
    assert "(grown block by block until every row ended)" in out and "--- canvas lengths [" in out
    n = int(out.split("--- canvas lengths [")[1].split("]")[0])
    assert n % 8 == 0 and 8 <= n <= 16  # whole blocks, at most --max-len rounded down to whole blocks
