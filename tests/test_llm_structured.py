"""The json edit format, the prompt that fits, and every way a server can misbehave, each shown and
counted: unit tests of the format, then whole runs against the scripted local server."""

import json
import re

import pytest

from conftest import PROGRAM, gitevolve, make_repo
from gitevolve.llm import edits, structured
from gitevolve.mutate import MutationRejected
from openai_server import FakeOpenAI, Garbled, Reply, Status
from test_llm_run import KEY, model_config
from test_run import ok

FILES = {"prog.py": PROGRAM}


def reply(tunables: dict | None = None, **fields) -> str:
    listed = [{"name": k, "value": v} for k, v in (tunables or {}).items()]
    return json.dumps({"summary": "s", "rationale": "r", "tunables": listed, "edits": [], **fields})


# --- the format ---------------------------------------------------------------------------------


def offered(schema: dict) -> dict:
    return {o["properties"]["name"]["const"]: o["properties"]["value"]["enum"]
            for o in schema["properties"]["tunables"]["items"]["anyOf"]}


def test_the_schema_offers_each_live_tunable_only_its_other_choices_and_asks_for_one():
    schema = structured.schema(FILES)
    assert offered(schema) == {"A": [2, 3, 4, 5], "B": ["medium", "fast"], "C": [0.1, 0.9]}
    assert schema["properties"]["tunables"]["minItems"] == 1 and schema["properties"]["edits"]["minItems"] == 0
    plain = structured.schema({"x.py": "print(1)\n"})
    assert "tunables" not in plain["properties"] and plain["properties"]["edits"]["minItems"] == 1


def test_a_dead_tunable_is_not_offered():
    program = PROGRAM.replace('C = 0.5  # gitevolve: choices=[0.1, 0.5, 0.9]',
                              'C = 0.5  # gitevolve: choices=[0.1, 0.5, 0.9], when=B == "fast"')
    assert "C" not in offered(structured.schema({"prog.py": program}))


def test_a_reply_in_the_form_a_model_writes_unconstrained_is_read_too():
    text = json.dumps({"summary": "s", "rationale": "r", "tunables": {"A": 2}, "edits": []})
    assert "A = 2  # gitevolve" in edits.apply(text, FILES, "json").files["prog.py"]
    raw_newline = '{"summary": "two\nlines", "rationale": "r", "tunables": [{"name": "A", "value": 3}], "edits": []}'
    assert "A = 3  # gitevolve" in edits.apply(raw_newline, FILES, "json").files["prog.py"]


def test_a_json_reply_sets_tunables_and_says_exactly_what_changed():
    edit = edits.apply(reply(summary="Go faster", tunables={"B": "fast", "C": 0.9}), FILES, "json")
    assert 'B = "fast"  # gitevolve' in edit.files["prog.py"] and "C = 0.9  # gitevolve" in edit.files["prog.py"]
    assert edit.summary == "Set B slow -> fast, C 0.5 -> 0.9"  # the truth, not the model's words
    assert "The model's summary: Go faster" in edit.rationale


def test_a_json_reply_edits_code_with_search_and_replace_pairs():
    pair = {"search": "def value():\n    return A", "replace": "def value():\n    return 2 * A"}
    program = PROGRAM.replace("# EVOLVE-BLOCK-END\n", "").replace("# EVOLVE-BLOCK-START\n", "")
    edit = edits.apply(reply(summary="Double A", edits=[pair]), {"prog.py": program}, "json")
    assert "return 2 * A" in edit.files["prog.py"] and edit.summary == "Double A"


@pytest.mark.parametrize("text, kind", [
    ("SUMMARY: prose\nno JSON here", "unparsable reply"),
    ("[1, 2]", "unparsable reply"),
    (reply(), "no edit in the reply"),
    (reply(tunables={"D": 1}), "unknown tunable"),
    (reply(tunables={"A": 7}), "value not a choice"),
    (reply(tunables={"A": "2"}), "value not a choice"),  # a string is not the number 2
    (reply(tunables={"A": 1}), "edit changes nothing"),  # the current value: no change
    (reply(edits=[{"search": "A = 1  # gitevolve", "replace": "A = 1  # gitevolve"}]), "edit changes nothing"),
    (json.dumps({"tunables": [{"name": "A"}]}), "unparsable reply"),
    (json.dumps({"tunables": [], "edits": {"search": "x"}}), "unparsable reply"),
    (reply(edits=[{"search": "import math", "replace": "import os"}]), "edit outside EVOLVE-BLOCK"),
    (reply(edits=[{"search": "X = 3", "replace": "X = 4"}]), "SEARCH not found"),
    (reply(edits=[{"search": " ", "replace": "X = 4"}]), "empty SEARCH"),
    (reply(edits=[{"search": "C = 0.5  # gitevolve: choices=[0.1, 0.5, 0.9]", "replace": "C = (0.5"}]), "code does not parse"),
])
def test_a_json_reply_that_cannot_be_applied_is_refused_by_kind(text, kind):
    with pytest.raises(MutationRejected) as refused:
        edits.apply(text, FILES, "json")
    assert str(refused.value).split(":")[0] == kind


