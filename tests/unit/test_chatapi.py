"""The one chat-body parser the gateway and Hermes share: what it accepts, what it
refuses (400 naming the parameter), and OpenAI's error shape."""

from __future__ import annotations

import pytest

from vx11d.chatapi import ChatError, error_body, parse_chat

MSG = [{"role": "user", "content": "hi"}]


def test_honoured_parameters_become_llama_kwargs():
    r = parse_chat({"model": "hermes", "messages": MSG, "max_tokens": 9, "temperature": 0,
                    "top_p": 0.5, "stop": "x", "seed": 2**40 + 3, "stream": True,
                    "stream_options": {"include_usage": True}, "user": "u"}, 64)
    assert r.kwargs == {"messages": MSG, "max_tokens": 9, "temperature": 0.0, "top_p": 0.5,
                        "stop": ["x"], "seed": 3}
    assert (r.model, r.stream, r.include_usage) == ("hermes", True, True)
    assert parse_chat({"messages": MSG}, 64).kwargs["max_tokens"] == 64
    assert parse_chat({"messages": MSG, "max_completion_tokens": 999}, 64
                      ).kwargs["max_tokens"] == 64
    parts = parse_chat({"messages": [{"role": "developer", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]})
    assert parts.kwargs["messages"] == [{"role": "system", "content": "ab"}]


@pytest.mark.parametrize(("extra", "param"), [
    ({"n": 2}, "n"), ({"tools": [{"type": "function"}]}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"), ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"), ({"response_format": {"type": "yaml"}},
                                            "response_format"),
    ({"response_format": "json"}, "response_format"),
    ({"response_format": {"type": "json_object", "schema": {}}}, "response_format"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
     "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x",
                                                                 "schema": []}}},
     "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"enum": ["y" * 70_000]}}}}, "response_format"),
    ({"functions": [{"name": "f"}]}, "functions"), ({"frobnicate": 1}, "frobnicate"),
    ({"temperature": 3}, "temperature"), ({"temperature": "hot"}, "temperature"),
    ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": True}, "max_tokens"),
    ({"stop": ["a"] * 5}, "stop"), ({"stop": [""]}, "stop"), ({"seed": 1.5}, "seed"),
    ({"stream": "yes"}, "stream"), ({"stream_options": {"include_usage": True}},
                                    "stream_options"),
    ({"logit_bias": {"x": 1}}, "logit_bias"), ({"logit_bias": {"1": 500}}, "logit_bias"),
    ({"model": 5}, "model"),
])
def test_refused_parameters_are_400_naming_the_parameter(extra, param):
    with pytest.raises(ChatError) as e:
        parse_chat({"messages": MSG, **extra})
    assert (e.value.status, e.value.param) == (400, param)
    assert param in e.value.message


@pytest.mark.parametrize(("body", "param"), [
    ({}, "messages"), ({"messages": []}, "messages"), ({"messages": ["x"]}, "messages[0]"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": []}]},
     "messages[0].tool_calls"),
])
def test_bad_messages_name_the_message(body, param):
    with pytest.raises(ChatError) as e:
        parse_chat(body)
    assert e.value.param == param


def test_no_op_values_of_unsupported_parameters_pass():
    parse_chat({"messages": MSG, "n": 1, "logprobs": False, "tools": [],
                "tool_choice": "none", "response_format": {"type": "text"}})


def test_json_mode_formats_are_kept_in_one_shape():
    assert "response_format" not in parse_chat({"messages": MSG, "response_format": {
        "type": "text"}}).kwargs
    assert parse_chat({"messages": MSG, "response_format": {"type": "json_object"}}
                      ).kwargs["response_format"] == {"type": "json_object"}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    got = parse_chat({"messages": MSG, "response_format": {"type": "json_schema",
                      "json_schema": {"name": "t", "strict": True, "schema": schema}}})
    assert got.kwargs["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "t", "schema": schema}}


def test_error_body_is_openais_shape():
    assert error_body(400, "bad", param="n", code="unsupported_parameter") == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": "n",
                  "code": "unsupported_parameter"}}
    assert error_body(503, "busy", code="queue_full")["error"]["type"] == "server_error"
