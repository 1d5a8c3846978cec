#!/usr/bin/env python3
"""gitevolve evaluator hook for a GQA attention candidate under MLX (docs/hooks.md).

    python hooks/gqa_mlx.py [--file attention.py] [--scenarios cpu|gpu|NAME,...] [--stage full|correctness|benchmark]

Run from the candidate's worktree. Prints one JSON object as the last line of stdout and exits 0,
whatever the candidate does; the work is done by evaluators.gqa.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from pathlib import Path


def _harness():
    try:
        import evaluators.gqa.evaluate  # noqa: F401  (installed with gitevolve)
    except ImportError:
        # A source checkout of gitevolve that is not installed: evaluators/ sits beside hooks/.
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from evaluators.gqa import evaluate, shapes, timing

    return evaluate, shapes, timing


def _arguments(stages: tuple[str, ...]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", default="attention.py", help="the candidate, relative to the working directory")
    parser.add_argument("--scenarios", default="cpu", help="a scenario set (cpu, gpu) or comma-separated scenario names")
    # A stage named like ours in .gitevolve.yml needs no flag: gitevolve says which stage runs.
    env_stage = os.environ.get("GITEVOLVE_STAGE", "")
    parser.add_argument("--stage", choices=stages, default=env_stage if env_stage in stages else "full",
                        help="correctness only (score 1.0 when right), or also the benchmark (full, benchmark)")
    parser.add_argument("--seconds", type=float, default=None, help="timing budget per scenario, both sides together")
    return parser.parse_args()


def main() -> dict:
    evaluate, shapes, timing = _harness()
    args = _arguments(evaluate.STAGES)
    budget = timing.Budget() if args.seconds is None else timing.Budget(seconds=args.seconds)
    files = tuple(f for f in os.environ.get("GITEVOLVE_FILES", "").split(os.pathsep) if f)
    setup = evaluate.Setup(stage=args.stage, budget=budget, base=os.environ.get("GITEVOLVE_BASE") or None,
                           files=files, root=Path.cwd())
    # What the candidate prints goes to stderr, so stdout's last line stays ours.
    with contextlib.redirect_stdout(sys.stderr):
        return evaluate.evaluate(args.file, shapes.select(args.scenarios), setup)


if __name__ == "__main__":
    try:
        result = main()
    except SystemExit as e:
        if e.code in (0, None):  # --help
            raise
        result = {"status": "failed", "reason": f"bad arguments to {Path(sys.argv[0]).name} (see stderr)"}
    except BaseException as e:  # noqa: BLE001 - the hook reports every failure as JSON, never a crash
        reason = f"the evaluator raised {type(e).__name__}: {str(e).strip()[:300]}"
        result = {"status": "failed", "reason": reason, "artifacts": {"reason": reason, "traceback": traceback.format_exc()[-3000:]}}
    if result.get("reason"):  # gitevolve reads a failure's reason from the artifacts
        result.setdefault("artifacts", {}).setdefault("reason", result["reason"])
    # The leading newline ends any partial line a kernel wrote straight to the file descriptor.
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
    # Skip atexit handlers and lingering threads: nothing the candidate left behind may print after us.
    os._exit(0)
