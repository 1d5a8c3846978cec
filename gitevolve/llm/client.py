"""Chat calls to any OpenAI-compatible endpoint (OpenAI, Gemini, Ollama, vLLM, llama.cpp, LM Studio).

One model of the ensemble is drawn per call by weight, from the caller's seeded random stream.
At most `concurrency` calls are in flight. A rate limit (429), a server error (5xx), a timeout or
a dropped connection is retried with exponential backoff and jitter, waiting what Retry-After
asks when the server says; once the retries are spent the call fails as a `CallFailed`, which
the run counts and survives. A refused key (401, 403) or a model the server does not have (404)
stops the run at once with a `GitevolveError` saying what to fix: retrying cannot help. So does a
run of failed calls in a row, so a dead server does not turn into hours of backoff.

The `openai` package's own retries are off (`max_retries=0`): they would multiply ours.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import re
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Mapping

from gitevolve.config import LLMConfig, ModelConfig
from gitevolve.errors import GitevolveError
from gitevolve.llm import structured
from gitevolve.mutate import MutationRejected

CONTEXT_EXCEEDED = "model context_length_exceeded"
# OpenAI's and llama-cpp-python's wording; llama.cpp's server says "context size (N tokens)".
CONTEXT_IN_MESSAGE = re.compile(r"(?:maximum context length is|context (?:size|window|length) (?:of |is )?\(?)(\d+)")
NO_KEY = "no-key"  # what a server that wants no key (a local one) receives: the client insists on some value


@dataclass(frozen=True)
class Reply:
    model: str
    text: str | None
    prompt_tokens: int
    completion_tokens: int
    seconds: float  # latency of the attempt that answered
    attempts: int
    finish_reason: str | None


class CallFailed(MutationRejected):
    """No reply after every retry: this mutation is lost, and the run goes on unless `stop` says
    why it cannot (too many failures in a row); the caller counts the call first, then raises it."""

    def __init__(self, kind: str, model: str, detail: str, attempts: int, stop: GitevolveError | None = None) -> None:
        super().__init__(f"{kind}: {model}: {detail} (after {attempts} attempt{'s' * (attempts > 1)})")
        self.kind, self.attempts, self.stop = kind, attempts, stop


def api_key(config: LLMConfig, environ: Mapping[str, str]) -> str:
    if config.api_key_env is None:
        return NO_KEY
    key = environ.get(config.api_key_env, "").strip()
    if not key:
        raise GitevolveError(f"{config.api_key_env} is not set: export it with the API key for {config.api_base} "
                             f"(llm.api_key_env names the variable; null for a local server that needs no key)")
    return key


class Client:
    def __init__(self, config: LLMConfig, environ: Mapping[str, str] = os.environ,
                 sleep: Callable[[float], None] = time.sleep, say: Callable[[str], None] | None = None) -> None:
        try:
            import openai
        except ImportError:
            raise GitevolveError("a model is configured but the openai package is missing: pip install 'gitevolve[llm]'") from None
        self.config = config
        self._openai = openai
        self._client = openai.OpenAI(api_key=api_key(config, environ), base_url=config.api_base, max_retries=0)
        self._slots = threading.BoundedSemaphore(config.concurrency)
        self._lock = threading.Lock()
        self._failed_in_a_row = 0
        self._replied = False  # a server that has answered once and then refuses may be restarting
        self._stopped: GitevolveError | None = None
        self._jitter = random.Random()  # jitter need not repeat: it only spreads retries apart
        self._sleep = sleep
        self._say = say  # a retry shown as it happens: a slow or failing server is not silence
        self._style = "json_object" if config.response_format == "json_object" else "json_schema"
        self._contexts: dict[str, int] = {}  # per model, what a server said of its context
        self._probed = False

    def pick(self, rng: random.Random) -> ModelConfig:
        """One model of the ensemble, drawn by weight from the caller's (seeded) stream."""
        models = self.config.models
        return rng.choices(models, weights=[m.weight for m in models])[0] if len(models) > 1 else models[0]

    def complete(self, model: ModelConfig, messages: list[dict], schema: dict | None = None) -> Reply:
        """One reply from `model`; `schema`: the JSON schema the server is asked to hold it to."""
        failure: tuple[str, str] = ("", "")
        attempt = 0
        while attempt <= self.config.retries:
            attempt += 1
            wait = None
            try:
                with self._slots:
                    self._raise_if_stopped()
                    started = time.monotonic()
                    response = self._client.chat.completions.create(**self._request(model, messages, schema))
                    seconds = time.monotonic() - started
            except self._openai.APIStatusError as e:
                self._stop_on_fatal(model, e)
                if schema is not None and self._schema_refused(e):
                    attempt -= 1  # the request's form was refused, not the call: the other form is no retry
                    continue
                failure = (_status_kind(e), _message(e))
                if failure[0] == CONTEXT_EXCEEDED:
                    self._learn_context(model, _message(e))
                if not _retryable(e.status_code):
                    break
                wait = retry_after(e.response.headers)
            except self._openai.APITimeoutError:
                failure = ("model timeout", f"no reply within {model.timeout:g} s")
            except self._openai.APIConnectionError as e:
                if _refused(e) and not self._replied:
                    # Nothing listens there: no retry will change that, and the retries of a whole
                    # batch took 1 min 42 s of silence before the error.
                    self._stop(GitevolveError(f"nothing answers at {self.config.api_base} (connection refused): start "
                                              f"the model server, or set llm.api_base to where it listens"))
                failure = ("model connection failed", f"{self.config.api_base}: {e}")
            except self._openai.APIError as e:  # a 200 whose body is not a chat completion
                failure = ("model bad response", str(e)[:200])
                break
            except ValueError as e:  # a 200 whose body is not JSON: openai lets json's JSONDecodeError through
                failure = ("model bad response", f"{self.config.api_base} answered 200 with a body that is not JSON ({e})")
                break
            else:
                reply = _reply(model.name, response, seconds, attempt)
                if reply is None:  # a 200 holding no completion: an HTML page, a stream, an empty body
                    failure = ("model bad response", f"{self.config.api_base} answered 200 without a chat completion "
                                                     f"({_describe_body(response)})")
                    break
                with self._lock:
                    self._failed_in_a_row = 0
                    self._replied = True
                return reply
            if attempt <= self.config.retries:
                pause = self.delay(attempt, wait)
                if self._say is not None:
                    self._say(f"model {model.name}: {failure[0]} ({failure[1][:100]}); retrying in {pause:.1f} s "
                              f"(attempt {attempt + 1} of {self.config.retries + 1})")
                self._sleep(pause)
        raise CallFailed(failure[0], model.name, failure[1], attempt, self._count_failure(failure))

    def context(self, model: ModelConfig) -> int | None:
        """The tokens `model` sees at once: the config's, else what a server told (`/props`, an error)."""
        if model.context:
            return model.context
        with self._lock:
            if not self._probed:
                self._probed = True
                found = server_context(self.config.api_base)
                if found:
                    self._contexts.setdefault(model.name, found)
            return self._contexts.get(model.name)

    def _learn_context(self, model: ModelConfig, message: str) -> None:
        if m := CONTEXT_IN_MESSAGE.search(message):
            with self._lock:
                self._contexts[model.name] = int(m.group(1))

    def _schema_refused(self, e) -> bool:
        """Whether the server refused the json_schema form of response_format (llama-cpp-python's
        server takes only json_object with a schema, and says so with an HTTP 500 whose body names
        response_format): then the other form, once, for the whole run."""
        if self.config.response_format != "auto" or self._style != "json_schema" or e.status_code not in (400, 422, 500):
            return False
        if not re.search(r"response_format|json_schema", str(e.body) + str(e.message)):
            return False
        with self._lock:
            self._style = "json_object"
        if self._say is not None:
            self._say(f"{self.config.api_base} refused response_format json_schema: sending json_object with the "
                      f"schema instead (llm.response_format: json_object says so in the config)")
        return True

    def delay(self, attempt: int, asked: float | None) -> float:
        """Seconds before retry `attempt`: what the server asked, else doubling backoff with jitter."""
        cap = self.config.max_backoff
        if asked is not None:
            return min(asked, cap)
        step = min(cap, self.config.backoff * 2 ** (attempt - 1))
        return step / 2 + self._jitter.uniform(0, step / 2)

    def _request(self, model: ModelConfig, messages: list[dict], schema: dict | None) -> dict:
        request = {"model": model.name, "messages": messages, "max_tokens": model.max_tokens, "timeout": model.timeout}
        if model.temperature is not None:
            request["temperature"] = model.temperature
        if schema is not None:
            request["response_format"] = structured.response_format(schema, self._style)
        return request

    def _stop_on_fatal(self, model: ModelConfig, e) -> None:
        base, code = self.config.api_base, e.status_code
        if code in (401, 403):
            holder = f"the key in ${self.config.api_key_env}" if self.config.api_key_env else "requests without a key"
            self._stop(GitevolveError(f"{base} refused {holder} (HTTP {code}: {_message(e)}): check the key, "
                                      f"or set llm.api_key_env to the variable that holds it"))
        if code == 404:
            self._stop(GitevolveError(f"model {model.name!r} was not found at {base} (HTTP 404: {_message(e)}): check "
                                      f"llm.models[].name, and that api_base is the URL before /chat/completions"))

    def _stop(self, error: GitevolveError) -> None:
        with self._lock:
            self._stopped = self._stopped or error
        raise error

    def _raise_if_stopped(self) -> None:
        if self._stopped is not None:
            raise GitevolveError(str(self._stopped))  # a fresh one per thread: tracebacks are per raise

    def _count_failure(self, failure: tuple[str, str]) -> GitevolveError | None:
        """The error that stops the run, once this failure makes too many in a row."""
        with self._lock:
            self._failed_in_a_row += 1
            n = self._failed_in_a_row
            if n < self.config.stop_after_failures:
                return None
            self._stopped = self._stopped or GitevolveError(
                f"{n} model calls in a row failed (the last: {failure[0]}: {failure[1]}): stopping; check "
                f"llm.api_base and the server, then run again (llm.stop_after_failures sets the limit)")
            return self._stopped


