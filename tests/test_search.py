"""The search operator (Optuna's studies over the tunables), and a run that pays for no program twice."""

import json
import random

import pytest

from conftest import CONFIG, HOOK, PROGRAM, git, gitevolve, make_repo
from gitevolve.mutate import MutationRejected, Observed, Program
from gitevolve.mutate import tunables
from gitevolve.mutate.search import SearchOperator
from gitevolve.population import Candidate
from test_mutate import CONDITIONAL
from test_run import notes, ok

pytest.importorskip("optuna")


def parent(text: str = PROGRAM, island: int = 0) -> Program:
    return Program(Candidate("a" * 40, None, island, 1, 0, "ok", 1.0), {"prog.py": text}, island)


def setting(proposal, text: str = PROGRAM) -> dict:
    return tunables.settings({"prog.py": proposal.files.get("prog.py", text)})


def score(s: dict) -> float:
    return s["A"] + {"slow": 0, "medium": 1, "fast": 2}[s["B"]] + s["C"]


def test_the_search_never_proposes_a_setting_its_island_has_and_learns_from_each():
    op = SearchOperator(seed=1, startup=5)
    op.observe(0, Observed(tunables.settings({"prog.py": PROGRAM}), score(tunables.settings({"prog.py": PROGRAM}))))
    seen = [tunables.settings({"prog.py": PROGRAM})]
    for _ in range(44):  # the toy program has 45 settings: every one but the start, once each
        proposal = op.propose(parent(), [], random.Random(0))
        s = setting(proposal)
        assert s not in seen, s
        assert proposal.operator == "search:tpe" and proposal.subject.startswith("Set ")
        seen.append(s)
        op.observe(0, Observed(s, score(s)))
    with pytest.raises(MutationRejected, match="tried every setting"):
        op.propose(parent(), [], random.Random(0))


def test_islands_have_studies_of_their_own():
    op = SearchOperator(seed=1)
    first = setting(op.propose(parent(island=0), [], random.Random(0)))
    op.observe(1, Observed(first, 3.0))  # island 1 has it; island 0 only asked for it
    assert setting(op.propose(parent(island=1), [], random.Random(0))) != first


def test_dead_tunables_are_not_asked_for_and_keep_the_parents_value():
    op = SearchOperator(seed=3, startup=2)
    for _ in range(12):
        proposal = op.propose(parent(CONDITIONAL), [], random.Random(0))
        s = setting(proposal, CONDITIONAL)
        if s["PATH"] == "mma":
            assert (s["VECTOR"], s["SPLIT"]) == (4, 2)  # the parent's: no commit changes a dead line
        op.observe(0, Observed(s, 1.0 + (s["PATH"] == "vector") * s["VECTOR"]))


def test_the_same_observations_give_the_same_proposals():
    """What a resumed run does: a study rebuilt from the notes' settings and scores asks the same."""
    history = [({"A": a, "B": b, "C": 0.5}, float(a)) for a in (1, 2, 3) for b in ("slow", "fast")]

    def proposals() -> list:
        op = SearchOperator(seed=11, startup=3)
        for s, value in history:
            op.observe(0, Observed(s, value))
        return [setting(op.propose(parent(), [], random.Random(0))) for _ in range(5)]

    assert proposals() == proposals()


def test_a_failed_setting_is_told_as_the_worst_and_ordered_choices_are_integers():
    op = SearchOperator(seed=5, startup=1)
    op.observe(0, Observed({"A": 1, "B": "slow", "C": 0.1}, 2.0))
    op.observe(0, Observed({"A": 5, "B": "fast", "C": 0.9}, None))
    study = op._islands.get(0) or op._island(0, tuple(tunables.parse("prog.py", PROGRAM)))
    values = sorted(t.value for t in study.study.trials)
    assert values == [2.0, 2.0]
    kinds = {name.split("#")[0]: type(d).__name__ for name, d in study.study.trials[0].distributions.items()}
    assert kinds == {"A": "IntDistribution", "B": "CategoricalDistribution", "C": "IntDistribution"}


# --- in a run -------------------------------------------------------------------------------------

# Every evaluation leaves a line behind, outside the worktree: what the hook was really asked.
COUNTED = HOOK.replace("import json, os, runpy, sys, time\n",
                       "import json, os, runpy, sys, time\nopen(os.environ['TOY_LOG'], 'a').write(open('prog.py').read().split('# EVOLVE-BLOCK-END')[0].replace(chr(10), ' ') + chr(10))\n")
# D matters only under B == "fast": programs that differ in it otherwise are one program.
WITH_DEAD = PROGRAM.replace('C = 0.5  # gitevolve: choices=[0.1, 0.5, 0.9]\n',
                            'C = 0.5  # gitevolve: choices=[0.1, 0.5, 0.9]\n\nD = 1  # gitevolve: choices=[1, 2], when=B == "fast"\n')


@pytest.mark.parametrize("operator", ["tunables", "search"])
def test_no_program_is_evaluated_twice_across_islands_migrations_and_resumes(tmp_path, operator):
    config = CONFIG + f"mutation: {{operator: {operator}}}\n"
    repo = make_repo(tmp_path / "repo", config=config, program=WITH_DEAD, hook=COUNTED)
    log = tmp_path / "evaluations.log"
    env = {"TOY_LOG": str(log)}
    ok(gitevolve(repo, "run", "--iterations", "15", env=env))
    ok(gitevolve(repo, "run", "--iterations", "15", env=env))  # resumed from what git holds
    scored = notes(repo)
    evaluated = [n for n in scored.values() if not n.get("duplicate_of")]
    duplicates = [n for n in scored.values() if n.get("duplicate_of")]
    assert duplicates  # islands meet the same programs: 45 settings, 3 islands, 30 iterations
    assert len({n["content"] for n in evaluated}) == len(evaluated)
    # The hook ran once per program, and again only to re-measure a challenger beside its champion.
    duels = sum(len(n["duel"]["challenger"]) + len(n["duel"]["incumbent"]) for n in scored.values() if n.get("duel"))
    assert len(log.read_text().splitlines()) == len(evaluated) + duels
    assert any(n["operator"].startswith("migration") for n in scored.values())
    for n in duplicates:
        original = scored[n["duplicate_of"]]
        assert (n["content"], n["status"], n["score"]) == (original["content"], original["status"], original["score"])
        assert n["island"] != original["island"] or original["island"] is None
    for sha, n in scored.items():
        text = git(repo, "show", f"{sha}:prog.py")
        assert n["settings"] == tunables.settings({"prog.py": text})
        assert n["content"] == n["tree"] or n["settings"]["B"] != "fast"  # only a dead D makes them differ


def test_a_run_says_which_operator_mutates(tmp_path):
    repo = make_repo(tmp_path / "repo")
    done = ok(gitevolve(repo, "run", "--iterations", "3"))
    assert "mutating with the search operator (Optuna's TPE sampler over the declared tunables)" in done.stdout
    note = next(n for n in notes(repo).values() if n["operator"].startswith("search"))
    assert note["operator"] == "search:tpe" and json.dumps(note["mutation"]).startswith('{"sampler": "tpe"')
