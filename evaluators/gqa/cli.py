"""The GQA hook's command line, shared by the supervisor and the child it runs (standard library
only: the supervisor never imports MLX).

    python hooks/gqa_mlx.py [--file attention.py] [--backend auto|cpu|cuda|metal]
        [--scenarios cpu|gpu|NAME,...] [--stage full|correctness|benchmark] [--seconds S] [--rounds N] [--timeout T]
"""

from __future__ import annotations

import argparse
import os

STAGES = ("full", "correctness", "benchmark")
BACKENDS = ("auto", "cpu", "cuda", "metal")
# Under the 60 s that the examples give gitevolve's own timeout, so that a hung kernel is
# reported as a hang, with where it hung, before gitevolve kills the hook without a word.
DEFAULT_TIMEOUT = 50.0


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def _rounds(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 2:
        raise argparse.ArgumentTypeError(f"must be a whole number of rounds, 2 or more, not {text}")
    return n


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gqa_mlx.py",
        description="gitevolve evaluator hook for a GQA attention candidate under MLX (docs/hooks.md)")
    p.add_argument("--file", default="attention.py", help="the candidate, relative to the working directory")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto: Metal if available, else CUDA if available, else the CPU")
    p.add_argument("--scenarios", default=None,
                   help="a scenario set (cpu, gpu) or comma-separated scenario names; "
                        "default: the set of the backend (cpu on the CPU, gpu on a GPU)")
    # A stage named like ours in .gitevolve.yml needs no flag: gitevolve says which stage runs.
    env_stage = os.environ.get("GITEVOLVE_STAGE", "")
    p.add_argument("--stage", choices=STAGES, default=env_stage if env_stage in STAGES else "full",
                   help="correctness only (score 1.0 when right), or also the benchmark (full, benchmark)")
    p.add_argument("--seconds", type=_seconds, default=None, help="timing budget per scenario, both sides together (default: 0.8 on the CPU, 0.2 on a GPU)")
    p.add_argument("--rounds", type=_rounds, default=None,
                   help="the fewest interleaved rounds per scenario, whatever --seconds says (default: 8 on the CPU, 4 on a GPU)")
    p.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT,
                   help="seconds before the evaluation is killed as hung; keep it under gitevolve's timeout")
    p.add_argument("--allow-identical", action="store_true",
                   help="score a candidate whose outputs are bit-for-bit the baseline's (else it scores 0)")
    p.add_argument("--compile-cache", default="auto", metavar="auto|off|DIR",
                   help="CUDA: keep NVRTC's compiles across candidates, in DIR or (auto) ~/.cache/gitevolve/nvrtc; "
                        "re-measures (GITEVOLVE_PURPOSE remeasure, promote) always compile afresh")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--channel", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result-file", default=None, help=argparse.SUPPRESS)
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    return parser().parse_args(argv)