def server_context(api_base: str) -> int | None:
    """The context a local llama.cpp server was started with (its `/props`), or None: asked of
    localhost only, since a hosted API has no such endpoint and each request costs a round trip."""
    parts = urllib.parse.urlsplit(api_base)
    if parts.hostname not in ("localhost", "127.0.0.1", "::1"):
        return None
    url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/props", "", ""))
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            props = json.loads(response.read())
        n = (props.get("default_generation_settings") or {}).get("n_ctx") or props.get("n_ctx")
        return int(n) if n else None
    except (OSError, ValueError, AttributeError, TypeError):
        return None  # llama-cpp-python, Ollama, vLLM: no /props; the context is learnt another way


def _refused(e: BaseException) -> bool:
    """Whether the connection was refused (nothing listens), under the openai and httpx wrappers."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, ConnectionRefusedError) or "Connection refused" in str(e):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def _status_kind(e) -> str:
    """A failure's kind for the counts: the status, or the one 400 that has a remedy of its own."""
    body = e.body if isinstance(e.body, dict) else {}
    inner = body.get("error", body)
    code = inner.get("code") if isinstance(inner, dict) else None
    text = _message(e).lower()
    if code == "context_length_exceeded" or (e.status_code == 400 and ("context length" in text or
                                                                     "context window" in text or
                                                                     "exceeds the available context" in text)):
        return CONTEXT_EXCEEDED
    return f"model HTTP {e.status_code}"


