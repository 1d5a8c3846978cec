"""A GPU test run's record, from pytest's JUnit XML: what ran where, what passed, how long it took.

    python benchmarks/test_record.py JUNIT.xml --machine "one NVIDIA H200" --commit SHA \
        --command "python3 -m pytest -m cuda -n 8 --junitxml JUNIT.xml" --json benchmarks/results/test-gpu-....json

The CUDA and Metal tests skip on the development machine and in CI (no GPU there), so their only
evidence is a run on a GPU and this record of it: every test with its outcome and seconds, the
totals per file, and the failures' first lines. README.md names the commit of the last full run.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def outcome(case: ET.Element) -> tuple[str, str]:
    """passed, failed, error or skipped, and the first line of what pytest said about it."""
    for kind, name in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
        found = case.find(kind)
        if found is not None:
            return name, (found.get("message") or "").split("\n")[0][:300]
    return "passed", ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("junit", type=Path)
    parser.add_argument("--machine", required=True)
    parser.add_argument("--commit", required=True, help="the tree that was tested")
    parser.add_argument("--command", required=True)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()

    suite = ET.parse(args.junit).getroot().find("testsuite")
    cases = []
    for case in suite.iter("testcase"):
        result, message = outcome(case)
        cases.append({"file": case.get("classname", "").replace(".", "/") + ".py", "test": case.get("name"),
                      "outcome": result, "seconds": float(case.get("time", 0)), "message": message})
    totals = collections.Counter(c["outcome"] for c in cases)
    per_file = {}
    for c in cases:
        per_file.setdefault(c["file"], collections.Counter())[c["outcome"]] += 1
    record = {"machine": args.machine, "commit": args.commit, "command": args.command,
              "started": suite.get("timestamp"), "seconds": float(suite.get("time", 0)),
              "totals": dict(totals), "per_file": {f: dict(n) for f, n in per_file.items()},
              "not_passed": [c for c in cases if c["outcome"] != "passed"], "tests": cases}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{sum(totals.values())} tests: " + ", ".join(f"{n} {k}" for k, n in sorted(totals.items()))
          + f" in {record['seconds']:.0f} s on {args.machine}; saved {args.json}")
    return 0 if not record["not_passed"] or all(c["outcome"] == "skipped" for c in record["not_passed"]) else 1


if __name__ == "__main__":
    sys.exit(main())
