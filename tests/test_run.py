"""Whole runs through the real command line, on real repositories."""

import json
import re
import time

from conftest import CONFIG, HOOK, git, gitevolve, make_repo


def notes(repo):
    out = git(repo, "notes", "--ref=gitevolve", "list")
    return {line.split()[1]: json.loads(git(repo, "notes", "--ref=gitevolve", "show", line.split()[1])) for line in out.splitlines()}


def pins(repo):
    return git(repo, "for-each-ref", "--format=%(objectname)", "refs/gitevolve/default/candidates/").split()


def ok(done):
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_a_run_leaves_the_checkout_index_and_branch_alone(repo):
    (repo / "notes.txt").write_text("staged change\n")
    git(repo, "add", "notes.txt")
    (repo / "untracked.txt").write_text("mine\n")
    before = [git(repo, *a) for a in (["status", "--porcelain"], ["rev-parse", "HEAD"], ["symbolic-ref", "HEAD"], ["diff", "--cached"])]
    ok(gitevolve(repo, "run"))
    after = [git(repo, *a) for a in (["status", "--porcelain"], ["rev-parse", "HEAD"], ["symbolic-ref", "HEAD"], ["diff", "--cached"])]
    assert before == after


def test_every_candidate_is_pinned_scored_and_on_its_islands_lineage(repo):
    ok(gitevolve(repo, "run"))
    scored = notes(repo)
    base = git(repo, "rev-parse", "main").strip()
    assert set(pins(repo)) | {base} == set(scored)
    for sha, note in scored.items():
        if sha == base:
            assert note["island"] is None and note["status"] == "ok"
            continue
        assert git(repo, "rev-parse", f"{sha}^").strip() == note["parent"]
        assert note["island"] in (0, 1, 2)
        trailers = git(repo, "log", "-1", "--format=%(trailers:key=Gitevolve-Island,valueonly)", sha).strip()
        assert int(trailers) == note["island"]
        # Islands stay isolated: a parent is on the same island or is the seed (migrations too,
        # whose parent is the target island's champion).
        parent = scored[note["parent"]]
        assert parent["island"] in (None, note["island"])
    for k in range(3):
        champion = git(repo, "rev-parse", f"gitevolve/island-{k}").strip()
        lineage = git(repo, "rev-list", "--first-parent", f"gitevolve/island-{k}").split()
        assert base in lineage and scored[champion]["status"] == "ok"
        island_best = max((n["score"] for n in scored.values() if n["island"] == k and n["status"] == "ok"), default=None)
        if champion == base:  # no candidate of the island beat where it started
            assert island_best is None or island_best <= scored[base]["score"]
        else:  # the toy hook gives the same score every time: the best of the island holds the branch
            assert scored[champion]["score"] == island_best > scored[base]["score"]
    git(repo, "fsck", "--strict")


def test_a_second_run_goes_on_where_the_first_stopped(repo):
    ok(gitevolve(repo, "run", "--iterations", "6"))
    first = notes(repo)
    ok(gitevolve(repo, "run", "--iterations", "6"))
    second = notes(repo)
    assert set(first) < set(second)
    assert {s: n["score"] for s, n in first.items()} == {s: second[s]["score"] for s in first}
    iterations = [n["iteration"] for n in second.values() if n["iteration"] is not None]
    assert len(iterations) == len(set(iterations)) and max(iterations) <= 12 and max(iterations) > 6


def test_the_same_seed_makes_the_same_candidates(tmp_path):
    # Sleeps that differ by setting make parallel evaluations finish in a different order.
    hook = HOOK.replace('time.sleep(float(os.environ.get("TOY_SLEEP", "0")))', 'time.sleep(0.05 * p["A"])')
    runs = []
    for name in ("one", "two"):
        repo = make_repo(tmp_path / name, hook=hook)
        ok(gitevolve(repo, "run", "--iterations", "12"))
        runs.append(sorted((n["iteration"] or 0, n["island"] if n["island"] is not None else -1, n["tree"] or "", n["operator"]) for n in notes(repo).values()))
    assert runs[0] == runs[1]