def _describe_body(response) -> str:
    text = response if isinstance(response, str) else repr(response)
    text = " ".join(text.split())
    if not text:
        return "an empty body"
    if text.lstrip().lower().startswith(("<!doctype", "<html")):
        return f"an HTML page: {text[:80]}"
    if text.startswith("data:"):
        return f"a stream, where none was asked: {text[:80]}"
    return text[:120]


def _retryable(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


def _message(e) -> str:
    body = e.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        if message:
            return " ".join(str(message).split())[:300]
    return " ".join(str(e.message).split())[:300]


def retry_after(headers: Mapping[str, str]) -> float | None:
    """What the server asked us to wait, in seconds: `retry-after-ms`, or `Retry-After` in seconds or as a date."""
    try:
        return max(0.0, float(headers["retry-after-ms"]) / 1000)
    except (KeyError, ValueError, TypeError):
        pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _reply(model: str, response, seconds: float, attempts: int) -> Reply | None:
    if isinstance(response, (str, bytes)) or not getattr(response, "choices", None):
        return None  # openai hands back the body as text when it is not JSON, and as an empty object when no completion
    choice = response.choices[0]
    usage = getattr(response, "usage", None)
    return Reply(
        model=model,
        text=choice.message.content if getattr(choice, "message", None) is not None else None,
        prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        seconds=round(seconds, 3),
        attempts=attempts,
        finish_reason=getattr(choice, "finish_reason", None),
    )
