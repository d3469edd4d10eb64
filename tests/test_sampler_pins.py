"""The sampler's outputs, pinned: tokens and forward passes of every decoder, cache and
commit rule on fixed tiny models, recorded from the sampler as it was before its rewrite into
a short generator loop (tests/sampler_pins.json). A change that alters what any configuration
produces fails here. python -m pytest -q tests/test_sampler_pins.py"""

import json
import os

import pytest
import torch

from conftest import spread, tiny_model
from mini_dlm.sampler import Decoding, finish, generate, generate_ar
from mini_dlm.sampling.length import Daedal, generate_dynamic, stop_at

PINS = json.load(open(os.path.join(os.path.dirname(__file__), "sampler_pins.json")))
PROMPTS = [[3, 4, 5], [6, 7]]


def g():
    return torch.Generator().manual_seed(5)


def runs():
    full, blk, ar = spread(tiny_model()), spread(tiny_model(block_size=8, seed=1)), spread(tiny_model("ar", seed=2))

    def diffusion(model, prompts=PROMPTS, gen_len=16, steps=16, generator=None, **kw):
        return lambda: finish(generate(model, prompts, Decoding(steps, 8, **kw), gen_len, generator))

    def daedal(length, generator=None, **kw):
        return lambda: finish(generate_dynamic(full, PROMPTS, Decoding(**kw), length, generator))

    runs = {f"schedule {r}": diffusion(full, remasking=r, generator=g())
            for r in ("low_confidence", "margin", "entropy", "random")}
    runs["schedule 2 per step"] = diffusion(full, steps=8)
    for c in ("none", "prefix", "dual"):
        runs[f"threshold 0.15 {c}"] = diffusion(full, threshold=0.15, cache=c)
        runs[f"factor 4.0 {c}"] = diffusion(full, factor=4.0, factor_rule="strict", cache=c)  # the rule of the pins
    runs["threshold steps cap"] = diffusion(full, steps=4, threshold=0.9)
    runs["temperature 0.7 margin threshold dual"] = diffusion(full, temperature=0.7, remasking="margin", threshold=0.5,
                                                              cache="dual", generator=g())
    for c in ("none", "block"):
        runs[f"block model schedule {c}"] = diffusion(blk, cache=c)
        runs[f"block model threshold 0.15 {c}"] = diffusion(blk, threshold=0.15, cache=c)
    # An empty prompt: every position of the first pass sees the same all-mask canvas, so confidences
    # tie up to rounding, which differs between CPUs; random remasking orders them by the generator.
    runs["block model empty prompt random block cache"] = diffusion(blk, [[]], 24, 24, remasking="random",
                                                                    generator=g(), cache="block")
    runs["block model stop_at"] = lambda: finish(stop_at(  # 54: a token both rows write
        generate(blk, PROMPTS, Decoding(steps=40, block_len=8, threshold=0.2, cache="block"), gen_len=40), 54, 3))
    runs["ar greedy"] = lambda: finish(generate_ar(ar, PROMPTS, gen_len=12))
    runs["ar temperature 0.8"] = lambda: finish(generate_ar(ar, PROMPTS, gen_len=12, temperature=0.8, generator=g()))
    runs["daedal"] = daedal(length=Daedal(init_len=8, max_len=24, grow=8, tail=4, eot_threshold=0.05, low_threshold=0.5,
                                          insert=3), threshold=0.6, eot_id=10)
    runs["daedal one per pass random"] = daedal(length=Daedal(init_len=8, max_len=16, grow=4, tail=4),
                                                threshold=None, remasking="random", generator=g(), eot_id=11)
    return runs


RUNS = runs()


@pytest.mark.parametrize("name", list(PINS))
def test_sampler_output_is_pinned(name):
    x, stats = RUNS[name]()
    assert x.tolist() == PINS[name]["x"]
    assert stats["forward_passes"] == PINS[name]["passes"]
    if "lengths" in PINS[name]:
        assert stats["lengths"].tolist() == PINS[name]["lengths"]
