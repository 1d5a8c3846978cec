"""An OpenEvolve evaluator, unchanged, as a gitevolve hook (hooks/openevolve_evaluator.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from conftest import CONFIG, ROOT, make_repo
from test_run import notes, ok
from conftest import gitevolve

# What an OpenEvolve user has: evaluate(program_path) returning metrics, with combined_score.
EVALUATOR = '''
import importlib.util


class EvaluationResult:  # as openevolve.evaluation_result has it: metrics and artifacts
    def __init__(self, metrics, artifacts):
        self.metrics, self.artifacts = metrics, artifacts


def evaluate(program_path):
    spec = importlib.util.spec_from_file_location("candidate", program_path)
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    if program.A == 5 and program.B == "fast":
        raise RuntimeError("A=5 with B=fast crashes")
    value = program.value()
    return EvaluationResult({"combined_score": value, "correct": True, "a": program.A}, {"log": f"value {value}"})


def evaluate_stage1(program_path):
    return {"combined_score": 1.0}
'''

HOOK_LINE = "python openevolve_evaluator.py --evaluator evaluator.py --program prog.py"


def hook(cwd, *args: str) -> dict:
    done = subprocess.run([sys.executable, "openevolve_evaluator.py", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_an_openevolve_evaluator_drives_a_run_unchanged(tmp_path):
    repo = make_repo(tmp_path / "repo", config=CONFIG.replace("command: python score.py", f"command: {HOOK_LINE}"))
    shutil.copy(ROOT / "hooks" / "openevolve_evaluator.py", repo)
    (repo / "evaluator.py").write_text(EVALUATOR)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "OpenEvolve evaluator"],
                   cwd=repo, check=True)
    ok(gitevolve(repo, "run", "--iterations", "9"))
    scored = notes(repo).values()
    good = [n for n in scored if n["status"] == "ok"]
    assert len(good) >= 5, [n["reason"] for n in scored]
    for n in good:  # the score is the evaluator's combined_score: the toy program's value
        s = n["settings"]
        assert n["score"] == s["A"] + {"slow": 0, "medium": 1, "fast": 2}[s["B"]] + s["C"]
        assert n["metrics"]["correct"] == 1 and n["artifacts"]["log"] == f"value {n['score']}"


def test_what_openevolve_would_score_anyway_is_a_failure_here(tmp_path):
    shutil.copy(ROOT / "hooks" / "openevolve_evaluator.py", tmp_path)
    (tmp_path / "prog.py").write_text("A = 5\nB = 'fast'\n\ndef value():\n    return 1.0\n")
    (tmp_path / "evaluator.py").write_text(EVALUATOR)
    crashed = hook(tmp_path, "--evaluator", "evaluator.py", "--program", "prog.py")
    assert crashed["status"] == "failed" and "RuntimeError: A=5 with B=fast crashes" in crashed["reason"]
    assert "Traceback" in crashed["artifacts"]["traceback"]
    # A timed-out program in OpenEvolve returns {"error": 0.0, "timeout": True} and scores 0.5 there.
    (tmp_path / "timeout.py").write_text("def evaluate(program_path):\n    return {'error': 0.0, 'timeout': True}\n")
    timed_out = hook(tmp_path, "--evaluator", "timeout.py", "--program", "prog.py")
    assert timed_out["status"] == "failed" and "no numeric 'combined_score'" in timed_out["reason"]
    assert timed_out["metrics"] == {"error": 0.0, "timeout": 1}
    staged = hook(tmp_path, "--evaluator", "evaluator.py", "--program", "prog.py", "--stage", "1")
    assert staged == {"status": "ok", "score": 1.0, "metrics": {"combined_score": 1.0}, "artifacts": {}}
    missing = hook(tmp_path, "--evaluator", "timeout.py", "--program", "prog.py", "--stage", "2")
    assert missing["status"] == "failed" and "defines no evaluate_stage2(program_path)" in missing["reason"]