def test_a_rewrite_holding_search_replace_markers_or_broken_python_is_refused_before_any_commit():
    block = re.search(r"# EVOLVE-BLOCK-START\n(.*?)# EVOLVE-BLOCK-END", PROGRAM, re.S).group(1)
    pasted = "```python\n<<<<<<< SEARCH\n" + block + "=======\n" + block + ">>>>>>> REPLACE\n```\n"
    with pytest.raises(MutationRejected, match="^edit markers in the code"):
        edits.apply(pasted, FILES, "rewrite")
    junk = "```python\nTraceback (most recent call last):\n  File \"x\", line 1\nAssertionError: mismatch\n```\n"
    with pytest.raises(MutationRejected, match="^code does not parse: prog.py line"):
        edits.apply(junk, FILES, "rewrite")


def test_both_styles_of_response_format_carry_the_schema():
    schema = structured.schema(FILES)
    assert structured.response_format(schema, "json_schema") == {
        "type": "json_schema", "json_schema": {"name": "edit", "schema": schema, "strict": True}}
    assert structured.response_format(schema, "json_object") == {"type": "json_object", "schema": schema}


# --- whole runs against a server ----------------------------------------------------------------


def json_config(url: str, extra: str = "", models: str = "") -> str:
    return model_config(url, "  edit_format: json\n  concurrency: 1\n" + extra, models)


def choose(request) -> Reply:
    """A model held to the schema: one of the tunables offered, at its first offered value."""
    schema = request.body["response_format"].get("schema") or request.body["response_format"]["json_schema"]["schema"]
    choices = offered(schema)
    name = sorted(choices)[len(request.user) % len(choices)]
    return Reply(reply(summary="Try one", tunables={name: choices[name][0]}))


@pytest.mark.parametrize("status", [500, 422, 400])  # 500: what llama-cpp-python 0.3.36 answers
def test_a_json_run_sends_the_schema_and_falls_back_to_the_form_the_server_takes(tmp_path, status):
    def llama_cpp_python(request):  # its pydantic model has type: Literal["text", "json_object"]
        if request.body["response_format"]["type"] != "json_object":
            return Status(status, "1 validation error: {'type': 'literal_error', 'loc': ('body', 'response_format', "
                                  "'type'), 'msg': \"Input should be 'text' or 'json_object'\"}")
        return choose(request)

    with FakeOpenAI(llama_cpp_python) as server:
        repo = make_repo(tmp_path / "repo", config=json_config(server.url))
        done = ok(gitevolve(repo, "run", "--iterations", "3", "--islands", "1", env=KEY))
        forms = [r.body["response_format"]["type"] for r in server.requests]
    assert forms[0] == "json_schema" and set(forms[1:]) == {"json_object"}, forms
    assert "sending json_object with the schema instead" in done.stdout + done.stderr
    board = json.loads(ok(gitevolve(repo, "status", "--json")).stdout)
    model = board["models"][0]
    failed = [kind for kind in model.get("failures", {}) if kind.startswith("model")]
    assert model["calls"] == len(forms) - 1 and not failed, "the refused form is not a failed call"
    assert board["islands"][0]["candidates"] >= 3


def test_each_call_is_one_line_of_the_run_applied_or_refused(tmp_path):
    replies = iter([Reply(reply(tunables={"A": 9})), Reply(reply(tunables={"A": 3}), prompt_tokens=1234, completion_tokens=56)])
    with FakeOpenAI(lambda request: next(replies)) as server:
        repo = make_repo(tmp_path / "repo", config=json_config(server.url, models="    - {name: small}"))
        done = gitevolve(repo, "run", "--iterations", "2", "--islands", "1", env=KEY)
    out = done.stdout + done.stderr
    assert re.search(r"model small: [0-9.]+ s, 100 -> 50 tokens, refused: value not a choice: A may be", out), out
    assert re.search(r"model small: [0-9.]+ s, 1,234 -> 56 tokens, applied: Set A 1 -> 3", out), out


def test_refused_replies_in_a_row_warn_then_stop_the_run_in_one_line(tmp_path):
    with FakeOpenAI(lambda request: Reply("I cannot help with that.")) as server:
        repo = make_repo(tmp_path / "repo", config=json_config(server.url, "  stop_after_refusals: 4\n"))
        done = gitevolve(repo, "run", "--iterations", "50", "--islands", "1", env=KEY)
        calls = len(server.requests)
    out = done.stdout + done.stderr
    assert done.returncode == 1 and calls == 4, (calls, out)
    assert "warning: 2 model replies in a row were refused" in out
    assert "gitevolve: 4 model replies in a row were refused (the last: unparsable reply" in out
    assert "Traceback" not in out


