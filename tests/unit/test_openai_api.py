"""The pure parts of the OpenAI-compatible front (triton/openai_api.py): request translation and
the response shapes OpenAI clients parse."""

from __future__ import annotations

import pytest

from model_operator.triton.openai_api import ApiError, chat_prompt, chunk, finish_reason, triton_request, usage_chunk, wants_usage, whole


def test_completion_request_forwards_the_sampling_fields_it_knows() -> None:
    body = {"model": "tiny", "prompt": ["Hello"], "max_tokens": 8, "temperature": 0, "top_p": 0.9, "n": 3, "logprobs": 2}
    assert triton_request(body, chat=False, served="tiny") == {"text_input": "Hello", "max_tokens": 8, "temperature": 0, "top_p": 0.9}
    assert triton_request({"prompt": "x"}, chat=False, served="tiny") == {"text_input": "x"}


@pytest.mark.parametrize(
    "body,chat,status,text",
    [
        ({"model": "other", "prompt": "x"}, False, 404, "'other' is not served here"),
        ({"prompt": ""}, False, 400, "prompt must be a non-empty string"),
        ({"prompt": ["a", "b"]}, False, 400, "prompt must be"),
        ({"messages": []}, True, 400, "at least one message"),
        ({"messages": [{"role": "user", "content": 3}]}, True, 400, "messages[0].content"),
    ],
)
def test_bad_requests_are_refused_with_openai_errors(body: dict[str, object], chat: bool, status: int, text: str) -> None:
    with pytest.raises(ApiError) as err:
        triton_request(body, chat=chat, served="tiny")
    assert err.value.status == status and text in err.value.message
    assert err.value.body()["error"]["code"] == status


def test_chat_prompt_opens_an_assistant_turn() -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is assert?"}]
    assert chat_prompt(msgs) == "system: Be brief.\nuser: What is assert?\nassistant:"
    assert triton_request({"messages": msgs}, chat=True, served="tiny")["text_input"].endswith("\nassistant:")


def test_chunk_and_whole_shapes() -> None:
    c = chunk("id1", "tiny", 5, "he", chat=True)
    assert c["object"] == "chat.completion.chunk" and c["choices"][0]["delta"] == {"content": "he"} and c["choices"][0]["finish_reason"] is None
    end = chunk("id1", "tiny", 5, None, chat=True, finish="stop")
    assert end["choices"][0]["delta"] == {} and end["choices"][0]["finish_reason"] == "stop"
    t = chunk("id2", "tiny", 5, "lo", chat=False)
    assert t["object"] == "text_completion" and t["choices"][0]["text"] == "lo"
    w = whole("id3", "tiny", 5, "hello", chat=True, finish="length")
    assert w["choices"][0]["message"] == {"role": "assistant", "content": "hello"} and w["choices"][0]["finish_reason"] == "length"
    assert whole("id4", "tiny", 5, "hello", chat=False, finish="stop")["choices"][0]["text"] == "hello"


def test_usage_goes_into_a_whole_answer_and_a_last_chunk_without_choices() -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert whole("id", "tiny", 5, "abc", chat=False, finish="stop", usage=usage)["usage"] == usage
    assert whole("id", "tiny", 5, "abc", chat=True, finish="stop", usage=usage)["usage"] == usage
    assert "usage" not in whole("id", "tiny", 5, "abc", chat=False, finish="stop")  # a model that reports no counts
    last = usage_chunk("id", "tiny", 5, chat=True, usage=usage)
    assert last["object"] == "chat.completion.chunk" and last["choices"] == [] and last["usage"] == usage
    assert usage_chunk("id", "tiny", 5, chat=False, usage=None)["object"] == "text_completion"


@pytest.mark.parametrize(
    "body,wanted",
    [({"stream_options": {"include_usage": True}}, True), ({"stream_options": {"include_usage": False}}, False),
     ({"stream_options": None}, False), ({"stream_options": "yes"}, False), ({}, False)],
)
def test_usage_is_streamed_only_when_asked_for(body: dict[str, object], wanted: bool) -> None:
    assert wants_usage(body) is wanted


def test_finish_reason_counts_tokens_when_the_model_reports_them() -> None:
    # 3 pieces of text from 4 tokens (a token can decode to nothing): the tokens decide.
    assert finish_reason({"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}, 3, 4) == "length"
    assert finish_reason({"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}, 3, 4) == "stop"
    assert finish_reason({}, 4, 4) == "length" and finish_reason({}, 4, None) == "stop"
