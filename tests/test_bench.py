"""The efficiency study's parts: the cost model (bench/roofline.py), the quality figures
(bench/quality.py) and bench/efficiency.py end to end on tiny checkpoints.

    python -m pytest -q tests/test_bench.py
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from conftest import tiny_model
from mini_dlm.plumbing import backend
from mini_dlm.kvcache import KVCache
from mini_dlm.model import ModelConfig
from mini_dlm.sampler import Decoding, finish, generate, generate_ar

from bench import efficiency
from bench.quality import distinct3, generative_nll
from bench.roofline import analytic_log, count_forwards, crossover_closed_form, forward_cost


def counted_flops(fn):
    """FLOPs of the matmuls and attention torch itself runs inside fn (an independent count).
    SDPA runs as its math decomposition, whose matmuls the counter sees on any device."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("objective,only", [("mdm", None), ("mdm", slice(4, 12)), ("ar", slice(15, 16))])
def test_forward_cost_flops_match_torchs_count(objective, only):
    model = tiny_model(objective, seq_len=32)
    x = torch.randint(0, 60, (3, 16))
    with count_forwards(model) as log:
        n = counted_flops(lambda: model(x, only=only))
    assert log.total_flops == n and len(log.flops) == 1


def test_forward_cost_counts_cached_keys():
    """A dual-cache pass: 8 new positions see 8 prefix + 8 own + 16 suffix keys. The reference
    attention computes over exactly those keys when the prefix is full, so torch's count agrees."""
    model = tiny_model("mdm", seq_len=32)
    x = torch.randint(0, 60, (2, 32))
    kv = KVCache(model.config.n_layer, torch.zeros(2, dtype=torch.long), 8, suffix_from=16)
    model(x, cache=kv)  # records the prefix and the suffix
    kv.start_reading()
    backend.set_backend("torch")
    try:
        with count_forwards(model) as log:
            n = counted_flops(lambda: model(x[:, 8:16], pos=torch.arange(8, 16), cache=kv))
    finally:
        backend.set_backend("auto")
    assert log.total_flops == n
    f, w, r = forward_cost(model.config, 2, 8, 2 * 32, 8, False, 4)
    C, layers = model.config.n_embd, model.config.n_layer
    assert r == (2 * C * layers * 2 * 24 + 2 * 8 * model.config.vocab_size) * 4  # cached K/V read + logits


def test_count_forwards_logs_every_pass_of_a_generation():
    model = tiny_model("mdm", seq_len=48)
    with count_forwards(model) as log:
        _, stats = finish(generate(model, [[1, 2, 3], [4, 5]], Decoding(block_len=8, threshold=0.5, cache="dual"), gen_len=16))
    assert len(log.flops) == stats["forward_passes"]
    B, L, b = 2, 3 + 16, 8
    full, cached = 2, stats["forward_passes"] - 2  # one full pass per block, the rest over the block
    assert log.positions == B * (full * L + cached * b)


def test_scaled_prediction_matches_a_bigger_batch():
    """predict_seconds(scale=4) of a batch-1 log == the batch-4 log (same prompt in every row)."""
    model = tiny_model("ar", seq_len=48)
    with count_forwards(model) as one:
        finish(generate_ar(model, [[1, 2, 3, 4]], gen_len=12))
    with count_forwards(model) as four:
        finish(generate_ar(model, [[1, 2, 3, 4]] * 4, gen_len=12))
    assert four.total_flops == 4 * one.total_flops
    for peak, bw in ((1e9, 1e12), (1e12, 1e9), (1e10, 1e10)):
        assert math.isclose(one.predict_seconds(peak, bw, 4), four.predict_seconds(peak, bw), rel_tol=0.02)


def test_ar_decode_is_memory_bound_and_no_cache_dlm_compute_bound():
    """notes/appendix-spec.md section 6 in numbers: intensity ~ B*T (in bf16)."""
    cfg = ModelConfig(n_layer=12, n_head=12, n_embd=768, vocab_size=32768, seq_len=1024)
    f, w, r = forward_cost(cfg, 1, 1, 512, 1, True, 2)
    assert 0.5 < f / (w + r) < 2  # AR decode, batch 1: ~1 FLOP per byte
    f, w, r = forward_cost(cfg, 1, 512, 512, 32, False, 2)
    assert f / (w + r) > 200  # a no-cache DLM step over 512 positions: past the H200 ridge


def test_crossover_closed_form():
    assert crossover_closed_form(200, 2, 4.0) == 50  # the spec: ridge / w in bf16
    assert crossover_closed_form(10, 4, 20.0) == 1.0


def test_generative_nll_matches_row_by_row():
    model = tiny_model("ar", seq_len=48).double()
    prompts, gens = [[1, 2, 3], [4, 5], [6]], [[7, 8, 9, 10], [], [11, 12]]
    total, count = 0.0, 0
    for p, g in zip(prompts, gens):
        if g:
            x = torch.tensor([p + g])
            logits = model(x[:, :-1])[0, len(p) - 1:]
            total += F.cross_entropy(logits, torch.tensor(g), reduction="sum").item()
            count += len(g)
    assert math.isclose(generative_nll(model, prompts, gens, batch_size=2), total / count, rel_tol=1e-9)
    assert generative_nll(model, [[1]], [[]]) == 0.0


