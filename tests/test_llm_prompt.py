"""Prompts built from git: `gitevolve prompt` on a real run, templates, and the ledger they read."""

import json

import pytest

from conftest import CONFIG, HOOK, git, gitevolve, make_repo
from gitevolve.llm.ledger import Ledger, read
from gitevolve.store import Store
from test_run import notes, ok

# Every candidate reports an artifact, and B=medium fails: runs hold artifacts and failures.
CHATTY = HOOK.replace('if p["A"] == 5 and p["B"] == "fast":', 'if p["B"] == "medium":').replace(
    '"metrics": {"a": p["A"], "b": p["B"]}}', '"metrics": {"a": p["A"], "b": p["B"]}, "artifacts": {"profile": "took the slow path"}}')
LLM = "llm:\n  api_base: http://127.0.0.1:9/v1\n  models: [{name: flash}]\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    repo = make_repo(tmp_path_factory.mktemp("prompt") / "repo", hook=CHATTY)
    ok(gitevolve(repo, "run", "--iterations", "12"))
    return repo, notes(repo)


def prompt(repo, *args) -> str:
    return ok(gitevolve(repo, "prompt", *args)).stdout


def test_the_prompt_holds_the_parent_its_score_its_history_and_how_to_reply(run):
    repo, scored = run
    champion = git(repo, "rev-parse", "gitevolve/island-0").strip()
    text = prompt(repo, "gitevolve/island-0")
    system, user = text.split("=== user ===\n")
    assert system.startswith("=== system ===\nYou are an expert performance engineer")
    note = scored[champion]
    assert f"# Current program: commit {champion[:10]} (island 0)" in user
    assert f"Status ok, score {note['score']:.6g}" in user and f"- a: {note['metrics']['a']}" in user
    program = git(repo, "show", f"{champion}:prog.py")
    assert user.count(program.rstrip("\n")) == 1  # the parent's code in full, once
    assert user.count("def value():") == 1  # and nobody else's: others are diffs
    assert "Only the lines between EVOLVE-BLOCK-START and EVOLVE-BLOCK-END may change" in user
    assert "<<<<<<< SEARCH" in user and "SUMMARY:" in user and "RATIONALE:" in user
    assert "# What the evaluator reported for this program\n\n## profile\n\n```\ntook the slow path\n```" in user
    messages = json.loads(prompt(repo, "--json", "gitevolve/island-0"))
    assert [m["role"] for m in messages] == ["system", "user"] and messages[1]["content"].strip() == user.strip()


def test_the_lineage_lists_each_ancestor_with_its_score_change(run):
    repo, scored = run
    base = git(repo, "rev-parse", "main").strip()
    deep = next(s for s, n in scored.items() if n["status"] == "ok" and n["parent"] not in (None, base)
                and scored[n["parent"]]["status"] == "ok")
    note, parent = scored[deep], scored[scored[deep]["parent"]]
    user = prompt(repo, deep)
    subject = git(repo, "log", "-1", "--format=%s", deep).strip()
    assert f"- {deep[:10]}  score {note['score']:.6g} ({note['score'] - parent['score']:+.4g})  {subject}" in user
    assert f"- {base[:10]}  score 1.5  Toy program (base)" in user


def test_what_was_tried_from_a_parent_is_listed_with_its_outcome(run):
    repo, scored = run
    def recent(sha, note):  # among the 6 latest children of its parent, the ones a prompt lists
        siblings = sorted((n["iteration"] or 0, s) for s, n in scored.items() if n["parent"] == note["parent"])
        return (note["iteration"] or 0, sha) in siblings[-6:]

    failed = sorted((s, n) for s, n in scored.items() if n["status"] == "failed" and recent(s, n))
    assert failed, "the fixture run should hold a failed candidate"
    sha, note = failed[0]
    user = prompt(repo, note["parent"])
    section = user.split("# Already tried from this program (do not repeat these)")[1].split("\n# ")[0]
    subject = git(repo, "log", "-1", "--format=%s", sha).strip()
    assert f"- {sha[:10]}  failed ({note['reason']})  {subject}" in section


