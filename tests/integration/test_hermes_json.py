"""JSON mode on the real default model through the gateway with the official ``openai``
SDK: ``json_object`` and ``json_schema``, streaming and not, always valid JSON (the
grammar constrains every token); a schema llama.cpp cannot use is a 400 naming
``response_format``, and the worker goes on answering."""

from __future__ import annotations

import json

import openai
import pytest
from prometheus_client import CollectorRegistry

from tests.hermes_support import TOKEN, AppThread, WorkerProc
from vx11d import config
from vx11d.ctl.modelfetch import DEFAULT
from vx11d.db import Database
from vx11d.gateway.app import build_app
from vx11d.gateway.context import GatewayContext
from vx11d.hijas import activate

PERSON = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer"},
    "languages": {"type": "array", "items": {"type": "string"}, "maxItems": 3}},
    "required": ["name", "age", "languages"], "additionalProperties": False}
# (a 135M model: asked for anything open-ended it lists items until max_tokens, which
# the grammar keeps valid but unfinished; these questions it finishes)
ASK = [{"role": "user", "content": "Describe a programmer called Ada, 36, who knows two "
                                   "languages, as JSON."}]
CITY = [{"role": "user", "content": "Give the capital of France as a JSON object with the "
                                    "keys city and country."}]


@pytest.fixture(scope="module")
def client(tmp_path_factory, real_model):
    w = WorkerProc(str(tmp_path_factory.mktemp("hermes-json")), real_model,
                   model_sha256=DEFAULT.sha256, n_ctx=2048, n_threads=2, max_tokens=256,
                   parallel=2)
    d = tmp_path_factory.mktemp("gw")
    dbpath = str(d / "vx11.db")
    Database(dbpath, migrate=True).close()
    cfg = config.parse(json.dumps({"db": {"path": dbpath}, "hermes": {
        "socket": w.socket, "model_path": w.model_path, "max_tokens": 200}}), "gw.yml")
    ctx = GatewayContext(cfg=cfg, db=Database(dbpath), registry=CollectorRegistry())
    activate(ctx.db, ctx.cfg, "hermes", 3600, "test")
    gw = AppThread(lambda: build_app(ctx, TOKEN, modules=["vx11d.gateway.chain"]))
    try:
        yield openai.OpenAI(base_url=gw.url + "/v1", api_key=TOKEN, max_retries=0,
                            timeout=120)
    finally:
        gw.close()
        assert w.stop() == 0, w.output()


def _check_person(obj) -> None:
    assert set(obj) == {"name", "age", "languages"}, obj
    assert isinstance(obj["name"], str) and isinstance(obj["age"], int)
    assert isinstance(obj["languages"], list)
    assert all(isinstance(x, str) for x in obj["languages"])


SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "strict": True,
                                                        "schema": PERSON}}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("fmt", ["json_object", "json_schema"])
def test_json_mode_answers_parse_every_time(client, fmt, stream):
    response_format = {"type": "json_object"} if fmt == "json_object" else SCHEMA_FORMAT
    for temperature, seed in ((0, 1), (1.0, 7), (1.0, 8)):
        kw = dict(model="hermes", messages=CITY if fmt == "json_object" else ASK,
                  temperature=temperature, seed=seed, response_format=response_format,
                  max_tokens=200)
        if stream:
            chunks = list(client.chat.completions.create(stream=True, **kw))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = [c.choices[0].finish_reason for c in chunks
                      if c.choices and c.choices[0].finish_reason]
            assert finish == ["stop"], finish
            assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 3
        else:
            r = client.chat.completions.create(**kw)
            text = r.choices[0].message.content
            assert r.choices[0].finish_reason == "stop", text
        obj = json.loads(text)
        assert isinstance(obj, dict), text
        if fmt == "json_schema":
            _check_person(obj)


def test_a_schema_llama_cpp_cannot_use_is_a_400_and_the_worker_goes_on(client):
    for schema in ({"type": "frobnicate"}, {"$ref": "https://example.com/s.json"},
                   {"type": "string", "pattern": "(unanchored"}):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="hermes", messages=ASK, response_format={
                "type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
        assert e.value.param == "response_format" and e.value.code == "invalid_schema"
        assert "schema" in e.value.message
    r = client.chat.completions.create(model="hermes", messages=ASK, temperature=0,
                                       response_format=SCHEMA_FORMAT)
    _check_person(json.loads(r.choices[0].message.content))


def test_a_grammar_llama_cpp_refuses_is_a_chat_error_not_a_crash(real_model):
    """llama.cpp's own GBNF parser returns NULL (nothing raised): a 400, never a NULL
    sampler in the chain."""
    from llama_cpp import Llama

    from vx11d.chatapi import ChatError
    from vx11d.hermes.prompt import grammar_sampler

    llm = Llama(model_path=real_model, vocab_only=True, verbose=False)
    try:
        with pytest.raises(ChatError) as e:
            grammar_sampler(llm, 'root ::= ( "a" ')
        assert e.value.status == 400 and e.value.param == "response_format"
    finally:
        llm.close()