def test_distinct3():
    assert distinct3([1, 2, 3, 4, 5]) == 1.0
    assert distinct3([1, 2, 1, 2, 1, 2, 1, 2]) == 2 / 6


def bench_args(checkpoints, corpus_file, out, *extra):
    return ["--ar-ckpt", checkpoints["ar"], "--dlm-ckpt", checkpoints["dlm"], "--block-ckpt", checkpoints["block"],
            "--batch-sizes", "1,2", "--gen-lens", "8,16", "--prompt-len", "8", "--block-len", "8", "--repeats", "2",
            "--data", corpus_file, "--device", "cpu", "--out", str(out), *extra]


def test_bench_end_to_end(checkpoints, corpus_file, tmp_path, capsys):
    out = tmp_path / "b.json"
    efficiency.main(bench_args(checkpoints, corpus_file, out))
    printed = capsys.readouterr().out
    assert "check: AR KV cache == no cache, token for token: yes" in printed
    data = json.loads(out.read_text())
    kinds = ["ext", "torch"] if backend.has_kernel("unmask", torch.device("cpu")) else ["torch"]
    recs = data["records"]
    assert len(recs) == len(efficiency.CONFIGS) * len(kinds) * 2 * 2  # configs x ops x gen-lens x batch sizes
    for r in recs:
        for key in ("config", "batch_size", "gen_len", "tokens_per_s", "useful_tokens_per_s", "forward_passes",
                    "gen_ppl", "device"):
            assert key in r
        assert r["tokens_per_s"] == pytest.approx(r["batch_size"] * r["gen_len"] / r["seconds"])
        assert r["useful_tokens_per_s"] <= r["tokens_per_s"] + 1e-9
        assert len(r["runs"]) == 2 and r["seconds"] == pytest.approx(sum(r["runs"]) / 2)  # the median of two
        assert r["gen_ppl"] > 1 and r["flops"] > 0 and r["intensity"] > 0
        if r["config"] == "ar":
            assert r["forward_passes"] == r["gen_len"] and r["positions_per_token"] < 2
        if r["config"] == "dlm":  # steps = gen-len: one token per pass
            assert r["forward_passes"] == r["gen_len"]
    assert {c["config"] for c in data["crossover"]} == set(efficiency.CONFIGS) - {"ar"}
    for suffix in ("_throughput.png", "_roofline.png"):
        png = (tmp_path / f"b{suffix}").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_quick_keeps_the_flags_given(checkpoints, corpus_file, tmp_path):
    """--quick shrinks the grid only where no flag was given: here it sets the batch sizes and
    keeps --gen-lens, --prompt-len and --repeats."""
    out = tmp_path / "q.json"
    efficiency.main(["--quick", "--configs", "ar", "--ops", "torch", "--gen-lens", "8", "--repeats", "2",
                     "--block-len", "8", "--prompt-len", "8",
                     "--ar-ckpt", checkpoints["ar"], "--dlm-ckpt", checkpoints["dlm"], "--block-ckpt", checkpoints["block"],
                     "--data", corpus_file, "--device", "cpu", "--out", str(out), "--no-plots"])
    recs = json.loads(out.read_text())["records"]
    assert [r["batch_size"] for r in recs] == efficiency.QUICK["batch_sizes"]
    assert all(r["gen_len"] == 8 and len(r["runs"]) == 2 and r["prompt_len"] == 8 for r in recs)


@pytest.mark.parametrize("change,message", [
    (("--ar-ckpt", "dlm"), "must be an AR checkpoint"),
    (("--block-ckpt", "dlm"), "is not a block-diffusion checkpoint"),
    (("--gen-lens", "12"), "multiple of"),
    (("--gen-lens", "64"), "shorter than prompt + gen-len"),
    (("--configs", "ar,nope"), "argument --configs: expected one of ar,dlm,"),
    (("--batch-sizes", "1,x"), "argument --batch-sizes: expected a positive integer, got 'x'"),
])
def test_bench_bad_input_is_one_line(checkpoints, corpus_file, tmp_path, capsys, change, message):
    flag, value = change
    args = bench_args(checkpoints, corpus_file, tmp_path / "b.json", flag, checkpoints.get(value, value))
    with pytest.raises(SystemExit) as e:
        efficiency.run(efficiency.main, args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize("config", efficiency.CONFIGS)
def test_analytic_passes_match_a_real_run(config):
    """roofline.passes (the analytical model) == what the sampler runs, pass for pass, when each
    pass commits one token (LLaDA's schedule with steps = gen-len)."""
    model = tiny_model("ar" if config == "ar" else "mdm", seq_len=48, **({"block_size": 8} if config ==
                                                                          "threshold+block" else {}))
    P, G, b = 5, 24, 8
    prompts = [[1, 2, 3, 4, 5]] * 2
    cache = {"threshold+dual": "dual", "threshold+block": "block"}.get(config, "none")
    with count_forwards(model) as log:
        if config == "ar":
            finish(generate_ar(model, prompts, gen_len=G))
        else:
            finish(generate(model, prompts, Decoding(steps=G, block_len=b, cache=cache), gen_len=G))
    predicted = analytic_log(model.config, config, 2, P, G, b, elem=4)
    assert predicted.flops == log.flops and predicted.weight_bytes == log.weight_bytes
    assert predicted.row_bytes == log.row_bytes and predicted.positions == log.positions
