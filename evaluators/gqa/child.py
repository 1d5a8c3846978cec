"""The evaluation itself, in the child process that supervise.py starts (hooks/gqa_mlx.py --child).

Its result goes to a file the supervisor named (--result-file), never to stdout: a kernel's
printf, or a candidate writing to file descriptor 1, cannot corrupt it. Before each step the
same file holds {"progress": {"step": ..., "metrics": ...}}, so a child that dies mid-step still
tells the supervisor where and on which backend.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from evaluators.gqa import compile_cache, faults
from evaluators.gqa.channel import Channel
from evaluators.gqa.faults import safety


def write_json(path: str, value: dict) -> None:
    """Replace the file at `path` in one step: the supervisor never reads half a result."""
    partial = f"{path}.partial"
    with open(partial, "w") as f:
        json.dump(value, f)
    os.replace(partial, path)


def _progress(path: str | None):
    if not path:
        return None

    def tell(step: str, metrics: dict) -> None:
        write_json(path, {"progress": {"step": step, "metrics": metrics}})

    return tell


@dataclass
class Supervised:
    """The timer of a child run by the supervisor (evaluate.Timer): the supervisor has the clock
    and the baseline's process; this one serves the blocks it asks for (referee.py)."""

    channel: Channel
    keeps_baseline: bool = False  # the baseline is not in this process, and nothing here holds it

    def prepare(self, scenarios) -> None:
        pass  # the baseline's process is timed alone while this one is stopped (referee.py)

    def race(self, scenario, block) -> None:
        self.channel.send({"op": "ready", "scenario": scenario.name})
        while (message := self._expect("block", "done"))["op"] == "block":
            block(message, self.channel.send)

    def finish(self, scenarios, checked: dict) -> dict:
        return checked  # the supervisor adds the speed (report.py)

    def _expect(self, *ops: str) -> dict:
        message, _ = self.channel.receive()
        if message["op"] not in ops:
            raise RuntimeError(f"the supervisor sent {message['op']!r} where {' or '.join(ops)} was due")
        return message


def _timer(args: argparse.Namespace):
    if args.stage == "correctness":
        return None
    if args.channel:
        return Supervised(Channel.from_arg(args.channel))
    # --child by hand, without a supervisor: the race in this process, which keeps nobody honest.
    from evaluators.gqa import local, race

    return local.Local(race.budget(args.backend, args.seconds, args.rounds),
                       allow_identical=args.allow_identical)


def run(args: argparse.Namespace) -> dict:
    from evaluators.gqa import backend, evaluate, shapes

    try:
        chosen = backend.choose(args.backend)
    except backend.Unavailable as e:
        return {"status": "failed", "reason": str(e),
                "metrics": {"backend": args.backend, **safety("backend_unavailable")}}
    files = tuple(f for f in os.environ.get("GITEVOLVE_FILES", "").split(os.pathsep) if f)
    setup = evaluate.Setup(stage=args.stage, timer=_timer(args), base=os.environ.get("GITEVOLVE_BASE") or None,
                           files=files, root=Path.cwd(), progress=_progress(args.result_file))
    scenarios = shapes.select(args.scenarios or chosen.scenario_set)
    # What the candidate prints goes to stderr, where the supervisor keeps its tail.
    with contextlib.redirect_stdout(sys.stderr):
        return evaluate.evaluate(args.file, scenarios, setup)


def _raised_outside_the_candidate(e: BaseException) -> dict:
    """The harness itself raised: a busy device (the first GPU use is the bandwidth measurement)
    is transient, anything else our own failure."""
    text = str(e).strip()
    artifacts = {"traceback": traceback.format_exc()[-3000:]}
    if isinstance(e, RuntimeError) and faults.classify(text) == "transient":
        reason = f"the device is not available now: {faults.telling_line(text, 'transient')}"
        return {"status": "transient", "reason": reason, "metrics": safety(faults.transient_kind(text)),
                "artifacts": artifacts}
    return {"status": "failed", "reason": f"the evaluator raised {type(e).__name__}: {text[:300]}",
            "metrics": safety("evaluator_error"), "artifacts": artifacts}


def _die_with(parent: int) -> None:
    """Exit when the supervisor is gone. Linux also has PR_SET_PDEATHSIG (set by the supervisor),
    which works while MLX holds the interpreter lock in a hung call; this thread is for the rest."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="gqa-parent-watch", daemon=True).start()


def main(args: argparse.Namespace) -> None:
    _die_with(os.getppid())
    try:
        result = run(args)
    except BaseException as e:  # noqa: BLE001 - our own failure is reported like any other, as JSON
        result = _raised_outside_the_candidate(e)
    result.setdefault("metrics", {}).update(compile_cache.stats())  # what NVRTC's cache saved here (CUDA)
    if args.result_file:
        write_json(args.result_file, result)
    else:  # run by hand with --child: no supervisor to read a file
        sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip atexit handlers, lingering threads and MLX's teardown: nothing the candidate left
    # behind may run after the result is written.
    os._exit(0)
