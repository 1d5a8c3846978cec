"""Fixtures: real temporary git repositories holding a small evolvable program and its hook."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROGRAM = '''\
"""A toy program whose score is a function of its settings."""
import math

# EVOLVE-BLOCK-START
A = 1  # gitevolve: choices=[1, 2, 3, 4, 5]

B = "slow"  # gitevolve: choices=["slow", "medium", "fast"]

C = 0.5  # gitevolve: choices=[0.1, 0.5, 0.9]
# EVOLVE-BLOCK-END


def value():
    return A + {"slow": 0, "medium": 1, "fast": 2}[B] + C
'''

# Deterministic, fast, and honest about failure: a setting the hook dislikes makes it fail,
# so runs contain failed candidates too.
HOOK = '''\
import json, os, runpy, sys, time
p = runpy.run_path("prog.py")
time.sleep(float(os.environ.get("TOY_SLEEP", "0")))
if p["A"] == 5 and p["B"] == "fast":
    print("A=5 with B=fast crashes", file=sys.stderr)
    sys.exit(3)
print(json.dumps({"status": "ok", "score": p["value"](), "metrics": {"a": p["A"], "b": p["B"]}}))
'''

CONFIG = '''\
files: [prog.py]
evaluator:
  command: python score.py
  timeout: 20
islands: 3
iterations: 9
workers: 2
seed: 7
population_size: 10
migration: {interval: 2, rate: 0.5}
'''


# Tests do not depend on the machine's git identity (CI has none).
IDENTITY = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def git(cwd: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | IDENTITY
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def make_repo(path: Path, config: str = CONFIG, program: str = PROGRAM, hook: str = HOOK) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "--quiet", "--initial-branch=main")
    (path / "prog.py").write_text(program)
    (path / "score.py").write_text(hook)
    (path / ".gitevolve.yml").write_text(textwrap.dedent(config))
    (path / "notes.txt").write_text("not evolvable\n")
    git(path, "add", "-A")
    git(path, "commit", "--quiet", "-m", "Toy program")
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


def gitevolve(cwd: Path, *args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real command line, in a subprocess, as a user runs it (env values of None unset a variable)."""
    merged = {**os.environ, **IDENTITY, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "gitevolve", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={k: v for k, v in merged.items() if v is not None},
    )