def test_failed_candidates_are_kept_with_the_reason_and_the_run_goes_on(repo):
    (repo / "score.py").write_text(HOOK.replace('if p["A"] == 5 and p["B"] == "fast":', 'if p["A"] != 1:'))
    git(repo, "commit", "-qam", "strict hook")
    done = ok(gitevolve(repo, "run", "--iterations", "8"))
    failed = [n for n in notes(repo).values() if n["status"] == "failed"]
    assert failed, done.stdout
    for note in failed:
        assert note["reason"] == "stage 'main' exited with status 3: A=5 with B=fast crashes"
        assert "A=5 with B=fast crashes" in note["artifacts"]["stderr"] and note["score"] is None
    board = json.loads(ok(gitevolve(repo, "status", "--json")).stdout)
    assert sum(r["failed"] for r in board["islands"]) == len(failed)


def test_a_base_that_fails_its_evaluation_stops_the_run_with_the_reason(repo):
    (repo / "score.py").write_text("import sys\nprint('boom', file=sys.stderr)\nsys.exit(2)\n")
    git(repo, "commit", "-qam", "broken hook")
    done = gitevolve(repo, "run")
    assert done.returncode == 1
    assert "did not pass the evaluator" in done.stderr and "gitevolve show" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_uncommitted_changes_to_evolvable_files_are_refused(repo):
    (repo / "prog.py").write_text((repo / "prog.py").read_text() + "# edit\n")
    done = gitevolve(repo, "run")
    assert done.returncode == 1 and "prog.py: uncommitted changes" in done.stderr and "commit them" in done.stderr


def test_from_starts_a_new_run_or_more_islands_at_any_ref(repo):
    ok(gitevolve(repo, "run", "--iterations", "6"))
    start = git(repo, "rev-parse", "gitevolve/island-1").strip()
    ok(gitevolve(repo, "run", "--run", "again", "--from", "gitevolve/island-1", "--islands", "2", "--iterations", "4"))
    assert git(repo, "rev-parse", "refs/gitevolve/again/base").strip() == start
    assert start in git(repo, "rev-list", "gitevolve/again/island-0")
    refused = gitevolve(repo, "run", "--from", "main")
    assert refused.returncode == 1 and "--islands 4" in refused.stderr
    ok(gitevolve(repo, "run", "--from", "gitevolve/island-1", "--islands", "4", "--iterations", "4"))
    assert start in git(repo, "rev-list", "gitevolve/island-3")
    assert git(repo, "rev-parse", "refs/gitevolve/default/seeds/island-3").strip() == start


def test_status_and_show(repo):
    ok(gitevolve(repo, "run"))
    table = ok(gitevolve(repo, "status")).stdout
    assert "gitevolve/island-0" in table and "ok/failed/pending" in table
    board = json.loads(ok(gitevolve(repo, "status", "--json")).stdout)
    assert [r["island"] for r in board["islands"]] != [] and board["base_score"] == 1.5
    champion = board["islands"][0]["champion"]
    shown = ok(gitevolve(repo, "show", board["islands"][0]["branch"])).stdout
    assert f"commit {champion}" in shown and "diff --git a/prog.py b/prog.py" in shown and "score" in shown
    assert json.loads(ok(gitevolve(repo, "show", "--json", champion)).stdout)["status"] == "ok"


def test_commands_outside_a_run_say_what_to_do(repo, tmp_path):
    done = gitevolve(repo, "status")
    assert done.returncode == 1 and "gitevolve run" in done.stderr
    done = gitevolve(repo, "show", "nonsense")
    assert done.returncode == 1 and "'nonsense' does not name a commit" in done.stderr
    done = gitevolve(tmp_path, "status")
    assert done.returncode == 1 and "not inside a git repository" in done.stderr


def test_migration_cherry_picks_between_islands(repo):
    ok(gitevolve(repo, "run", "--iterations", "12"))
    migrations = [(s, n) for s, n in notes(repo).items() if n["operator"].startswith("migration")]
    assert migrations
    for sha, note in migrations:
        message = git(repo, "log", "-1", "--format=%B", sha)
        assert message.startswith("Migrate from island ") and "Gitevolve-Migrated-From: " in message
        source = message.split("Gitevolve-Migrated-From: ")[1].split()[0]
        assert notes(repo)[source]["island"] != note["island"]


