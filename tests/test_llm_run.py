"""Whole runs with a model operator, through the real command line, against a local fake endpoint."""

import importlib.util
import itertools
import json
import re
import threading

import pytest

from conftest import CONFIG, HOOK, ROOT, git, gitevolve, make_repo
from openai_server import FakeOpenAI, Reply, Stall, Status
from test_run import notes, ok, pins

KEY = {"TEST_MODEL_KEY": "sk-test-key"}


def model_config(url: str, extra: str = "", models: str = "") -> str:
    return CONFIG + f"""\
llm:
  api_base: {url}
  api_key_env: TEST_MODEL_KEY
  backoff: 0.01
  max_backoff: 0.05
  models:
{models or '''    - {name: flash, weight: 3, timeout: 1.5}
    - {name: pro, weight: 2, timeout: 1.5}'''}
{extra}"""


class Edits:
    """A model that sets C to a new value at every call, read off the prompt's current program."""

    def __init__(self, edit_format: str = "diff", delay: float = 0.0) -> None:
        self.calls = itertools.count(1)
        self.lock = threading.Lock()
        self.edit_format, self.delay = edit_format, delay

    def __call__(self, request) -> Reply:
        with self.lock:
            k = next(self.calls)
        current = re.search(r"^C = ([0-9.]+)(.*)$", request.user, re.M)
        value = f"{1 + k / 100:.2f}"  # never the same twice, so no two calls make the same tree
        line = f"C = {value}{current.group(2)}"
        head = f"SUMMARY: Set C to {value}\nRATIONALE: C adds to the score one for one (call {k}).\n\n"
        if self.edit_format == "diff":
            edit = f"<<<<<<< SEARCH\n{current.group(0)}\n=======\n{line}\n>>>>>>> REPLACE\n"
        else:
            block = re.search(r"# EVOLVE-BLOCK-START\n(.*?)# EVOLVE-BLOCK-END", request.user, re.S).group(1)
            edit = "```python\n" + block.replace(current.group(0), line) + "```\n"
        return Reply(head + edit, prompt_tokens=1000 + k, completion_tokens=k, delay=self.delay)


BAD_REPLIES = [
    Reply("SUMMARY: Tweak\n<<<<<<< SEARCH\nC = 0.123\n=======\nC = 1\n>>>>>>> REPLACE\n"),
    Reply("SUMMARY: Import os\n<<<<<<< SEARCH\nimport math\n=======\nimport math, os\n>>>>>>> REPLACE\n"),
    Reply(""),
    Reply("SUMMARY: Half\n<<<<<<< SEARCH\nA = 1\n"),
    Reply("SUMMARY: Prose\nI would make C larger."),
]
KINDS = ["SEARCH not found", "edit outside EVOLVE-BLOCK", "empty reply", "unparsable reply", "no edit in the reply"]


