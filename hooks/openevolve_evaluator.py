"""Run an OpenEvolve evaluator as a gitevolve hook (docs/markup.md, "Coming from OpenEvolve").

    python hooks/openevolve_evaluator.py --evaluator evaluator.py --program attention.py [--stage 1]
        [--score combined_score]

OpenEvolve's contract: a Python file with `evaluate(program_path)` (and, for its cascade,
`evaluate_stage1/2/3`) returning a dict of metrics or an `EvaluationResult(metrics, artifacts)`.
This hook imports that file, calls the function on the candidate's file in the worktree, and
prints the one JSON line gitevolve reads:

- score: the `--score` metric (OpenEvolve's `combined_score`). Missing, the run is told so:
  status failed, with the metrics it did return. OpenEvolve falls back to the mean of the numeric
  metrics, booleans counted as numbers, which scored a timed-out program 0.5; a score here is
  only ever the metric you named.
- metrics: the numeric ones (booleans as 0 or 1) and strings, as returned.
- artifacts: an EvaluationResult's artifacts, as text.
- an exception is `failed` with its traceback in the artifacts; gitevolve's timeout and
  process-group kill take the place of OpenEvolve's evaluator timeout.

It needs nothing of OpenEvolve: an EvaluationResult is read by its two attributes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import traceback
from pathlib import Path


def load(path: Path):
    spec = importlib.util.spec_from_file_location("openevolve_evaluator_module", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"--evaluator {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))  # its own imports, as OpenEvolve runs it
    spec.loader.exec_module(module)
    return module


def as_result(returned, score_key: str) -> dict:
    metrics = getattr(returned, "metrics", returned)
    artifacts = getattr(returned, "artifacts", {}) or {}
    if not isinstance(metrics, dict):
        return {"status": "failed", "reason": f"evaluate() returned {type(metrics).__name__}, not a dict of metrics"}
    kept = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            kept[str(key)] = int(value)
        elif isinstance(value, (int, float)) and math.isfinite(value):
            kept[str(key)] = value
        elif isinstance(value, str):
            kept[str(key)] = value
    text = {str(k): v if isinstance(v, str) else repr(v) for k, v in artifacts.items()}
    score = metrics.get(score_key)
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        return {"status": "failed", "metrics": kept, "artifacts": text,
                "reason": f"the evaluator returned no numeric {score_key!r} (its metrics: {', '.join(map(str, metrics)) or 'none'}); "
                          f"name the metric to score with --score"}
    return {"status": "ok", "score": float(score), "metrics": kept, "artifacts": text}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluator", type=Path, required=True, help="the OpenEvolve evaluator file")
    parser.add_argument("--program", required=True, help="the candidate's file, relative to the worktree")
    parser.add_argument("--stage", type=int, choices=[1, 2, 3], help="call evaluate_stageN instead of evaluate")
    parser.add_argument("--score", default="combined_score", help="the metric that is the score")
    args = parser.parse_args()

    name = f"evaluate_stage{args.stage}" if args.stage else "evaluate"
    try:
        module = load(args.evaluator.resolve())
        function = getattr(module, name, None)
        if function is None:
            result = {"status": "failed", "reason": f"{args.evaluator} defines no {name}(program_path)"}
        else:
            result = as_result(function(str(Path(args.program).resolve())), args.score)
    except Exception as e:  # noqa: BLE001 - the evaluator's failure is the candidate's result
        result = {"status": "failed", "reason": f"{name}() raised {type(e).__name__}: {str(e)[:300]}",
                  "artifacts": {"traceback": traceback.format_exc()[-3000:]}}
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
