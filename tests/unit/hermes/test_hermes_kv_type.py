"""hermes.kv_cache_type auto: q8_0 for a model whose attention heads are whole q8_0
blocks (32 wide), else f16, which llama.cpp can always make."""

from __future__ import annotations

import pytest

from vx11d import config
from vx11d.hermes.engine import kv_cache_type

SMOLLM2 = {"general.architecture": "llama", "llama.embedding_length": "576",
           "llama.attention.head_count": "9", "llama.attention.head_count_kv": "3"}
TINY = {"general.architecture": "llama", "llama.embedding_length": "64",
        "llama.attention.head_count": "4"}  # 16-wide heads: the tests' generated models


def hermes(text: str = "") -> config.HermesConfig:
    return config.parse(f"hermes: {{{text}}}" if text else "", "vx11.yml").hermes


@pytest.mark.parametrize(("cfg", "meta", "kv"), [
    ("", SMOLLM2, "q8_0"),
    ("", TINY, "f16"),
    ("", {**TINY, "llama.attention.key_length": "64", "llama.attention.value_length": "64"},
     "q8_0"),
    ("", {**SMOLLM2, "llama.attention.value_length": "48"}, "f16"),
    ("", {"general.architecture": "llama"}, "f16"),  # no shape: the safe one
    ("flash_attn: false", SMOLLM2, "f16"),
    ("kv_cache_type: f16", SMOLLM2, "f16"),
    ("kv_cache_type: q8_0", TINY, "q8_0"),  # asked for: llama.cpp's refusal says why
])
def test_auto_follows_the_models_head_width(cfg, meta, kv):
    assert kv_cache_type(hermes(cfg), meta) == kv