def test_a_model_run_commits_the_replies_and_counts_every_bad_one(tmp_path):
    edits = Edits(delay=0.2)
    with FakeOpenAI(edits) as server:
        server.script = [Status(429, "slow down", {"Retry-After": "0"}), Status(500), Stall(3.0), *BAD_REPLIES]
        hook = HOOK.replace('"b": p["B"]}', '"b": p["B"], "c": p["C"], "saw_key": "TEST_MODEL_KEY" in os.environ}')
        repo = make_repo(tmp_path / "repo", config=model_config(server.url), hook=hook)
        done = ok(gitevolve(repo, "run", "--iterations", "12", env=KEY))
    assert "Mutating with flash (60%), pro (40%)" in done.stdout
    for kind in KINDS:
        assert f"1 {kind}" in done.stdout.split("no candidate from:")[1]

    scored = notes(repo)
    made = {sha: n for sha, n in scored.items() if n["operator"].startswith("llm:")}
    good = next(edits.calls) - 1
    assert made and len(made) == good  # every good reply, and nothing else, became a commit
    for sha, note in made.items():
        model, meta = note["operator"].removeprefix("llm:"), note["mutation"]
        k = meta["completion_tokens"]
        message = git(repo, "log", "-1", "--format=%B", sha)
        assert message.startswith(f"Set C to {1 + k / 100:.2f}\n\nC adds to the score one for one (call {k}).\n")
        assert f"Gitevolve-Operator: llm:{model}\n" in message
        assert meta["model"] == model and meta["prompt_tokens"] == 1000 + k and meta["seconds"] > 0
        assert meta["edit_format"] == "diff" and meta["edits"] == 1
        changed = git(repo, "diff", "--unified=0", note["parent"], sha).splitlines()
        assert [line[0] for line in changed if line[:1] in "+-" and not line.startswith(("+++", "---"))] == ["-", "+"]
        # The evaluator scored the model's code: A + B's bonus + the C the reply set.
        bonus = {"slow": 0, "medium": 1, "fast": 2}[note["metrics"]["b"]]
        assert note["score"] == pytest.approx(note["metrics"]["a"] + bonus + 1 + k / 100)
    assert server.most_in_flight == 2  # the batch's two calls went out together
    for sha, note in scored.items():  # every score, migrations' included, is of the commit's own code
        if note["status"] == "ok":
            assert note["metrics"]["saw_key"] is False  # the model's key is not the evaluator's business
            code = git(repo, "show", f"{sha}:prog.py")
            assert f"\nA = {note['metrics']['a']} " in code and f"\nB = \"{note['metrics']['b']}\"" in code
            assert f"\nC = {note['metrics']['c']} " in code

    board = json.loads(ok(gitevolve(repo, "status", "--json")).stdout)
    models = {m["model"]: m for m in board["models"]}
    assert sum(m["calls"] for m in models.values()) == good + len(BAD_REPLIES)
    assert sum(m["retries"] for m in models.values()) == 3
    assert sorted(kind for m in models.values() for kind in m["failures"]) == sorted(KINDS)
    assert sum(m["prompt_tokens"] for m in models.values()) == sum(n["mutation"]["prompt_tokens"] for n in made.values()) + 5 * 100
    assert sum(m["candidates"] for m in models.values()) == len(made)
    table = ok(gitevolve(repo, "status")).stdout
    assert "tokens in / out" in table and "flash" in table
    git(repo, "fsck", "--strict")


def test_a_refused_reply_is_told_to_the_next_prompt_for_that_parent(tmp_path):
    with FakeOpenAI(Edits()) as server:
        server.script = [BAD_REPLIES[0]]
        config = model_config(server.url).replace("islands: 3", "islands: 1").replace("workers: 2", "workers: 1")
        repo = make_repo(tmp_path / "repo", config=config)
        ok(gitevolve(repo, "run", "--iterations", "2", env=KEY))
    first, second = server.requests[0].user, server.requests[1].user
    assert "could not be applied" not in first
    assert "- a reply that could not be applied (flash): SEARCH not found: block 1: `C = 0.123` does not occur" in second
    base = git(repo, "rev-parse", "main").strip()
    ledger = json.loads(git(repo, "cat-file", "blob", "refs/gitevolve/default/llm"))
    assert [f["kind"] for f in ledger["feedback"][base]] == ["SEARCH not found"]
    # Kept in git, so a later `gitevolve prompt` (or run) for the same parent says it too.
    assert "SEARCH not found: block 1" in ok(gitevolve(repo, "prompt", "main")).stdout


@pytest.mark.parametrize(
    ("status", "message"),
    [(401, r"refused the key in \$TEST_MODEL_KEY \(HTTP 401: bad key\)"), (404, r"model '(flash|pro)' was not found at")],
)
def test_a_wrong_key_or_model_stops_the_run_cleanly(tmp_path, status, message):
    with FakeOpenAI(Edits()) as server:
        server.script = [Status(status, "bad key")] * 2
        repo = make_repo(tmp_path / "repo", config=model_config(server.url))
        done = gitevolve(repo, "run", env=KEY)
    assert done.returncode == 1 and re.search(message, done.stderr) and len(done.stderr.strip().splitlines()) == 1
    assert len(server.requests) <= 2 and pins(repo) == []  # stopped at once; nothing committed but the scored base


