"""Pre-load model checks: the damaged corpus is refused (in a child process), good
models pass, chat templates are refused before llama.cpp could render them."""

from __future__ import annotations

import os

import pytest

from vx11d.hermes import check
from vx11d.hermes.testmodel import write_corpus, write_model


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return write_model(str(tmp_path_factory.mktemp("m") / "good.gguf"))


def test_good_model_passes(good):
    r = check.inspect_model(good)
    assert r.ok, r.reason
    assert r.info["architecture"] == "llama" and r.info["scanned"] > 0


def test_sha256_pin(good):
    assert check.inspect_model(good, sha256=check._sha256(good)).ok
    r = check.inspect_model(good, sha256="0" * 64)
    assert not r.ok and "sha256 mismatch" in r.reason


def test_size_bound(good):
    r = check.inspect_model(good, max_size=4096)
    assert not r.ok and "above max_model_size" in r.reason


def test_damaged_corpus_is_refused_with_a_reason(tmp_path):
    paths = write_corpus(str(tmp_path))
    assert len(paths) >= 20
    for p in paths:
        r = check.inspect_model(p)
        assert not r.ok, os.path.basename(p)
        assert r.reason and "Traceback" not in r.reason
    reasons = {os.path.basename(p): check.inspect_model(p).reason for p in paths
               if "nan" in p or "inf" in p or "template" in p or "version" in p}
    assert "NaN or Inf" in reasons["nan_weights.gguf"]
    assert "NaN or Inf" in reasons["inf_weights.gguf"]
    assert "template injection" in reasons["template_injection_mro.gguf"]
    assert "version 99" in reasons["version_99.gguf"]


def test_missing_file_and_a_crashing_checker_are_refusals(tmp_path, monkeypatch):
    assert "No such file" in check.inspect_model(str(tmp_path / "none.gguf")).reason
    # a checker that blows its memory limit is a refusal, not a worker crash
    r = check.inspect_model(write_model(str(tmp_path / "m.gguf")), mem_limit=64 * 1024**2)
    assert not r.ok and r.reason


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__ }}",
    "{{ messages|attr('__class__') }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ ''['__cl' ~ 'ass__'] }}",
])
def test_injection_templates_are_refused(template):
    with pytest.raises(check.Refused):
        check.check_template(template)


def test_sandbox_refuses_what_the_pattern_misses():
    # no dunder in the text, but mutating a list is refused by the immutable sandbox
    with pytest.raises(check.Refused, match="sandbox"):
        check.check_template("{{ messages.append(1) }}")
    with pytest.raises(check.Refused, match="sandbox"):
        check.check_template("{% for m in messages %}{{ m.content }")


def test_ordinary_chatml_template_passes():
    check.check_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                         "{{ m['content'] }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