def test_a_migration_s_subject_says_what_it_changes_against_its_own_parent(repo):
    ok(gitevolve(repo, "run", "--iterations", "24"))
    scored = notes(repo)
    migrations = [(s, n) for s, n in scored.items() if n["operator"].startswith("migration")]
    assert migrations
    for sha, note in migrations:
        ours, theirs = note["settings"], scored[note["parent"]]["settings"]
        changed = {k for k in ours if ours[k] != theirs[k]}
        subject = git(repo, "log", "-1", "--format=%s", sha).strip()
        said = set(re.findall(r"(\w+) \S+ -> ", subject.split(": ", 1)[1]))
        assert said == changed, (subject, theirs, ours)  # the island's champion it landed on, not the migrant's


def test_migration_when_the_base_has_history_without_the_program(tmp_path):
    # `make demo` and `gitevolve init --example` start from a repository that already has commits
    # without the evolvable file: the seed's git parent must never be taken for a mutation.
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch=main")
    git(repo, "commit", "--quiet", "--allow-empty", "-m", "Empty start")
    make_repo(repo)
    ok(gitevolve(repo, "run", "--iterations", "12"))
    assert any(n["operator"].startswith("migration") for n in notes(repo).values())


def test_a_time_budget_stops_the_run_and_a_bad_one_says_what_to_write(repo):
    # The base alone takes longer than the budget (its hook sleeps 2 s): no batch may start after,
    # though the config asks for 9 iterations. True on any machine, however loaded.
    done = ok(gitevolve(repo, "run", "--time", "1s", env={"TOY_SLEEP": "2"}))
    assert len(notes(repo)) == 1 and "Done: 1 evaluated" in done.stdout
    ok(gitevolve(repo, "run", "--time", "1h", "--iterations", "2"))  # both: whichever comes first
    assert len(notes(repo)) == 1 + 2
    bad = gitevolve(repo, "run", "--time", "soon")
    assert bad.returncode != 0 and "--time: expected a duration such as 90s, 10m or 1.5h, got 'soon'" in bad.stderr


# The base is quick; every other program sleeps while TOY_SLOW is set: a GPU run's last evaluations.
SLOW_BUT_THE_BASE = HOOK.replace('time.sleep(float(os.environ.get("TOY_SLEEP", "0")))',
                                 'time.sleep(60 if os.environ.get("TOY_SLOW") and p["A"] != 1 else 0)')


def test_evaluations_still_running_past_the_time_budget_are_stopped_and_stay_pending(tmp_path):
    repo = make_repo(tmp_path / "repo", hook=SLOW_BUT_THE_BASE)
    started = time.monotonic()
    done = ok(gitevolve(repo, "run", "--time", "2s", env={"TOY_SLOW": "1"}))
    # 2 s and 10% overtime, then stopped: not the 60 s the evaluations would take. The margin is
    # wide so that a loaded machine cannot break it; what matters is that the sleep is cut.
    assert time.monotonic() - started < 40
    assert "Out of time" in done.stdout and "`gitevolve run` evaluates them first" in done.stdout
    scored = notes(repo)
    assert len(scored) == 1  # the base; the candidates in flight were stopped before a note
    committed = set(git(repo, "rev-list", "--all", "--", "prog.py").split()) - set(scored)
    pending = [sha for sha in committed if git(repo, "log", "-1", "--format=%s", sha).startswith("Set ")]
    assert pending
    again = ok(gitevolve(repo, "run", "--iterations", "0"))
    assert f"Evaluating {len(pending)} candidate(s) committed but not yet scored" in again.stdout
    assert set(pending) <= set(notes(repo))


