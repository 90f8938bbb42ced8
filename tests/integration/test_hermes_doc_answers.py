"""docs/switch-hermes-runtime.md shows what the default model really answers: the table
of questions and answers on that page, asked through a real Hermes worker at
temperature 0. Regression: the page promised "The capital of France is Paris." for a
question the model answers otherwise."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.hermes_support import WorkerProc
from vx11d.ctl.modelfetch import DEFAULT

DOC = Path(__file__).resolve().parents[2] / "docs" / "switch-hermes-runtime.md"


def documented() -> list[tuple[str, str]]:
    """The rows of the page's asked/answered table."""
    text = DOC.read_text()
    m = re.search(r"^\| asked \| answered \|\n\|---\|---\|\n((?:\|.*\n)+)", text, re.M)
    assert m, "docs/switch-hermes-runtime.md has no asked/answered table"
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")]
            for ln in m.group(1).splitlines()]
    return [(q, a) for q, a in rows]


@pytest.fixture(scope="module")
def worker(tmp_path_factory, real_model):
    w = WorkerProc(str(tmp_path_factory.mktemp("hermes-doc")), real_model,
                   model_sha256=DEFAULT.sha256, n_ctx=2048, n_threads=2, max_tokens=64)
    yield w
    assert w.stop() == 0, w.output()


@pytest.mark.parametrize(("question", "answer"), documented())
def test_the_page_shows_what_the_model_answers(worker, question, answer):
    status, body = worker.chat(question, timeout=300, temperature=0, max_tokens=64)
    assert status == 200, body
    said = body["choices"][0]["message"]["content"]
    if answer.endswith("(until `max_tokens`)"):  # a ramble: the page quotes its start
        start = answer.split(" …")[0]
        assert said.startswith(start), said
        assert body["choices"][0]["finish_reason"] == "length", body
    else:
        assert said == answer, said
