#!/usr/bin/env python3
"""gitevolve evaluator hook for a GQA attention candidate under MLX (docs/hooks.md).

    python hooks/gqa_mlx.py [--file attention.py] [--backend auto|cpu|cuda|metal]
        [--scenarios cpu|gpu|NAME,...] [--stage full|correctness|benchmark] [--seconds S] [--timeout T]

Run from the candidate's worktree. The evaluation runs in a child process (this file again, with
--child), so that a kernel that crashes, faults or hangs the GPU is reported as such, and the
baseline it races in another (--baseline), which never loads candidate code; this process keeps
the clock (evaluators/gqa/referee.py). --timeout
(default 50 s) must stay under gitevolve's own. Prints one JSON object as the last line of stdout
and exits 0, whatever the candidate does; the work is done by evaluators.gqa.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import traceback
from pathlib import Path

# The harness's own safety metrics, spelled out: importing it may be what failed.
EVALUATOR_ERROR = {"failure_kind": "evaluator_error", "compile_errors": 0, "gpu_faults": 0}


def _harness() -> None:
    try:
        import evaluators.gqa.cli  # noqa: F401  (installed with gitevolve)
    except ImportError:
        # A source checkout of gitevolve that is not installed: evaluators/ sits beside hooks/.
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str]) -> dict:
    _harness()
    from evaluators.gqa import cli

    args = cli.parse(argv)
    if args.baseline:
        from evaluators.gqa import baseline

        baseline.main(args)  # serves the supervisor, then exits
    if args.child:
        from evaluators.gqa import child

        child.main(args)  # writes its result and exits
    script = str(Path(__file__).resolve())
    if importlib.util.find_spec("mlx") is None:  # looked up, not imported: this process never loads MLX
        return {"status": "failed", "metrics": {**EVALUATOR_ERROR, "failure_kind": "backend_unavailable"},
                "reason": f"MLX is not installed for {sys.executable}: pip install 'gitevolve[mlx]' (the CPU, or "
                          f"Metal on a Mac), or 'mlx[cuda13]' on an NVIDIA GPU; then gitevolve run --retry-failed"}
    if args.stage == "correctness":
        from evaluators.gqa import supervise

        return supervise.main(script, argv, args)
    from evaluators.gqa import referee

    return referee.run(script, argv, args)  # timed: the baseline races in a process of its own


if __name__ == "__main__":
    try:
        result = main(sys.argv[1:])
    except SystemExit as e:
        if e.code in (0, None):  # --help
            raise
        result = {"status": "failed", "reason": f"bad arguments to {Path(sys.argv[0]).name} (see stderr)",
                  "metrics": dict(EVALUATOR_ERROR)}
    except BaseException as e:  # noqa: BLE001 - the hook reports every failure as JSON, never a crash
        reason = f"the supervisor raised {type(e).__name__}: {str(e).strip()[:300]}"
        result = {"status": "failed", "reason": reason, "metrics": dict(EVALUATOR_ERROR),
                  "artifacts": {"traceback": traceback.format_exc()[-3000:]}}
    if result.get("reason"):  # also as an artifact, where every reader of the note finds it
        result.setdefault("artifacts", {}).setdefault("reason", result["reason"])
    # The leading newline ends any partial line written to our stdout before.
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)
