"""A challenger is re-measured beside its island's champion before it takes the branch (duel.py)."""

import pytest

from conftest import CONFIG, HOOK, git, gitevolve, make_repo
from gitevolve.duel import Duel, clear_lead, duel
from gitevolve.population import Candidate
from test_run import notes, ok


def test_the_challenger_must_lead_by_the_margin_and_pass_every_re_measurement():
    assert Duel([2.0, 2.2], [2.0, 2.0], margin=0.03).won
    assert not Duel([2.0, 2.1], [2.0, 2.0], margin=0.03).won  # 2.5% ahead: within the margin
    assert not Duel([3.0, None], [2.0, 2.0], margin=0.0).won  # failed once when evaluated again
    assert Duel([3.0, 3.0], [None, None], margin=0.0).won  # the champion no longer passes
    assert not Duel([2.0], [2.0], margin=0.0).won  # a tie keeps the champion
    assert "takes the branch" in Duel([2.2], [2.0], 0.0).describe()


def test_a_lead_beyond_what_noise_does_needs_no_duel():
    assert clear_lead(1.3, 1.0, sure=0.25) and not clear_lead(1.2, 1.0, sure=0.25)
    assert clear_lead(-0.7, -1.0, sure=0.25) and not clear_lead(5.0, 1.0, sure=0.0)  # 0: always a duel


def test_the_two_are_evaluated_in_turn_so_that_drift_falls_on_both():
    a, b = (Candidate(s * 40, None, 0, 1, 0, "ok", 1.0) for s in "ab")
    order = []
    duel(lambda c: order.append(c.sha[0]) or 1.0, a, b, times=3, margin=0.0)
    assert "".join(order) == "baabba"  # challenger first, then alternating


# The first evaluation of a program with A == 1 is lucky by 10: what a noisy machine does to some
# draws. Evaluated again, it scores what it is.
LUCKY = HOOK.replace('p = runpy.run_path("prog.py")\n', '''p = runpy.run_path("prog.py")
seen = os.path.join(os.environ["TOY_SEEN"], f'{p["A"]}-{p["B"]}-{p["C"]}')
lucky = 10.0 if p["A"] == 1 and not os.path.exists(seen) else 0.0
open(seen, "a").close()
with open(os.path.join(os.environ["TOY_SEEN"], "..", "purposes"), "a") as log:
    log.write(os.environ["GITEVOLVE_PURPOSE"] + "\\n")
''').replace('"score": p["value"]()', '"score": p["value"]() + lucky')


@pytest.mark.parametrize("remeasure", [2, 0])
def test_a_lucky_draw_does_not_take_the_branch(tmp_path, remeasure):
    # sure: 0, so that even a lead this large is re-measured (a clear lead skips it: the test above).
    config = CONFIG.replace("islands: 3", "islands: 2") + f"champion: {{remeasure: {remeasure}, sure: 0}}\n"
    repo = make_repo(tmp_path / "repo", config=config, hook=LUCKY)
    (tmp_path / "seen").mkdir()
    done = ok(gitevolve(repo, "run", "--iterations", "12", env={"TOY_SEEN": str(tmp_path / "seen")}))
    scored = notes(repo)
    champions = {git(repo, "rev-parse", f"gitevolve/island-{k}").strip() for k in (0, 1)}
    lost = [sha for sha, n in scored.items() if n.get("duel") and not n["duel"]["won"]]
    if remeasure:
        assert lost and not champions & set(lost)  # re-measured, the lucky ones lost, and no branch moved to them
        assert "re-measured 2x each, interleaved" in done.stdout
        for sha in lost:
            assert len(scored[sha]["measurements"]) == 3 and scored[sha]["score"] < scored[sha]["measurements"][0]
        # The hook is told which evaluations are re-measures (GITEVOLVE_PURPOSE): a duel's, 2 per side.
        purposes = (tmp_path / "purposes").read_text().split()
        assert set(purposes) == {"evaluate", "remeasure"}
        assert purposes.count("remeasure") == sum(2 * 2 for n in scored.values() if n.get("duel"))
    else:
        assert not any(n.get("duel") for n in scored.values())
        # Without re-measuring, a lucky first draw holds a branch: what the default prevents.
        assert any(scored[sha]["settings"]["A"] == 1 for sha in champions)


def test_status_shows_how_many_measurements_stand_behind_a_champion(tmp_path):
    repo = make_repo(tmp_path / "repo", config=CONFIG.replace("islands: 3", "islands: 1"))
    ok(gitevolve(repo, "run", "--iterations", "6"))
    champion = git(repo, "rev-parse", "gitevolve/island-0").strip()
    n = len(notes(repo)[champion].get("measurements") or [0])
    board = ok(gitevolve(repo, "status")).stdout
    assert n > 1 and f"(n={n}, ±0.0%)" in board  # the toy hook gives the same score every time
