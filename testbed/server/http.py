"""HTTP routes of the OpenAI-compatible server, on the standard library's threading server.

Each connection gets a handler thread. A generation request is validated, submitted to the
engine loop, and answered from its `TextStream`: whole (`Content-Length`) or as server-sent
events over chunked transfer encoding (`data: {...}` per token, an optional usage chunk,
`data: [DONE]`). A streamed response starts once the first token is there, so a request the
scheduler rejects still gets a plain 400. A client that disconnects, mid-stream or while
waiting, has its request aborted in the engine.
"""
from __future__ import annotations

import json
import logging
import select
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from testbed.server.engine_loop import Ended
from testbed.server.prometheus import CONTENT_TYPE as METRICS_CONTENT_TYPE
from testbed.server.protocol import APIError, parse_chat, parse_completion, parse_json_body
from testbed.server.responses import ResponseBuilder, usage
from testbed.server.text_stream import ClientGone, EndedEarly, TextStream

if TYPE_CHECKING:
    from testbed.server.app import Server

log = logging.getLogger("testbed.server")

MAX_BODY_BYTES = 16 << 20
DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
GENERATE_ROUTES = {"/v1/completions": (parse_completion, False),
                   "/v1/chat/completions": (parse_chat, True)}
GET_ROUTES = ("/v1/models", "/health", "/metrics")


class OpenAIHTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client must not keep the process alive at shutdown
    request_queue_size = socket.SOMAXCONN  # the default 5 resets bursts of new connections

    def __init__(self, address: tuple[str, int], app: Server):
        self.app = app
        super().__init__(address, OpenAIHandler)

    def handle_error(self, request, client_address) -> None:
        """A client that hangs up between requests is routine, not a traceback on stderr."""
        if isinstance(sys.exc_info()[1], DISCONNECTS):
            return
        super().handle_error(request, client_address)


class OpenAIHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: OpenAIHTTPServer

    # ---- routing ----
    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        app = self.server.app
        if path == "/v1/models":
            self._send_json(200, app.models_body())
        elif path == "/health":
            ok = app.loop.alive
            self._send_json(200 if ok else 503, {"status": "ok" if ok else "engine stopped"})
        elif path == "/metrics":
            self._send_bytes(200, app.metrics.render().encode(), METRICS_CONTENT_TYPE)
        else:
            self._not_found(path, "POST" if path in GENERATE_ROUTES else None)

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if path not in GENERATE_ROUTES:
            self._not_found(path, "GET" if path in GET_ROUTES else None)
            return
        parse, chat = GENERATE_ROUTES[path]
        app = self.server.app
        try:
            request = parse(parse_json_body(self._read_body()), app.card, app.tokenizer)
        except APIError as e:
            self._send_error(e)
            return
        prompt_text = request.prompt_text
        if prompt_text is None and app.record_text:
            prompt_text = app.tokenizer.decode(request.prompt_token_ids)
        builder = ResponseBuilder(app.card.name, chat)
        handle = app.loop.submit(request.prompt_token_ids, request.max_tokens, request.sampling,
                                 prompt_text, request_id=builder.id)
        stream = TextStream(app.loop, handle, app.tokenizer, request.stop, self._client_gone)
        prompt_tokens = len(request.prompt_token_ids)
        try:
            if request.stream:
                self._stream(stream, builder, prompt_tokens, request.include_usage)
            else:
                text, finish = "", None
                for piece in stream:
                    text, finish = text + piece.text, piece.finish_reason
                self._send_json(200, builder.complete(
                    text, finish, usage(prompt_tokens, stream.num_tokens, handle.num_cached_tokens)))
        except EndedEarly as e:
            self._send_error(_error_for(e.ended))
        except ClientGone:
            self.close_connection = True
            log.info("client %s went away; request %s aborted", self.address_string(), builder.id)

    # ---- generation ----
    def _stream(self, stream: TextStream, builder: ResponseBuilder, prompt_tokens: int,
                include_usage: bool) -> None:
        pieces = iter(stream)
        first = next(pieces)  # EndedEarly here is still a plain error response
        try:
            self._start_events()
            opening = builder.first_chunk()
            if opening is not None:
                self._event(opening)
            self._event(builder.chunk(first.text, first.finish_reason))
            try:
                for piece in pieces:
                    self._event(builder.chunk(piece.text, piece.finish_reason))
            except EndedEarly as e:
                self._event(_error_for(e.ended).body())
            else:
                if include_usage:
                    self._event(builder.usage_chunk(
                        usage(prompt_tokens, stream.num_tokens, stream.handle.num_cached_tokens)))
            self._write_chunk(b"data: [DONE]\n\n")
            self._write_chunk(b"")
        except DISCONNECTS:
            stream.cancel()
            raise ClientGone() from None

    def _client_gone(self) -> bool:
        """Whether the peer closed the connection (readable, yet nothing to read)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    # ---- plumbing ----
    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            raise APIError("the request needs a Content-Length header with the body's size",
                           status=411, code="length_required")
        if int(length) > MAX_BODY_BYTES:
            self.close_connection = True
            raise APIError(f"the request body of {length} bytes is over the limit of "
                           f"{MAX_BODY_BYTES}", status=413, code="body_too_large")
        return self.rfile.read(int(length))

    def _not_found(self, path: str, allowed: str | None) -> None:
        if allowed is not None:
            self._send_error(APIError(f"{self.command} {path} is not supported; use {allowed}",
                                      status=405, code="method_not_allowed"))
        else:
            self._send_error(APIError(f"unknown path {path!r}", status=404, code="unknown_url"))

    def _send_error(self, error: APIError) -> None:
        if 400 <= error.status < 500:
            self.server.app.metrics.invalid_request()
        self._send_json(error.status, error.body())

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        self._send_bytes(status, json.dumps(body).encode(), "application/json")

    def _send_bytes(self, status: int, data: bytes, content_type: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except DISCONNECTS:
            self.close_connection = True

    def _start_events(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _event(self, body: dict[str, Any]) -> None:
        self._write_chunk(b"data: " + json.dumps(body).encode() + b"\n\n")

    def _write_chunk(self, data: bytes) -> None:
        """One chunk of chunked transfer encoding (the empty one ends the body)."""
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)


def _error_for(ended: Ended) -> APIError:
    """The HTTP error of a request that ended without finishing."""
    if ended.status == "rejected":
        return APIError(f"the scheduler rejected the request: {ended.reason}",
                        code="request_rejected")
    if ended.status == "aborted":
        return APIError(f"the request was aborted: {ended.reason}", status=503,
                        type="server_error", code="service_unavailable")
    return APIError(f"the engine failed: {ended.reason}", status=500, type="server_error",
                    code="engine_error")

