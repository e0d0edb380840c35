"""An OpenAI-compatible front for a generation model served by Triton (triton/generation_model.py):
`POST /v1/completions`, `POST /v1/chat/completions` (both with `"stream": true` as server-sent
events, `data: {chunk}` lines ending with `data: [DONE]`) and `GET /v1/models`, translated to
Triton's `generate_stream` endpoint. It holds no model: every replica that runs it beside its
Triton server is complete.

Request fields used: `model` (must be the served model's name, or left out), `prompt` (a string,
or a list of one) / `messages` (role and content; joined as "role: content" lines and a final
"assistant:", since a model trained here has no chat template), `max_tokens`, `temperature`,
`top_p`, `top_k`, `stream`, `stream_options.include_usage`. Others are ignored.

`usage` (`prompt_tokens`, `completion_tokens`, `total_tokens`) holds the counts the model reports
in its final response (its tokenizer's count of the prompt, the tokens it generated): in every
whole answer, and with `stream_options: {"include_usage": true}` in a last chunk with no choices
before `[DONE]` (the chunks before it carry `"usage": null`), as OpenAI does. Errors come back in OpenAI's shape
(`{"error": {"message", "type", "code"}}`) with the status code Triton gave, or 400/404 here.

    model-operator openai --triton http://127.0.0.1:8000 --model tiny --port 9000
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("model_operator.openai")

FORWARDED = ("max_tokens", "temperature", "top_p", "top_k")


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "code": self.status}}


def chat_prompt(messages: Sequence[dict[str, Any]]) -> str:
    """The conversation as "role: content" lines and an open "assistant:" turn."""
    if not messages:
        raise ApiError(400, "messages must hold at least one message")
    lines = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise ApiError(400, f"messages[{i}].content must be a string")
        lines.append(f"{m.get('role', 'user')}: {m['content']}")
    return "\n".join(lines) + "\nassistant:"


def triton_request(body: dict[str, Any], chat: bool, served: str) -> dict[str, Any]:
    """The generate_stream body for an OpenAI request body."""
    if body.get("model") not in (None, "", served):
        raise ApiError(404, f"model {body['model']!r} is not served here (this endpoint serves {served!r})", "not_found_error")
    if chat:
        prompt = chat_prompt(body.get("messages") or [])
    else:
        given = body.get("prompt")
        if isinstance(given, list) and len(given) == 1:
            given = given[0]
        if not isinstance(given, str) or not given:
            raise ApiError(400, "prompt must be a non-empty string (or a list of one)")
        prompt = given
    out: dict[str, Any] = {"text_input": prompt}
    for k in FORWARDED:
        if body.get(k) is not None:
            out[k] = body[k]
    return out


def _envelope(rid: str, model: str, created: int, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": rid, "object": kind, "created": created, "model": model, "choices": choices}


def chunk(rid: str, model: str, created: int, text: str | None, chat: bool, finish: str | None = None) -> dict[str, Any]:
    """One streamed chunk in OpenAI's shape (text None: the closing chunk with finish_reason)."""
    if chat:
        delta = {"content": text} if text is not None else {}
        return _envelope(rid, model, created, "chat.completion.chunk", [{"index": 0, "delta": delta, "finish_reason": finish}])
    return _envelope(rid, model, created, "text_completion", [{"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}])


def usage_chunk(rid: str, model: str, created: int, chat: bool, usage: dict[str, int] | None) -> dict[str, Any]:
    """The last chunk of a stream that asked for usage: no choices, the request's token counts."""
    return {**_envelope(rid, model, created, "chat.completion.chunk" if chat else "text_completion", []), "usage": usage}


def whole(rid: str, model: str, created: int, text: str, chat: bool, finish: str, usage: dict[str, int] | None = None) -> dict[str, Any]:
    if chat:
        out = _envelope(rid, model, created, "chat.completion",
                        [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}])
    else:
        out = _envelope(rid, model, created, "text_completion", [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}])
    return {**out, "usage": usage} if usage else out


def wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def finish_reason(usage: dict[str, int], pieces: int, max_tokens: Any) -> str:
    """"length" when the answer used up max_tokens (counted in tokens when the model reported them), else "stop"."""
    n = usage["completion_tokens"] if usage else pieces
    return "length" if max_tokens and n >= max_tokens else "stop"


def triton_pieces(triton: str, model: str, req: dict[str, Any], timeout: float, usage: dict[str, int]) -> Iterator[str]:
    """The text pieces Triton streams for one request; ApiError on a refusal or an error event.
    `usage` is filled from the final event's token counts (left empty by a model that sends none)."""
    import requests

    try:
        r = requests.post(f"{triton}/v2/models/{model}/generate_stream", json=req, stream=True, timeout=timeout)
    except requests.RequestException as exc:
        raise ApiError(503, f"the model server is unreachable: {exc}", "server_error") from None
    with r:
        if r.status_code != 200:
            server_side = r.status_code >= 500
            raise ApiError(502 if server_side else r.status_code, _triton_error(r.text), "server_error" if server_side else "invalid_request_error")
        for line in r.iter_lines():
            if not line.startswith(b"data: "):
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise ApiError(400, str(event["error"]))
            if "completion_tokens" in event and "prompt_tokens" in event:
                prompt, completion = int(event["prompt_tokens"]), int(event["completion_tokens"])
                usage.update(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
            if event.get("text_output"):
                yield str(event["text_output"])


def _triton_error(text: str) -> str:
    try:
        return str(json.loads(text).get("error", text))
    except ValueError:
        return text[:500]


class Handler(BaseHTTPRequestHandler):
    server: OpenAiServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)

    def _json(self, status: int, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.rstrip("/") == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": self.server.model, "object": "model", "created": 0, "owned_by": "model-operator"}]})
        elif self.path == "/health":
            self._json(200, {"status": "ok"})
        else:
            self._json(404, ApiError(404, f"no route {self.path}", "not_found_error").body())

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.rstrip("/")
        if path not in ("/v1/completions", "/v1/chat/completions"):
            self._json(404, ApiError(404, f"no route {self.path}", "not_found_error").body())
            return
        chat = path.endswith("chat/completions")
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created, model = int(time.time()), self.server.model
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(body, dict):
                raise ApiError(400, "the request body must be a JSON object")
            req = triton_request(body, chat, model)
            usage: dict[str, int] = {}
            pieces = triton_pieces(self.server.triton, model, req, self.server.request_timeout, usage)
            first = next(pieces, None)  # errors before the first token still get a status code
        except ApiError as exc:
            self._json(exc.status, exc.body())
            return
        except ValueError as exc:
            self._json(400, ApiError(400, f"the request body is not JSON: {exc}").body())
            return
        max_tokens = req.get("max_tokens")
        if not body.get("stream"):
            text, n = "", 0
            try:
                for piece in ([first] if first is not None else []) + list(pieces):
                    text += piece
                    n += 1
            except ApiError as exc:
                self._json(exc.status, exc.body())
                return
            self._json(200, whole(rid, model, created, text, chat, finish_reason(usage, n, max_tokens), usage or None))
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        include_usage = wants_usage(body)

        def send(obj: dict[str, Any] | str) -> None:
            if include_usage and isinstance(obj, dict) and "choices" in obj and "usage" not in obj:
                obj = {**obj, "usage": None}
            self.wfile.write(f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode())
            self.wfile.flush()

        n = 0
        try:
            if chat:
                send({**chunk(rid, model, created, None, chat), "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
            for piece in ([first] if first is not None else []):
                send(chunk(rid, model, created, piece, chat))
                n += 1
            for piece in pieces:
                send(chunk(rid, model, created, piece, chat))
                n += 1
            send(chunk(rid, model, created, None, chat, finish_reason(usage, n, max_tokens)))
            if include_usage:
                send(usage_chunk(rid, model, created, chat, usage or None))
        except ApiError as exc:
            send(exc.body())
        except (BrokenPipeError, ConnectionResetError):
            return
        send("[DONE]")


class OpenAiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], triton: str, model: str, timeout: float = 300.0) -> None:
        super().__init__(address, Handler)
        self.triton, self.model, self.request_timeout = triton.rstrip("/"), model, timeout