def test_the_key_never_comes_from_the_config(tmp_path):
    repo = make_repo(tmp_path / "repo", config=model_config("http://127.0.0.1:9/v1").replace("  api_key_env: TEST_MODEL_KEY\n", "  api_key: sk-live-123\n"))
    done = gitevolve(repo, "run")
    assert done.returncode == 1 and "llm: api_key: a key written into .gitevolve.yml would land in a commit" in done.stderr
    git(repo, "commit", "-qam", "use a variable", "--allow-empty")
    (repo / ".gitevolve.yml").write_text(model_config("http://127.0.0.1:9/v1"))
    done = gitevolve(repo, "run", env={"TEST_MODEL_KEY": ""})
    assert done.returncode == 1 and "TEST_MODEL_KEY is not set: export it" in done.stderr


def rewriting_run(tmp_path, mutation: str, iterations: int):
    """A run whose model rewrites the block (Edits), with `mutation` as the config's mutation section."""
    with FakeOpenAI(Edits("rewrite")) as server:
        extra = f"  edit_format: rewrite\nmutation: {mutation}\n"
        repo = make_repo(tmp_path / "repo", config=model_config(server.url, extra))
        done = ok(gitevolve(repo, "run", "--iterations", str(iterations), env=KEY))
    return repo, server, done


def test_rewrites_and_the_built_in_operator_share_a_run(tmp_path):
    repo, server, done = rewriting_run(tmp_path, "{builtin_share: 0.5}", 12)
    assert "50% of mutations by the search operator" in done.stdout
    operators = {n["operator"].split(":")[0] for n in notes(repo).values()}
    assert {"llm", "search"} <= operators
    assert "the EVOLVE-BLOCK (prog.py lines 5-9)" in server.requests[0].user
    for sha, note in notes(repo).items():
        if note["operator"].startswith("llm:"):
            assert note["mutation"]["edit_format"] == "rewrite"
            assert git(repo, "diff", "--stat", note["parent"], sha).strip().startswith("prog.py | 2 +-")


def test_the_operator_mix_gives_each_operator_its_weight_of_the_mutations(tmp_path):
    repo, server, done = rewriting_run(tmp_path, "{weights: {llm: 1, search: 1, tunables: 1}}", 18)
    assert "33% of mutations by the search operator" in done.stdout
    assert "33% of mutations by the built-in tunables operator" in done.stdout
    operators = [n["operator"].split(":")[0] for n in notes(repo).values() if n["iteration"] is not None]
    assert {"llm", "search", "tunables"} <= set(operators)
    # The model's calls are the llm's mutations, and nothing else asked it.
    assert len(server.requests) == operators.count("llm")


EXAMPLE = ROOT / "examples" / "gqa-mlx" / "attention.py"


