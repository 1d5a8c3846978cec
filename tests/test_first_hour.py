"""The traps of a newcomer's first hour (issue 17), each reproduced on a real repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import CONFIG, HOOK, IDENTITY, ROOT, git, gitevolve, make_repo
from test_run import notes, ok

# The hook fails while TOY_BROKEN is set: mlx not installed yet, a typo since fixed.
BROKEN_UNTIL_FIXED = HOOK.replace('p = runpy.run_path("prog.py")\n', '''p = runpy.run_path("prog.py")
if os.environ.get("TOY_BROKEN"):
    print("ModuleNotFoundError: No module named 'mlx'", file=sys.stderr)
    sys.exit(1)
''')


def failed(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    return done.stderr


def test_a_base_that_failed_is_evaluated_again_once_the_user_says_it_is_fixed(repo):
    (repo / "score.py").write_text(BROKEN_UNTIL_FIXED)
    git(repo, "commit", "--quiet", "-am", "A hook that needs mlx")
    first = failed(gitevolve(repo, "run", env={"TOY_BROKEN": "1"}))
    assert "starting commit" in first and "No module named 'mlx'" in first and "--retry-failed" in first
    # Fixed (installed), but the note of the failure stands until the user says so: the hook is
    # not rerun on every start for nothing, and the message says how.
    again = failed(gitevolve(repo, "run"))
    assert "No module named 'mlx'" in again and "gitevolve run --retry-failed" in again
    done = ok(gitevolve(repo, "run", "--retry-failed", "--iterations", "3"))
    assert "Evaluating the starting commit" in done.stdout and "again: --retry-failed" in done.stdout
    scored = notes(repo)
    base = git(repo, "rev-parse", "refs/gitevolve/default/base").strip()
    assert scored[base]["status"] == "ok" and len(scored) == 1 + 3


def test_a_changed_evaluator_section_evaluates_a_failed_base_again_by_itself(repo):
    (repo / "score.py").write_text(BROKEN_UNTIL_FIXED)
    git(repo, "commit", "--quiet", "-am", "A hook that needs mlx")
    failed(gitevolve(repo, "run", env={"TOY_BROKEN": "1"}))
    (repo / ".gitevolve.yml").write_text(CONFIG.replace("timeout: 20", "timeout: 25"))
    # Uncommitted, the edit is not the run's: the candidates would carry the committed settings.
    dirty = failed(gitevolve(repo, "run", "--iterations", "2"))
    assert ".gitevolve.yml: uncommitted changes" in dirty and "git commit .gitevolve.yml" in dirty
    git(repo, "commit", "--quiet", "-am", "A longer timeout")
    done = ok(gitevolve(repo, "run", "--iterations", "2"))
    assert "again: the evaluator section changed since it failed" in done.stdout
    # A base that passed is never evaluated again, whatever the flag.
    again = ok(gitevolve(repo, "run", "--retry-failed", "--iterations", "1"))
    assert "Evaluating the starting commit" not in again.stdout


def test_runs_lists_the_runs_and_forget_drops_one_and_says_how_to_bring_it_back(repo):
    ok(gitevolve(repo, "run", "--iterations", "3"))
    ok(gitevolve(repo, "run", "--iterations", "3", "--run", "fast", "--islands", "2"))
    listed = ok(gitevolve(repo, "runs")).stdout
    assert listed.index("default") < listed.index("fast") and "candidates" in listed
    default_refs = git(repo, "for-each-ref", "refs/gitevolve/default/", "refs/heads/gitevolve/island-0")

    refused = subprocess.run([sys.executable, "-m", "gitevolve", "forget", "fast"], cwd=repo, input="n\n",
                             capture_output=True, text=True, env={**subprocess.os.environ, **IDENTITY})
    assert refused.returncode == 1 and "fast" in ok(gitevolve(repo, "runs")).stdout  # asked, said no: kept

    gone = ok(gitevolve(repo, "forget", "fast", "--yes")).stdout
    assert "Forgot run 'fast'" in gone
    assert git(repo, "for-each-ref", "refs/gitevolve/fast/", "refs/heads/gitevolve/fast/", "refs/notes/gitevolve-fast") == ""
    assert git(repo, "for-each-ref", "refs/gitevolve/default/", "refs/heads/gitevolve/island-0") == default_refs
    missing = failed(gitevolve(repo, "status", "--run", "fast"))
    assert "no run 'fast' in this repository (runs here: default)" in missing and "gitevolve run --run fast" in missing

    # What it printed puts the run's branches, base and scores back.
    for line in gone.splitlines():
        if line.strip().startswith("git update-ref"):
            git(repo, *line.split()[1:])
    board = ok(gitevolve(repo, "status", "--run", "fast")).stdout
    assert "gitevolve/fast/island-1" in board


def test_forget_of_a_run_that_is_not_there_names_the_ones_that_are(repo):
    ok(gitevolve(repo, "run", "--iterations", "1"))
    assert "no run 'nope' to forget (runs here: default)" in failed(gitevolve(repo, "forget", "nope", "--yes"))
    ok(gitevolve(repo, "forget", "default", "--yes"))
    assert "No run in this repository yet" in ok(gitevolve(repo, "runs")).stdout
    ok(gitevolve(repo, "run", "--iterations", "1"))  # a forgotten run starts afresh under its name
    assert len(notes(repo)) == 2


def test_a_program_with_nothing_to_evolve_is_refused_at_start_with_what_to_add(tmp_path):
    plain = "def value():\n    return 1.0\n"
    hook = HOOK.replace('p["value"]()', "1.0").replace('if p["A"] == 5 and p["B"] == "fast":', "if False:") \
               .replace('"metrics": {"a": p["A"], "b": p["B"]}', '"metrics": {}')
    repo = make_repo(tmp_path / "repo", program="# EVOLVE-BLOCK-START\nX = 1\n# EVOLVE-BLOCK-END\n" + plain, hook=hook)
    message = failed(gitevolve(repo, "run"))
    assert message.count("\n") == 1  # one line
    assert notes(repo) == {}  # refused before anything was evaluated
    assert "nothing to evolve: prog.py declare no tunables and no model is configured" in message
    assert "# gitevolve: choices=[32, 64, 128]" in message and "add an llm section" in message


def test_a_run_whose_every_model_reply_is_refused_exits_with_an_error(tmp_path):
    from openai_server import FakeOpenAI, Reply
    from test_llm_run import KEY, model_config

    with FakeOpenAI(lambda request: Reply("I would rather not change anything.")) as server:
        repo = make_repo(tmp_path / "repo", config=model_config(server.url, "  stop_after_failures: 50\n"))
        done = gitevolve(repo, "run", "--iterations", "3", env=KEY)
    message = failed(done)
    assert "no candidate was made: all 3 mutations failed (3 no edit in the reply)" in message
    assert "Done: 1 evaluated" in done.stdout  # the base, evaluated and kept


def test_the_command_line_s_own_errors_are_one_line_and_blame_the_flag(repo):
    assert ok(gitevolve(repo, "--version")).stdout.startswith("gitevolve ")
    for args, says in [(("run", "--islands", "x"), "Invalid value for '--islands'"),
                       (("run", "--nope"), "No such option: --nope"),
                       (("frob",), "No such command 'frob'")]:
        done = gitevolve(repo, *args)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith("gitevolve: ") and says in done.stderr and "--help" in done.stderr
    # A value the flag's type allows but the config does not: the flag is named, not the file.
    bad = failed(gitevolve(repo, "run", "--islands", "0"))
    assert bad.startswith("gitevolve: --islands: ") and ".gitevolve.yml" not in bad
    [flag] = [line for line in ok(gitevolve(repo, "status", "--help")).stdout.splitlines() if "--json" in line]
    assert "<bool>" not in flag  # a flag, not an option that takes a value
    helped = " ".join(ok(gitevolve(repo, "run", "--help")).stdout.split())
    for key, default in (("islands", 5), ("iterations", 40), ("workers", 1), ("seed", 0)):
        assert f"(default: {key} in .gitevolve.yml, else {default}" in helped  # where the value comes from


def test_a_fresh_run_says_it_evaluates_its_start_not_leftovers(repo):
    first = ok(gitevolve(repo, "run", "--iterations", "1")).stdout
    assert "Evaluating the starting commit" in first and "committed but not yet scored" not in first


def test_a_hand_tuned_commit_on_main_is_never_reverted_by_promote(repo):
    ok(gitevolve(repo, "run", "--iterations", "6"))
    base = git(repo, "rev-parse", "refs/gitevolve/default/base").strip()
    # Work beside the evolvable files is kept: the promoted commit goes on main.
    (repo / "notes.txt").write_text("the user's own change\n")
    git(repo, "commit", "--quiet", "-am", "Document the kernel")
    head = git(repo, "rev-parse", "HEAD").strip()
    done = ok(gitevolve(repo, "promote", "--repeats", "0"))
    assert "on top of main" in done.stdout
    promoted = git(repo, "rev-parse", "gitevolve/promoted").strip()
    assert git(repo, "rev-parse", f"{promoted}^").strip() == head
    assert git(repo, "show", f"{promoted}:notes.txt") == "the user's own change\n"

    # A hand-tuned change of the program itself: the run says so, and promote will not revert it.
    (repo / "prog.py").write_text((repo / "prog.py").read_text().replace("C = 0.5", "C = 0.9"))
    git(repo, "commit", "--quiet", "-am", "Hand-tune C")
    resumed = ok(gitevolve(repo, "run", "--iterations", "1")).stdout
    assert f"prog.py changed on main since this run's base {base[:10]}" in resumed and "gitevolve run --run NAME" in resumed
    refused = failed(gitevolve(repo, "promote", "--repeats", "0", "--force"))
    assert "prog.py changed on main since run 'default'" in refused and "would revert that" in refused
    assert git(repo, "rev-parse", "gitevolve/promoted").strip() == promoted  # untouched
    ok(gitevolve(repo, "promote", "--repeats", "0", "--force", "--on-base"))
    assert git(repo, "rev-parse", "gitevolve/promoted^").strip() == base


def test_the_end_of_a_run_and_status_give_the_gain_over_the_base_and_the_next_step(repo):
    done = ok(gitevolve(repo, "run", "--iterations", "6")).stdout
    board = json.loads(ok(gitevolve(repo, "status", "--json")).stdout)
    assert board["gain"] == pytest.approx(board["best_score"] / board["base_score"]) and board["gain"] > 1
    assert f"{board['gain']:.2f}x the base's" in ok(gitevolve(repo, "status")).stdout
    assert "x the base's 1.5000" in done and "Next: `gitevolve promote` measures it again" in done
    named = ok(gitevolve(repo, "run", "--iterations", "2", "--run", "other")).stdout
    assert "`gitevolve promote --run other`" in named


def test_the_promoted_commit_is_the_user_s_signed_where_their_config_says(repo):
    ok(gitevolve(repo, "run", "--iterations", "6"))
    ok(gitevolve(repo, "promote", "--repeats", "0", "--signoff"))
    # IDENTITY gives the tests' git user as t <t@t>: the commit is theirs, not gitevolve's.
    assert git(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>", "gitevolve/promoted").strip() == "t <t@t>|t <t@t>"
    assert git(repo, "log", "-1", "--format=%(trailers:key=Signed-off-by,valueonly)", "gitevolve/promoted").strip() == "t <t@t>"
    # A repository that signs its commits: promote signs too, and a signing that fails is one line.
    git(repo, "config", "commit.gpgSign", "true")
    git(repo, "config", "gpg.program", "false")
    refused = failed(gitevolve(repo, "promote", "--repeats", "0", "--force"))
    assert refused.startswith("gitevolve: git could not make the promoted commit (") and "commit.gpgSign" in refused


# Each evaluation logs the slot it ran in and the GPU it was given.
WHERE = HOOK.replace('p = runpy.run_path("prog.py")\n', '''p = runpy.run_path("prog.py")
with open(os.environ["TOY_LOG"], "a") as log:
    log.write(f'{os.environ["GITEVOLVE_WORKER"]} {os.environ.get("CUDA_VISIBLE_DEVICES", "-")} {os.environ["GITEVOLVE_PURPOSE"]}\\n')
''')


def test_each_worker_gets_its_slot_and_its_own_gpu(tmp_path):
    config = CONFIG + "devices: [3, 5]\nchampion: {remeasure: 1, sure: 0}\n"
    repo = make_repo(tmp_path / "repo", config=config, hook=WHERE)
    log = tmp_path / "where.log"
    ok(gitevolve(repo, "run", "--iterations", "12", env={"TOY_LOG": str(log)}))
    seen = [line.split() for line in log.read_text().splitlines()]
    assert {(w, d) for w, d, _ in seen} <= {("0", "3"), ("1", "5"), ("2", "3")}
    assert {w for w, _, p in seen if p == "evaluate"} == {"0", "1"}
    assert {w for w, _, p in seen if p == "remeasure"} == {"2"}  # a duel is a worker of its own


def test_a_new_config_from_init_times_one_evaluation_at_a_time(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "--quiet")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"  # what this machine's GPUs are, as init asks the driver's tool

    def init_with(gpus: list[str]) -> dict:
        smi.write_text("#!/bin/sh\n" + "".join(f"echo '{line}'\n" for line in gpus))
        smi.chmod(0o755)
        (repo / ".gitevolve.yml").unlink(missing_ok=True)
        ok(gitevolve(repo, "init", "--file", "prog.py", "--evaluator", "python score.py",
                     env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}))
        return yaml.safe_load((repo / ".gitevolve.yml").read_text())

    one = init_with(["GPU 0: NVIDIA H200 (UUID: GPU-a)"])
    assert one["workers"] == 1 and "devices" not in one
    assert "# devices: [0, 1]" in (repo / ".gitevolve.yml").read_text()  # and how to give each worker a GPU
    # With two GPUs, one worker per GPU, each on its own.
    two = init_with(["GPU 0: NVIDIA H200 (UUID: GPU-a)", "GPU 1: NVIDIA H200 (UUID: GPU-b)"])
    assert two["workers"] == 2 and two["devices"] == [0, 1]


def test_a_named_run_is_named_in_every_hint_and_found_from_its_branch(repo):
    done = ok(gitevolve(repo, "run", "--iterations", "4", "--run", "fast")).stdout
    assert "`gitevolve promote --run fast`" in done and "`gitevolve status --run fast`" in done
    shown = ok(gitevolve(repo, "show", "gitevolve/fast/island-0")).stdout  # no --run: the branch says which
    assert "score" in shown
    body = ok(gitevolve(repo, "promote", "gitevolve/fast/island-0", "--repeats", "0")).stdout
    assert "Reproduce: `gitevolve show " in body and " --run fast`" in body


def test_a_missing_mlx_is_named_with_what_to_install(tmp_path):
    # python -S leaves site-packages out: this interpreter has no MLX, as a fresh machine.
    done = subprocess.run([sys.executable, "-S", str(ROOT / "hooks" / "gqa_mlx.py"), "--backend", "cpu"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == "failed" and result["metrics"]["failure_kind"] == "backend_unavailable"
    assert "MLX is not installed" in result["reason"] and "pip install 'gitevolve[mlx]'" in result["reason"]


PUSH = ["refs/gitevolve/*", "refs/notes/gitevolve*", "refs/heads/gitevolve/*"]
FETCH = ["refs/gitevolve/*:refs/gitevolve/*", "refs/notes/gitevolve*:refs/notes/gitevolve*",
         "refs/heads/gitevolve/*:refs/heads/gitevolve/*"]


def test_a_reviewer_fetches_a_shared_run_with_the_documented_refspecs(repo, tmp_path):
    ok(gitevolve(repo, "run", "--iterations", "6"))
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "--quiet", "--bare", str(remote))
    git(repo, "push", "--quiet", str(remote), "main", *PUSH)
    reviewer = tmp_path / "reviewer"
    git(tmp_path, "clone", "--quiet", str(remote), str(reviewer))
    git(reviewer, "fetch", "--quiet", "origin", *FETCH)
    theirs = json.loads(ok(gitevolve(reviewer, "status", "--json")).stdout)
    ours = json.loads(ok(gitevolve(repo, "status", "--json")).stdout)
    assert theirs["islands"] == ours["islands"] and theirs["candidates"] == ours["candidates"]
    readme = (ROOT / "README.md").read_text()
    assert " ".join(f"'{r}'" for r in PUSH) in readme and " ".join(f"'{r}'" for r in FETCH) in readme


UNREAD = '''\
# EVOLVE-BLOCK-START
A = 1  # gitevolve: choices=[1, 2]
D = 1  # gitevolve: choices=[1, 2]
# EVOLVE-BLOCK-END


def value():
    return float(A)
'''
SCORE_A = '''\
import json, runpy
p = runpy.run_path("prog.py")
print(json.dumps({"status": "ok", "score": p["value"](), "metrics": {"calls_us": 10.0 / p["value"]()}}))
'''


def test_promote_warns_of_a_change_that_cannot_change_what_runs_and_gives_an_interval(tmp_path):
    repo = make_repo(tmp_path / "repo", program=UNREAD, hook=SCORE_A)
    ok(gitevolve(repo, "run", "--iterations", "6"))
    base = git(repo, "rev-parse", "refs/gitevolve/default/base").strip()
    [noop] = [sha for sha, n in notes(repo).items() if n["settings"] == {"A": 1, "D": 2}]
    done = ok(gitevolve(repo, "promote", noop, "--repeats", "2"))
    assert "warning: D is declared in prog.py but never read there" in done.stderr
    assert "**Check before merging**: D is declared in prog.py but never read there" in done.stdout
    # Both sides re-measured in this sitting: a ratio with its interval, and that sitting's metrics.
    assert "**1.000x** (90% interval 1.000-1.000x)" in done.stdout and "told apart from noise" in done.stdout
    assert "Metrics of the re-measure above" in done.stdout and "| calls_us |" in done.stdout
    real = [sha for sha, n in notes(repo).items() if n["settings"] == {"A": 2, "D": 1}]
    clean = ok(gitevolve(repo, "promote", real[0], "--repeats", "1", "--force"))
    assert "warning" not in clean.stderr and "**2.000x**" in clean.stdout and base != real[0]


PARENT_LOG = HOOK.replace('p = runpy.run_path("prog.py")\n', '''p = runpy.run_path("prog.py")
with open(os.environ["TOY_LOG"], "a") as log:
    log.write(os.environ["GITEVOLVE_CANDIDATE"] + " " + (os.environ["GITEVOLVE_PARENT"] or "-") + "\\n")
''')


def test_a_seed_has_no_parent_candidate_and_a_resumed_run_says_its_budget(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch=main")
    git(repo, "commit", "--quiet", "--allow-empty", "-m", "The user's history before the program")
    make_repo(repo, hook=PARENT_LOG)
    log = tmp_path / "parents.log"
    first = ok(gitevolve(repo, "run", "--iterations", "3", env={"TOY_LOG": str(log)})).stdout
    assert "goes on from" not in first
    base = git(repo, "rev-parse", "refs/gitevolve/default/base").strip()
    parents = dict(line.split() for line in log.read_text().splitlines())
    assert parents[base] == "-"  # not the user's earlier commit
    assert all(p == base for sha, p in parents.items() if sha != base)  # the first mutations' parent: the seed
    again = ok(gitevolve(repo, "run", "--iterations", "2", env={"TOY_LOG": str(log)})).stdout
    assert "Run 'default' goes on from its 4 candidates: this invocation makes up to 2 more" in again
    assert git(repo, "worktree", "list").count("\n") == 1  # the workers' checkouts are gone after the run


def test_piped_output_keeps_its_lines_whole(tmp_path):
    # No COLUMNS, no terminal: rich would wrap at 80 columns, cutting what scripts grep for.
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch=main")
    git(repo, "commit", "--quiet", "--allow-empty", "-m", "Empty start")
    done = ok(gitevolve(repo, "init", "--example", "gqa-mlx", env={"COLUMNS": None}))
    [said] = done.stdout.splitlines()
    assert len(said) > 80 and said.startswith("Added the gqa-mlx example") and said.endswith("Next: gitevolve run")
