#!/usr/bin/env python3
"""The GQA evaluator's timing before and after a change, side by side in one run (issue #15).

    python benchmarks/evaluator_timing.py [--before REF | --before-dir DIR] [--repeats N] [--seconds S]
        [--backend cpu] [--file attention.py] [--scenarios SET] [--timeout T]
        [--variant NAME=HOOK_FLAGS ...] [--out NAME.json]

Each --variant is the working tree's hook with more flags (`--variant r4="--rounds 4 --seconds 0.2"`),
raced in the same interleaved order beside "before" and the plain "after": several budgets
compared in one run, on one machine state.

Runs the hook as of `--before` (default: the commit before the supervisor took the clock) and as
of the working tree on the same candidate (examples/gqa-mlx/attention.py, the honest initial
program), alternating before/after/after/before so that drift on a shared machine falls on both,
and prints per scenario the median speedup each method reports (with the spread over repeats),
their difference, and the median wall time of one evaluation. The old hook runs from a
`git worktree` of REF (or from DIR, `git archive REF evaluators hooks gitevolve/__init__.py
gitevolve/hookkit.py` unpacked, where there is no git), with PYTHONPATH pointing at it, so it
imports its own harness. On a GPU: --backend cuda --scenarios gpu --timeout 190 --file <the pick>.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parent.parent
BEFORE = "a96251c"  # hookkit landed; the clock was still in the candidate's process
RESULTS = ROOT / "benchmarks" / "results"


def evaluate(root: Path, args: argparse.Namespace, tries: int = 2, flags: tuple[str, ...] = ()) -> tuple[dict, float]:
    """One evaluation by the hook in `root`: (its result, seconds). A transient result is retried,
    as gitevolve retries it; the retry's time is counted."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    env.pop("GITEVOLVE_STAGE", None)
    started = time.monotonic()
    extra = [*(["--scenarios", args.scenarios] if args.scenarios else []), "--timeout", str(args.timeout)]
    if args.seconds is not None:
        extra += ["--seconds", str(args.seconds)]
    out = subprocess.run([sys.executable, str(root / "hooks" / "gqa_mlx.py"), "--backend", args.backend,
                          "--file", str(args.file), *extra, *flags],
                         cwd=args.file.parent, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result.get("status") == "transient" and tries > 1:
        print(f"  {root.name}: transient, retried: {result.get('reason')}", file=sys.stderr)
        again, more = evaluate(root, args, tries - 1, flags)
        return again, seconds + more
    if result.get("status") != "ok":
        print(f"  {root.name}: the hook said {result.get('status')}: {result.get('reason')}", file=sys.stderr)
    return result, seconds


def _spread(values: list[float]) -> str:
    if len(values) < 2:
        return ""
    return f"{(max(values) - min(values)) / statistics.median(values):.0%}"


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", default=BEFORE)
    p.add_argument("--repeats", type=int, default=6, help="evaluations per method")
    p.add_argument("--seconds", type=float, default=None,
                   help="the hook's --seconds, where .gitevolve.yml sets it (default: each hook's own)")
    p.add_argument("--backend", default="cpu")
    p.add_argument("--file", type=Path, default=ROOT / "examples" / "gqa-mlx" / "attention.py")
    p.add_argument("--scenarios", default=None)
    p.add_argument("--timeout", type=float, default=50.0)
    p.add_argument("--before-dir", type=Path, default=None)
    p.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                   help="also the working tree's hook with these flags, under NAME")
    p.add_argument("--out", default=None, help="the record's file name under benchmarks/results/")
    args = p.parse_args(argv)
    variants = {"after": ()}
    for v in args.variant:
        name, _, flags = v.partition("=")
        variants[name] = tuple(shlex.split(flags))
    args.file = args.file.resolve()
    with tempfile.TemporaryDirectory(prefix="gqa-before-") as tmp:
        old = args.before_dir.resolve() if args.before_dir else Path(tmp) / "before"
        if not args.before_dir:
            subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(old), args.before], cwd=ROOT, check=True)
        try:
            runs = {"before": [], **{name: [] for name in variants}}
            for i in range(args.repeats):
                for method in (list(runs) if i % 2 == 0 else list(runs)[::-1]):
                    runs[method].append(evaluate(old if method == "before" else ROOT, args, 2, variants.get(method, ())))
                    print(f"  {method} {len(runs[method])}/{args.repeats}: {runs[method][-1][1]:.1f} s", file=sys.stderr)
        finally:
            if not args.before_dir:
                subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)
    # An evaluation that did not come back ok is kept in the record and left out of the figures.
    failed = {m: [r for r, _ in runs[m] if r.get("status") != "ok"] for m in runs}
    scored = {m: [(r, s) for r, s in runs[m] if r.get("status") == "ok"] for m in runs}
    if not scored["before"] or not all(scored[m] for m in variants):
        raise SystemExit(f"no evaluation came back ok for some method: {json.dumps(failed)[:2000]}")
    names = [k.split(".", 1)[1] for k in scored["after"][0][0]["metrics"] if k.startswith("speedup.")]
    rows = []
    record = {"before": args.before, "repeats": args.repeats, "seconds": args.seconds,
              "variants": {k: list(v) for k, v in variants.items()}, "scenarios": {}}
    for name in [*names, "score"]:
        got = {m: [r["score"] if name == "score" else r["metrics"][f"speedup.{name}"] for r, _ in scored[m]]
               for m in runs}
        before = statistics.median(got["before"])
        row = [name, f"{before:.3f}", _spread(got["before"])]
        for m in variants:
            after = statistics.median(got[m])
            row += [f"{after:.3f}", _spread(got[m]), f"{after / before - 1:+.1%}"]
        rows.append(row)
        record["scenarios"][name] = got
    wall = {m: [s for _, s in runs[m]] for m in runs}
    row = ["evaluation s", f"{statistics.median(wall['before']):.2f}", _spread(wall["before"])]
    for m in variants:
        row += [f"{statistics.median(wall[m]):.2f}", _spread(wall[m]),
                f"{statistics.median(wall[m]) / statistics.median(wall['before']) - 1:+.1%}"]
    rows.append(row)
    record["evaluation_seconds"] = wall
    record["results"] = {m: [r for r, _ in runs[m]] for m in runs}
    record["not_ok"] = {m: len(failed[m]) for m in runs}
    headers = ["speedup (median)", "before", "range"]
    for m in variants:
        headers += [m, "range", f"{m}/before"]
    print(tabulate(rows, headers=headers))
    print(f"\n{args.repeats} evaluations per method, interleaved; range = (max - min) / median over them; "
          f"not ok (left out): " + ", ".join(f"{len(failed[m])} {m}" for m in runs) + ".")
    for m, flags in variants.items():
        if flags:
            print(f"{m}: the working tree's hook with {' '.join(flags)}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / (args.out or f"evaluator_timing-{args.backend}.json")
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"saved {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