@pytest.mark.slow  # one of the suite's slowest (20-40 s): pytest -m 'not slow' leaves it out
@pytest.mark.skipif(not EXAMPLE.is_file() or importlib.util.find_spec("mlx") is None, reason="needs the gqa-mlx example and mlx")
def test_a_model_edits_the_gqa_kernel_example(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch=main")
    git(repo, "config", "user.name", "t")
    git(repo, "config", "user.email", "t@t")
    git(repo, "commit", "--quiet", "--allow-empty", "-m", "start")
    ok(gitevolve(repo, "init", "--example", "gqa-mlx"))
    flips = iter([('SOFTMAX = "manual"', 'SOFTMAX = "fused"'), ('GROUPING = "repeat"', 'GROUPING = "broadcast"')])

    def respond(request):
        old, new = next(flips)
        line = next(x for x in request.user.splitlines() if x.startswith(old))
        return Reply(f"SUMMARY: Use {new}\nRATIONALE: One kernel instead of several.\n\n"
                     f"<<<<<<< SEARCH\n{line}\n=======\n{line.replace(old, new)}\n>>>>>>> REPLACE\n")

    with FakeOpenAI(respond) as server:
        config = re.sub(r"operator: \w+", "operator: llm", (repo / ".gitevolve.yml").read_text())
        config = re.sub(r"--seconds [0-9.]+", "--seconds 0.1", config)
        config = re.sub(r"remeasure: \d+", "remeasure: 0", config)  # what this test asks of the model needs no duel
        config = re.sub(r", within: [0-9.]+", "", config)  # nor a bar that a loaded machine's noise can miss
        assert "remeasure: 0" in config
        system = "  prompt:\n    system_message: GQA attention under MLX; Qwen3-0.6B has 16 query heads and 8 KV heads.\n"
        (repo / ".gitevolve.yml").write_text(model_config(server.url, system, "    - {name: flash, timeout: 5}").replace(CONFIG, config))
        git(repo, "commit", "--quiet", "-am", "Use a model")
        ok(gitevolve(repo, "run", "--islands", "1", "--workers", "1", "--iterations", "2", env=KEY, timeout=300))
    assert "Qwen3-0.6B has 16 query heads" in server.requests[0].system and "## attention.py" in server.requests[0].user
    made = sorted((n["iteration"], n["status"], n["subject"]) for n in notes(repo).values() if n["operator"] == "llm:flash")
    assert made == [(1, "ok", 'Use SOFTMAX = "fused"'), (2, "ok", 'Use GROUPING = "broadcast"')]


class SameEdit:
    """A model stuck between two programs: C to 0.9, and from 0.9 back to 0.5 (the base's)."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, request) -> Reply:
        with self.lock:
            self.prompts.append(request.user)
        current = re.search(r"^C = ([0-9.]+)(.*)$", request.user, re.M)
        value = "0.5" if current.group(1) == "0.9" else "0.9"
        return Reply(f"SUMMARY: Set C to {value}\nRATIONALE: try it.\n\n<<<<<<< SEARCH\n{current.group(0)}\n=======\n"
                     f"C = {value}{current.group(2)}\n>>>>>>> REPLACE\n")


def test_a_model_repeating_a_program_is_asked_once_more_and_told_why(tmp_path):
    model = SameEdit()
    with FakeOpenAI(model) as server:
        repo = make_repo(tmp_path / "repo", config=model_config(server.url))
        done = ok(gitevolve(repo, "run", "--islands", "1", "--workers", "1", "--iterations", "4", env=KEY))
    made = [n for n in notes(repo).values() if n["operator"].startswith("llm:")]
    assert len(made) == 1, "one program with C = 0.9 on the island, however often it is proposed"
    assert "duplicate" in done.stdout.split("no candidate from:")[1]
    assert len(model.prompts) <= 1 + 2 * 3, "a duplicate is asked again once, not eight times"
    told = [p for p in model.prompts if "has already evaluated" in p]
    assert told, "the next prompt for that parent says why the last reply made no candidate"
    board = json.loads(ok(gitevolve(repo, "status", "--json")).stdout)
    failures = {m["model"]: m["failures"] for m in board["models"]}
    assert sum(f.get("duplicate", 0) for f in failures.values()) >= 1


def test_a_reply_cut_off_at_max_tokens_is_refused_saying_so(tmp_path):
    cut = Reply("SUMMARY: Set C\n<<<<<<< SEARCH\nC = 0.5", finish_reason="length", completion_tokens=8192)
    with FakeOpenAI(lambda request: cut) as server:
        repo = make_repo(tmp_path / "repo", config=model_config(server.url, "  stop_after_failures: 50\n"))
        gitevolve(repo, "run", "--iterations", "2", env=KEY)
        status = ok(gitevolve(repo, "status")).stdout
        prompt = ok(gitevolve(repo, "prompt", "gitevolve/island-0")).stdout
    assert "(the reply was cut off at max_tokens, 8,192)" in prompt  # the next prompt tells the model why
    assert "unparsable reply" in status


def test_what_the_client_retries_is_shown_while_it_does(tmp_path):
    with FakeOpenAI() as server:
        server.script = [Status(503, "overloaded"), Reply("SUMMARY: x\n<<<<<<< SEARCH\nC = 0.5\n=======\nC = 0.9\n>>>>>>> REPLACE\n")]
        repo = make_repo(tmp_path / "repo", config=model_config(server.url, "  concurrency: 1\n"))
        done = gitevolve(repo, "run", "--iterations", "1", "--islands", "1", env=KEY)
    assert "model HTTP 503 (overloaded); retrying in" in done.stdout and "(attempt 2 of 5)" in done.stdout
