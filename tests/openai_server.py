"""A local OpenAI-compatible chat server for tests: real sockets, scripted behaviour.

Each request to `/v1/chat/completions` is answered by the next scripted action, or, when the
script is empty, by `respond(request)`. Actions say what a real endpoint does on a bad day:
reply, fail with a status (and headers such as Retry-After), stall past the client's timeout,
or drop the connection. Every request is recorded so tests can check what the client sent.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


@dataclass(frozen=True)
class Reply:
    text: str | None
    prompt_tokens: int = 100
    completion_tokens: int = 50
    finish_reason: str = "stop"
    delay: float = 0.0


@dataclass(frozen=True)
class Status:
    code: int
    message: str = "scripted failure"
    headers: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Stall:
    """Answer only after `seconds`: longer than the client waits, a reply that never comes."""

    seconds: float


@dataclass(frozen=True)
class Drop:
    """Close the connection without a response."""


@dataclass(frozen=True)
class Garbled:
    """A 200 whose body is not JSON: what a proxy's error page, or a server mid-crash, sends."""

    body: bytes = b"<html><body>502 Bad Gateway</body></html>"
    content_type: str = "application/json"


Action = Reply | Status | Stall | Drop | Garbled


@dataclass
class Request:
    body: dict
    headers: dict
    at: float

    @property
    def user(self) -> str:
        return next(m["content"] for m in self.body["messages"] if m["role"] == "user")

    @property
    def system(self) -> str:
        return next((m["content"] for m in self.body["messages"] if m["role"] == "system"), "")


class FakeOpenAI:
    def __init__(self, respond: Callable[[Request], Action] | None = None) -> None:
        self.script: list[Action] = []
        self.respond = respond or (lambda request: Reply("no script left"))
        self.requests: list[Request] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _next(self, request: Request) -> Action:
        with self.lock:
            self.requests.append(request)
            if self.script:
                return self.script.pop(0)
        return self.respond(request)

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                headers = {k.lower(): v for k, v in self.headers.items()}
                self._act(fake._next(Request(body, headers, time.monotonic())), body)

            def _act(self, action: Action, body: dict) -> None:
                if isinstance(action, Drop):
                    self.close_connection = True
                    self.connection.close()
                    return
                if isinstance(action, Garbled):
                    self.send_response(200)
                    self.send_header("Content-Type", action.content_type)
                    self.send_header("Content-Length", str(len(action.body)))
                    self.end_headers()
                    self.wfile.write(action.body)
                    return
                if isinstance(action, Stall):
                    time.sleep(action.seconds)
                    return self._send(504, {"error": {"message": "too late"}})  # nobody is listening any more
                if isinstance(action, Status):
                    error = {"error": {"message": action.message, "type": "scripted", "code": action.code}}
                    return self._send(action.code, error, action.headers)
                with fake.lock:  # replies only: a stalled request lingers here after its client gave up
                    fake.in_flight += 1
                    fake.most_in_flight = max(fake.most_in_flight, fake.in_flight)
                time.sleep(action.delay)
                with fake.lock:
                    fake.in_flight -= 1
                self._send(200, {
                    "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model", ""),
                    "choices": [{"index": 0, "finish_reason": action.finish_reason,
                                 "message": {"role": "assistant", "content": action.text}}],
                    "usage": {"prompt_tokens": action.prompt_tokens, "completion_tokens": action.completion_tokens,
                              "total_tokens": action.prompt_tokens + action.completion_tokens},
                })

            def _send(self, code: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, str(value))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a timeout test): nothing to tell it

        return Handler

