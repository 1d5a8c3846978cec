"""The model client against a local OpenAI-compatible server: real sockets, the real `openai` client."""

import random
import re
import threading
from collections import Counter
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone

import pytest

from openai_server import Drop, FakeOpenAI, Garbled, Reply, Stall, Status
from gitevolve.config import LLMConfig
from gitevolve.errors import GitevolveError
from gitevolve.llm.client import CallFailed, Client, retry_after

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
ENV = {"TEST_MODEL_KEY": "sk-test-123"}


def settings(url: str, timeout: float = 5.0, **overrides) -> LLMConfig:
    raw = {
        "api_base": url, "api_key_env": "TEST_MODEL_KEY", "retries": 3, "backoff": 0.01, "max_backoff": 5.0,
        "models": [{"name": "flash", "weight": 3, "temperature": 0.6, "max_tokens": 2000, "timeout": timeout},
                   {"name": "pro", "weight": 2, "temperature": None, "timeout": timeout}],
    }
    return LLMConfig.model_validate({**raw, **overrides})


@pytest.fixture
def server():
    with FakeOpenAI() as fake:
        yield fake


def client(server, waits=None, **overrides) -> Client:
    return Client(settings(server.url, **overrides), ENV, sleep=(waits.append if waits is not None else lambda s: None))


SHORT = 0.3  # seconds a model waits in the tests of stalled replies


def test_a_call_sends_the_model_settings_and_key_and_returns_usage(server):
    server.script = [Reply("SUMMARY: x", prompt_tokens=321, completion_tokens=45)]
    c = client(server)
    reply = c.complete(c.config.models[0], MESSAGES)
    assert (reply.model, reply.text, reply.prompt_tokens, reply.completion_tokens, reply.attempts) == ("flash", "SUMMARY: x", 321, 45, 1)
    sent = server.requests[0]
    assert sent.headers["authorization"] == "Bearer sk-test-123"
    assert sent.body == {"model": "flash", "messages": MESSAGES, "temperature": 0.6, "max_tokens": 2000}
    c.complete(c.config.models[1], MESSAGES)
    assert "temperature" not in server.requests[1].body  # null: the model's own


def test_the_ensemble_is_drawn_by_weight_from_the_seeded_stream(server):
    c = client(server)
    draws = [c.pick(random.Random(f"7/default/{i}")).name for i in range(3000)]
    assert draws == [c.pick(random.Random(f"7/default/{i}")).name for i in range(3000)]
    assert 0.56 < Counter(draws)["flash"] / len(draws) < 0.64  # weights 3:2


def test_429_waits_what_retry_after_says_then_succeeds(server):
    server.script = [Status(429, "slow down", {"Retry-After": "2"}), Status(429, "slower", {"retry-after-ms": "1500"}), Reply("ok")]
    waits = []
    reply = client(server, waits).complete(settings(server.url).models[0], MESSAGES)
    assert reply.text == "ok" and reply.attempts == 3 and waits == [2.0, 1.5]


def test_retry_after_as_a_date_and_the_longest_wait(server):
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 < retry_after({"retry-after": later}) <= 30
    assert retry_after({}) is None and retry_after({"retry-after": "soon"}) is None
    c = client(server)
    assert c.delay(1, 120.0) == 5.0  # max_backoff caps what the server asks for too


def test_server_errors_timeouts_and_dropped_connections_are_retried_with_growing_jittered_waits(server):
    server.script = [Status(500), Stall(1.0), Drop(), Reply("finally")]
    waits = []
    c = client(server, waits, backoff=1.0, timeout=SHORT)
    reply = c.complete(c.config.models[0], MESSAGES)
    assert reply.text == "finally" and reply.attempts == 4
    assert len(waits) == 3 and 0.5 <= waits[0] <= 1 and 1 <= waits[1] <= 2 and 2 <= waits[2] <= 4


def test_a_reply_that_never_comes_fails_after_the_retries_and_the_run_can_go_on(server):
    server.script = [Stall(1.0)] * 4
    c = client(server, timeout=SHORT)
    with pytest.raises(CallFailed, match=r"^model timeout: flash: no reply within 0.3 s \(after 4 attempts\)$") as info:
        c.complete(c.config.models[0], MESSAGES)
    assert info.value.kind == "model timeout" and len(server.requests) == 4
    server.script = [Reply("back")]
    assert c.complete(c.config.models[0], MESSAGES).text == "back"