def test_a_stage_can_reject_candidates_well_below_their_champion_before_the_later_stages(tmp_path):
    stages = ("evaluator:\n  stages:\n    - {name: quick, command: python score.py, timeout: 20, within: 0.9}\n"
              "    - {name: full, command: python score.py, timeout: 20}\n")
    config = CONFIG.replace("evaluator:\n  command: python score.py\n  timeout: 20\n", stages)
    repo = make_repo(tmp_path / "repo", config=config + "mutation: {operator: tunables}\n")
    ok(gitevolve(repo, "run", "--iterations", "12"))
    scored = notes(repo)
    rejected = [n for n in scored.values() if n["status"] == "rejected"]
    assert rejected, "the random operator makes worse candidates than their champions"
    for n in rejected:
        assert n["stage"] == "quick" and list(n["stage_scores"]) == ["quick"]
        assert "below 90% of the island champion's" in n["reason"]
    assert all(set(n["stage_scores"]) == {"quick", "full"} for n in scored.values() if n["status"] == "ok")


def test_status_says_how_fast_the_run_evaluates_and_how_long_each_stage_takes(tmp_path):
    stages = ("evaluator:\n  stages:\n    - {name: quick, command: python score.py, timeout: 20, within: 0.9}\n"
              "    - {name: full, command: python score.py, timeout: 20}\n")
    repo = make_repo(tmp_path / "repo", config=CONFIG.replace("evaluator:\n  command: python score.py\n  timeout: 20\n", stages))
    ok(gitevolve(repo, "run", "--iterations", "9", env={"TOY_SLEEP": "0.3"}))
    board = json.loads(ok(gitevolve(repo, "status", "--json")).stdout)
    pace, scored = board["pace"], notes(repo)
    assert pace["evaluations"] == sum(1 for n in scored.values() if not n.get("duplicate_of"))
    assert pace["stage_runs"]["quick"] == pace["evaluations"] >= pace["stage_runs"]["full"]
    assert pace["stage_seconds"]["quick"] >= 0.3  # the hook sleeps that long in every stage
    text = ok(gitevolve(repo, "status")).stdout
    line = next(x for x in text.splitlines() if x.startswith(f"{pace['evaluations']} evaluations"))
    assert "median time per stage:" in line and "quick " in line and "full " in line


# Each evaluation says which iteration it is for; iteration 1's waits until an evaluation of the
# next batch (iterations 3 and 4, with two workers) has begun. A loop that waited for a whole
# batch before starting the next would never let one begin: the wait ends in a failure.
WAITING_HOOK = '''\
import json, os, pathlib, runpy, subprocess, sys, time
seen = pathlib.Path(os.environ["TOY_DIR"])
message = subprocess.run(["git", "log", "-1", "--format=%B", os.environ["GITEVOLVE_CANDIDATE"]],
                         capture_output=True, text=True).stdout
iteration = next((l.split(":", 1)[1].strip() for l in message.splitlines() if l.startswith("Gitevolve-Iteration:")), "")
(seen / f"started-{iteration or 'seed'}").touch()
if iteration == "1":
    deadline = time.monotonic() + 60
    while not any((seen / f"started-{i}").exists() for i in (3, 4)):
        if time.monotonic() > deadline:
            print("no evaluation of the next batch began while this one ran", file=sys.stderr)
            sys.exit(4)
        time.sleep(0.05)
p = runpy.run_path("prog.py")
print(json.dumps({"status": "ok", "score": p["value"](), "metrics": {}}))
'''


def test_a_worker_free_early_takes_the_next_batch_s_job_instead_of_waiting_for_its_batch(tmp_path):
    repo = make_repo(tmp_path / "repo", config=CONFIG.replace("timeout: 20", "timeout: 90"), hook=WAITING_HOOK)
    seen = tmp_path / "seen"
    seen.mkdir()
    ok(gitevolve(repo, "run", "--iterations", "6", env={"TOY_DIR": str(seen)}))
    by_iteration = {n["iteration"]: n for n in notes(repo).values() if n["iteration"] is not None}
    assert by_iteration[1]["status"] == "ok", by_iteration[1]["reason"]
    assert {"started-3", "started-4"} & {p.name for p in seen.iterdir()}
