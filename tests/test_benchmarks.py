"""The benchmarks run (their figures are read by people, not asserted: timing is no unit test)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_store_scale_builds_and_rebuilds_the_population(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "store_scale.py"), "--n", "40", "--islands", "3", "--keep", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "population rebuilt from refs and notes: 41" in done.stdout  # 40 candidates and the base
    for row in ("bookkeeping per candidate", "`gitevolve status` command", "JSON checkpoint: load"):
        assert row in done.stdout
    pins = subprocess.run(["git", "for-each-ref", "refs/gitevolve/default/candidates/"], cwd=tmp_path / "repo",
                          capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(pins) == 40