def test_a_bad_request_is_not_retried(server):
    server.script = [Status(400, "max_tokens is too large")]
    c = client(server)
    with pytest.raises(CallFailed, match=r"^model HTTP 400: flash: max_tokens is too large \(after 1 attempt\)$"):
        c.complete(c.config.models[0], MESSAGES)
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (401, r"refused the key in \$TEST_MODEL_KEY \(HTTP 401: Incorrect API key\): check the key"),
        (403, r"refused the key in \$TEST_MODEL_KEY \(HTTP 403: Incorrect API key\)"),
        (404, r"model 'flash' was not found at http://127.0.0.1:\d+/v1 \(HTTP 404: Incorrect API key\)"),
    ],
)
def test_a_wrong_key_or_model_stops_at_once_with_what_to_fix(server, status, message):
    server.script = [Status(status, "Incorrect API key")]
    c = client(server)
    with pytest.raises(GitevolveError, match=message) as info:
        c.complete(c.config.models[0], MESSAGES)
    assert not isinstance(info.value, CallFailed) and len(server.requests) == 1
    with pytest.raises(GitevolveError, match=message):  # and every later call stops too, without a request
        c.complete(c.config.models[1], MESSAGES)
    assert len(server.requests) == 1


def test_failed_calls_in_a_row_stop_the_run(server):
    server.script = [Status(503)] * 6
    c = client(server, retries=1, stop_after_failures=3)
    for _ in range(2):
        with pytest.raises(CallFailed):
            c.complete(c.config.models[0], MESSAGES)
    with pytest.raises(CallFailed) as third:  # a CallFailed still, so that the caller counts the call
        c.complete(c.config.models[0], MESSAGES)
    assert re.match(r"^3 model calls in a row failed \(the last: model HTTP 503: scripted failure\): stopping", str(third.value.stop))
    with pytest.raises(GitevolveError, match="^3 model calls in a row failed"):
        c.complete(c.config.models[0], MESSAGES)  # and nothing more is sent
    assert len(server.requests) == 6


def test_no_more_calls_in_flight_than_the_concurrency_limit(server):
    server.respond = lambda request: Reply("ok", delay=0.1)
    c = client(server, concurrency=2)
    threads = [threading.Thread(target=c.complete, args=(c.config.models[0], MESSAGES)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(server.requests) == 6 and server.most_in_flight == 2


def test_a_missing_key_is_an_error_before_any_call_and_a_local_server_needs_none(server):
    with pytest.raises(GitevolveError, match=r"^TEST_MODEL_KEY is not set: export it"):
        Client(settings(server.url), {})
    server.script = [Reply("ok")]
    c = Client(settings(server.url, api_key_env=None), {})
    assert c.complete(c.config.models[0], MESSAGES).text == "ok"


def test_a_server_that_refuses_the_connection_from_the_start_stops_the_run_at_once():
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    waits = []
    c = Client(settings(f"http://127.0.0.1:{port}/v1"), ENV, sleep=waits.append)
    with pytest.raises(GitevolveError, match=rf"nothing answers at http://127.0.0.1:{port}/v1 \(connection refused\): "
                                             r"start the model server"):
        c.complete(c.config.models[0], MESSAGES)
    assert waits == []  # not one retry


def test_a_server_that_answered_once_and_then_refuses_is_retried_as_a_restart(server):
    import socket

    c = client(server, waits := [])
    server.script = [Reply("first")]
    c.complete(c.config.models[0], MESSAGES)
    with socket.socket() as s:  # the server goes away after a reply (a restart): its port refuses
        s.bind(("127.0.0.1", 0))
        c._client.base_url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    with pytest.raises(CallFailed, match="model connection failed"):
        c.complete(c.config.models[0], MESSAGES)
    assert len(waits) == c.config.retries


def test_a_200_whose_body_is_not_json_fails_the_call_once_without_a_traceback(server):
    c = client(server, waits := [])
    server.script = [Garbled()]
    with pytest.raises(CallFailed, match="model bad response") as failed:
        c.complete(c.config.models[0], MESSAGES)
    assert failed.value.attempts == 1 and waits == []  # the server answered: the same request would get the same
    server.script = [Reply("fine")]
    assert c.complete(c.config.models[0], MESSAGES).text == "fine"  # and the client still works