def test_other_islands_show_as_diffs_and_can_be_turned_off(run, tmp_path):
    repo, scored = run
    champions = {k: git(repo, "rev-parse", f"gitevolve/island-{k}").strip() for k in range(3)}
    trees = {git(repo, "rev-parse", f"{sha}^{{tree}}").strip() for sha in champions.values()}
    # A candidate of island 0 whose code no champion has: the best other island's champion differs from it.
    weaker = next(s for s, n in scored.items() if n["island"] == 0 and n["status"] == "ok" and n["tree"] not in trees)
    best = max((k for k in (1, 2)), key=lambda k: (scored[champions[k]]["score"], -k))
    user = prompt(repo, weaker)
    assert "# Other candidates, as diffs from the current program" in user and "```diff\n--- a/prog.py" in user
    assert f"## {champions[best][:10]}, best of island {best}: score" in user and user.count("best of island") == 1
    (repo / ".gitevolve.yml").write_text(CONFIG + LLM + "  prompt: {other_islands: 0, lineage: 0, attempts: 0}\n")
    try:
        user = prompt(repo, weaker)
    finally:
        (repo / ".gitevolve.yml").write_text(CONFIG)
    assert "best of island" not in user and "# How this program came about" not in user


def test_system_message_rewrite_format_and_overridden_templates(tmp_path):
    repo = make_repo(tmp_path / "repo")
    (repo / "prompts").mkdir()
    (repo / "prompts" / "user.txt").write_text("Kernel task.\n\n$program\n\n$artifacts\n\n$format\n")
    config = CONFIG + LLM + "  edit_format: rewrite\n  prompt:\n    templates: prompts\n    system_message: |\n      Apple M-series GPU, SIMD width 8.\n"
    (repo / ".gitevolve.yml").write_text(config)
    text = prompt(repo, "main")  # before any run: its code and history still make a prompt
    assert "Apple M-series GPU, SIMD width 8." in text.split("=== user ===")[0]
    user = text.split("=== user ===\n")[1]
    assert user.startswith("Kernel task.\n\n# Current program: commit") and "Not evaluated yet." in user
    assert "```\n\n# Your reply" in user  # the empty artifacts section left no gap
    assert "the EVOLVE-BLOCK (prog.py lines 5-9), each in its own fenced code block" in user

    (repo / "prompts" / "user.txt").write_text("$program $lineage $nonsense\n")
    done = gitevolve(repo, "prompt", "main")
    assert done.returncode == 1 and "template user.txt: unknown placeholder $nonsense (known: $task, $program" in done.stderr
    (repo / "prompts" / "user.txt").unlink()
    (repo / "prompts" / "sytem.txt").write_text("x\n")
    done = gitevolve(repo, "prompt", "main")
    assert done.returncode == 1 and "prompts/sytem.txt: not a template gitevolve uses" in done.stderr


def test_the_ledger_survives_a_second_writer(repo):
    one, two = Ledger(Store(repo)), Ledger(Store(repo))
    one.record("flash", attempts=2, prompt_tokens=10, completion_tokens=3, seconds=1.5, replied=True, proposed=True)
    # `two` read the ledger before `one` wrote: its compare-and-swap fails, it re-reads and adds on top.
    two.record("flash", attempts=1, replied=True, failure="SEARCH not found", parent="a" * 40, reason="SEARCH not found: x")
    _, state = read(Store(repo))
    assert state["models"]["flash"] == {"calls": 2, "replies": 2, "proposals": 1, "retries": 1, "prompt_tokens": 10,
                                        "completion_tokens": 3, "seconds": 1.5, "failures": {"SEARCH not found": 1}}
    assert [f["reason"] for f in state["feedback"]["a" * 40]] == ["SEARCH not found: x"]
    for n in range(5):
        two.record("pro", attempts=1, replied=True, failure="empty reply", parent="a" * 40, reason=f"empty reply: {n}")
    assert [f["reason"] for f in two.feedback("a" * 40)] == ["empty reply: 2", "empty reply: 3", "empty reply: 4"]


def test_the_prompt_shows_what_each_tunable_s_values_scored_on_the_island(run):
    repo, scored = run
    champion = git(repo, "rev-parse", "gitevolve/island-0").strip()
    user = prompt(repo, "gitevolve/island-0").split("=== user ===\n")[1]
    assert "# The tunables, as this island has tried them" in user
    island = [n for n in scored.values() if n["island"] == 0 and n["status"] != "pending"]
    b_medium = [n for n in island if n["settings"]["B"] == "medium"]
    assert b_medium and all(n["status"] == "failed" for n in b_medium)  # CHATTY fails B=medium
    line = next(line for line in user.splitlines() if line.startswith("- B: "))
    assert f"'medium': {len(b_medium)} ({len(b_medium)})" in line  # tried, all of them failed
    current = scored[champion]["settings"]["B"]
    assert f"{current!r}*:" in line  # the champion's own value is marked