@pytest.mark.parametrize("body, content_type, said", [
    (b"<html><body>502 Bad Gateway</body></html>", "text/html", "an HTML page"),
    (b"", "text/plain", "an empty body"),
    (b"data: {\"choices\": []}\n\n", "text/event-stream", "a stream, where none was asked"),
    (b"{\"id\": \"x\"}", "application/json", "without a chat completion"),
    (b"not json at all", "application/json", "a body that is not JSON"),
])
def test_a_200_that_is_no_completion_is_a_counted_failure_never_a_traceback(tmp_path, body, content_type, said):
    with FakeOpenAI(lambda request: Garbled(body, content_type)) as server:
        repo = make_repo(tmp_path / "repo", config=json_config(server.url, "  stop_after_failures: 3\n",
                                                                "    - {name: only}"))
        done = gitevolve(repo, "run", "--iterations", "10", "--islands", "1", env=KEY)
        calls = len(server.requests)
    out = done.stdout + done.stderr
    assert "Traceback" not in out and said in out, out
    assert calls == 3, "not retried: the same server gives the same body"
    board = json.loads(ok(gitevolve(repo, "status", "--json")).stdout)
    assert board["models"][0]["calls"] == calls and board["models"][0]["failures"] == {"model bad response": calls}


def test_a_prompt_over_the_context_is_named_and_the_next_one_is_made_to_fit(tmp_path):
    def small_context(request):
        asked = sum(len(m["content"]) for m in request.body["messages"]) // 3
        if asked > 700:
            return Status(400, f"This model's maximum context length is 1024 tokens. However, you requested "
                               f"{asked + 256} tokens ({asked} in the messages, 256 in the completion).")
        return choose(request)

    with FakeOpenAI(small_context) as server:
        program = PROGRAM.replace("# EVOLVE-BLOCK-END", "# EVOLVE-BLOCK-END\n" + "# padding\n" * 40)
        repo = make_repo(tmp_path / "repo", config=json_config(server.url, "  retries: 0\n",
                                                                "    - {name: small, max_tokens: 256}"),
                         program=program)
        done = gitevolve(repo, "run", "--iterations", "6", "--islands", "1", env=KEY)
        sizes = [sum(len(m["content"]) for m in r.body["messages"]) for r in server.requests]
    out = done.stdout + done.stderr
    assert "model context_length_exceeded: small: This model's maximum context length is 1024 tokens" in out, out
    assert "model HTTP 400" not in out
    assert len(sizes) >= 2 and all(size < sizes[0] for size in sizes[1:]), sizes  # learnt once, then cut to fit
    board = json.loads(ok(gitevolve(repo, "status", "--json")).stdout)
    assert board["models"][0]["failures"].get("model context_length_exceeded", 0) >= 1


def test_a_reply_cut_at_the_context_window_is_not_blamed_on_max_tokens(tmp_path):
    cut = Reply('{"summary": "s", "rationale": "r", "tunables": {"A": 2', finish_reason="length",
                prompt_tokens=3800, completion_tokens=296)
    with FakeOpenAI(lambda request: cut) as server:
        models = "    - {name: known, context: 4096, max_tokens: 2048}\n    - {name: unknown, max_tokens: 2048}"
        repo = make_repo(tmp_path / "repo", config=json_config(server.url, "  stop_after_refusals: 6\n", models))
        done = gitevolve(repo, "run", "--iterations", "6", "--islands", "1", env=KEY)
    out = done.stdout + done.stderr
    assert "cut off at the model's context window: 3,800 prompt tokens left 296 of the 4,096" in out, out
    assert "the server cut the reply off at 296 tokens, under max_tokens 2,048: its context window" in out, out
    assert "cut off at max_tokens" not in out


def test_a_value_that_would_rebuild_a_setting_the_island_measured_is_not_offered():
    measured = [{"A": 1, "B": "slow", "C": 0.5}, {"A": 2, "B": "slow", "C": 0.5}, {"A": 1, "B": "fast", "C": 0.9}]
    assert offered(structured.schema(FILES, measured)) == {"A": [3, 4, 5], "B": ["medium", "fast"], "C": [0.1, 0.9]}
    every = [{"A": a, "B": b, "C": c} for a in range(1, 6) for b in ("slow", "medium", "fast") for c in (0.1, 0.5, 0.9)]
    plain = structured.schema(FILES, every)
    assert "tunables" not in plain["properties"] and plain["properties"]["edits"]["minItems"] == 1
