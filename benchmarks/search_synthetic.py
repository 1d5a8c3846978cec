"""How well `gitevolve run`'s built-in search finds a known optimum, on a synthetic tuning problem.

    python benchmarks/search_synthetic.py [--seeds 5] [--evaluations 150] [--operators search,random,tunables]
        [--islands 2] [--workers 2] [--noise 0] [--keep DIR] [--json PATH]

Runs the real product: for each operator and seed, a temporary git repository holding `kernel.py`
(a made-up kernel's launch settings, declared as tunables inside an EVOLVE-BLOCK) and the hook
`score.py` (the objective, instant), and `gitevolve run` in it, again with more iterations when the
notes hold fewer than --evaluations real evaluations. The objective has interactions (the best BLOCK
depends on LAYOUT), settings the "hardware" refuses (status failed, with the reason) and a
conditional tunable (VECTOR counts only when PATH == "vector"). Its optimum is found by enumerating
every setting with the hook's own function, in this process, so every ratio is against it.

Operators, as `.gitevolve.yml` says them: search = `mutation: {operator: search, sampler: tpe}`,
random = `{operator: search, sampler: random}`, tunables = `{operator: tunables}`.

Per operator, over the seeds:
  - best / optimum: the best score among the first N real evaluations (the seed first, then by
    iteration, a migration where its generation begins; a note with `duplicate_of` is no
    evaluation), as a fraction of the optimum: median, and min-max;
  - evaluations to within 3%: how many real evaluations it took until the best one so far scored
    at least 97% of the optimum: median over the seeds, "never" when the median seed did not get
    there within N;
  - failed: the share of the N that the objective refused;
  - candidates/s: every candidate the run committed (duplicates and failures included) over the
    seconds `gitevolve run` took, start-up included: the loop's own pace with an instant hook.
With --noise P the hook multiplies each score by a random factor of relative sd P; the figures then
take the candidate with the best measured score and read its noise-free score (the metric `exact`),
since a lucky measurement is not a better program.

The record goes to benchmarks/results/search_synthetic.json (or --json).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml
from tabulate import tabulate

import gitevolve
from gitevolve.store import Store

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
WITHIN = 0.97  # "found it": within 3% of the optimum
MAX_RUNS = 4  # `gitevolve run` invocations per seed before we settle for fewer evaluations

MUTATION = {
    "search": {"operator": "search", "sampler": "tpe"},
    "random": {"operator": "search", "sampler": "random"},
    "tunables": {"operator": "tunables"},
}


@dataclass(frozen=True)
class Tunable:
    name: str
    initial: object  # a plain, poor but valid start
    choices: list
    when: str | None = None  # a condition over other tunables, in the product's `when=` syntax


TUNABLES = [
    Tunable("LAYOUT", "row", ["row", "col", "tiled"]),
    Tunable("BLOCK", 16, [16, 32, 64, 128, 256]),
    Tunable("STAGES", 1, [1, 2, 3, 4]),
    Tunable("UNROLL", 1, [1, 2, 4, 8]),
    Tunable("WARPS", 2, [2, 4, 8]),
    Tunable("PATH", "scalar", ["scalar", "vector"]),
    Tunable("VECTOR", 1, [1, 2, 4, 8], when='PATH == "vector"'),
]

# The hook, written into each repository as score.py; this process execs the same text to enumerate.
SCORE_PY = '''\
"""The synthetic objective: a made-up kernel's throughput from the settings in kernel.py.

gitevolve runs it in a worktree of the candidate and reads the JSON line it prints last;
benchmarks/search_synthetic.py execs this same text to find the optimum by enumeration.
"""
import argparse
import importlib.util
import json
import math
import random

SHARED_MEMORY = 160 * 1024  # bytes a block may use: BLOCK rows of 64 fp32 values per stage
REGISTERS = 16  # values one thread can keep in flight: UNROLL x the vector width
LAYOUT_SPEED = {"row": 1.0, "col": 0.9, "tiled": 1.15}
BEST_BLOCK = {"row": 64, "col": 32, "tiled": 128}  # the interaction: the best tile depends on the layout
VECTOR_GAIN = {1: 0.95, 2: 1.1, 4: 1.25, 8: 1.15}


def throughput(s):
    """(score, None) for a setting the hardware runs, (None, reason) for one it refuses."""
    shared = s["BLOCK"] * 64 * 4 * s["STAGES"]
    if shared > SHARED_MEMORY:
        return None, f"shared memory: BLOCK * STAGES * 256 B = {shared // 1024} KiB > {SHARED_MEMORY // 1024} KiB"
    if s["WARPS"] * 32 > s["BLOCK"] * 4:
        return None, f"idle threads: WARPS * 32 = {s['WARPS'] * 32} > 4 rows per thread of BLOCK {s['BLOCK']}"
    width = s["VECTOR"] if s["PATH"] == "vector" else 1  # VECTOR is dead on the scalar path
    if s["UNROLL"] * width > REGISTERS:
        return None, f"register spill: UNROLL * VECTOR = {s['UNROLL'] * width} > {REGISTERS}"
    speed = LAYOUT_SPEED[s["LAYOUT"]]
    speed *= 0.75 ** abs(math.log2(s["BLOCK"] / BEST_BLOCK[s["LAYOUT"]]))
    speed *= 0.8 ** abs(math.log2(s["STAGES"] * s["UNROLL"] / 8))  # latency hidden by stages and unrolling
    speed *= 0.98 ** math.log2(s["UNROLL"])  # unrolled code costs instruction cache
    best_warps = min(max(s["BLOCK"] // 32, 2), 8)
    speed *= 0.85 ** abs(math.log2(s["WARPS"] / best_warps))
    if s["PATH"] == "vector":
        speed *= VECTOR_GAIN[s["VECTOR"]] * (0.8 if s["LAYOUT"] == "col" else 1.0)  # strided loads
    return 1000.0 * speed, None


def settings(path="kernel.py"):
    spec = importlib.util.spec_from_file_location("kernel", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {name: value for name, value in vars(module).items() if name.isupper()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--noise", type=float, default=0.0, help="relative sd of a random factor on the score")
    noise = parser.parse_args().noise
    exact, reason = throughput(settings())
    if exact is None:
        print(json.dumps({"status": "failed", "reason": reason, "metrics": {}}))
        return
    factor = random.SystemRandom().gauss(1.0, noise) if noise else 1.0
    print(json.dumps({"status": "ok", "score": exact * factor, "metrics": {"exact": exact}}))


if __name__ == "__main__":
    main()
'''


def objective():
    """The hook's scoring function, from the very text the hook runs."""
    namespace = {"__name__": "score"}
    exec(compile(SCORE_PY, "score.py", "exec"), namespace)
    return namespace["throughput"]


def kernel_text() -> str:
    lines = []
    for t in TUNABLES:
        when = f", when={t.when}" if t.when else ""
        lines.append(f"{t.name} = {json.dumps(t.initial)}  # gitevolve: choices={json.dumps(t.choices)}{when}")
    return ('"""A made-up kernel\'s launch settings: score.py reads them and says how fast it would run."""\n\n'
            "# EVOLVE-BLOCK-START\n" + "\n".join(lines) + "\n# EVOLVE-BLOCK-END\n")


def live(setting: dict) -> tuple:
    """The setting with dead tunables blanked: settings that differ only there are one program."""
    return tuple(None if t.when and not eval(t.when, {"__builtins__": {}}, dict(setting)) else setting[t.name] for t in TUNABLES)


def enumerate_objective(throughput) -> dict:
    """Every setting scored: the unique optimum, the initial score, how many settings are valid."""
    distinct = {}
    for values in itertools.product(*(t.choices for t in TUNABLES)):
        setting = dict(zip((t.name for t in TUNABLES), values))
        distinct.setdefault(live(setting), (setting, throughput(setting)[0]))
    valid = sorted(((score, setting) for setting, score in distinct.values() if score is not None),
                   key=lambda pair: pair[0], reverse=True)
    (best, optimum), (runner_up, _) = valid[0], valid[1]
    # A tie would make "found the optimum" ambiguous; the objective is built so that this never fires.
    assert runner_up < best * (1 - 1e-9), "the objective's optimum is not unique"
    initial = throughput({t.name: t.initial for t in TUNABLES})[0]
    assert initial is not None, "the initial setting must be valid"
    return {"settings": math.prod(len(t.choices) for t in TUNABLES), "distinct": len(distinct), "valid": len(valid),
            "within": sum(score >= WITHIN * best for score, _ in valid), "optimum": best, "optimum_at": optimum,
            "initial": initial}


def git_env() -> dict[str, str]:
    # GIT_DIR & co. set by a calling git hook would point gitevolve at another repository.
    return {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}


def make_repo(path: Path, config: dict) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=path, env=git_env(), check=True, capture_output=True)

    path.mkdir(parents=True)
    git("init", "-q", "-b", "main")
    git("config", "user.name", "bench")
    git("config", "user.email", "bench@localhost")
    (path / "kernel.py").write_text(kernel_text())
    (path / "score.py").write_text(SCORE_PY)
    (path / ".gitevolve.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    git("add", "kernel.py", "score.py", ".gitevolve.yml")
    git("commit", "-q", "-m", "Synthetic kernel and its objective")


def run_config(args: argparse.Namespace, operator: str, seed: int) -> dict:
    command = "python score.py" + (f" --noise {args.noise}" if args.noise else "")
    return {"files": ["kernel.py"], "evaluator": {"command": command, "timeout": 30}, "islands": args.islands,
            "workers": args.workers, "seed": seed, "iterations": args.evaluations, "mutation": MUTATION[operator],
            # A noise-free objective has nothing to re-measure; with noise, champions are re-measured
            # as by default, at a cost in evaluations that the figures do not count.
            "champion": {"remeasure": 2 if args.noise else 0}}


def gitevolve_run(repo: Path, iterations: int, log: Path) -> float:
    """One `gitevolve run` in `repo`: the seconds it took, start-up included."""
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "gitevolve", "run", "--iterations", str(iterations)], cwd=repo,
                          env=git_env(), capture_output=True, text=True)
    with log.open("a") as f:
        f.write(done.stdout + done.stderr)
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}").splitlines()[-1]
        raise SystemExit(f"{repo.name}: gitevolve run failed: {last}")
    return time.monotonic() - began


def evaluations(repo: Path, islands: int) -> list[dict]:
    """The run's real evaluations in the order the run made them."""
    store = Store(repo)
    # A duplicate (a program the run had evaluated already) took that evaluation's note: no evaluation.
    notes = [(sha, n) for sha, n in store.read_notes(store.ref_state().notes).items() if not n.get("duplicate_of")]

    def when(item: tuple[str, dict]) -> tuple[float, str]:
        sha, note = item
        if note.get("iteration") is not None:
            return note["iteration"], sha
        if str(note.get("operator", "")).startswith("migration"):
            # Committed with the batch that begins its generation, before that batch's mutations.
            return note["generation"] * islands + 0.5, sha
        return 0, sha  # the seed

    return [note for _, note in sorted(notes, key=when)]


@dataclass
class Seeded:
    made: list  # the real evaluations, in the order the run made them
    invocations: int = 0
    candidates: int = 0  # every candidate committed, duplicates and failures included
    seconds: float = 0.0  # in `gitevolve run`, start-up included


def run_seed(args: argparse.Namespace, workdir: Path, operator: str, seed: int) -> Seeded:
    """One seed's run, extended until it holds enough real evaluations."""
    repo = workdir / f"{operator}-seed{seed}"
    make_repo(repo, run_config(args, operator, seed))
    iterations, asked, out = args.evaluations, 0, Seeded([])
    for invocation in range(1, MAX_RUNS + 1):
        out.seconds += gitevolve_run(repo, iterations, workdir / f"{repo.name}.log")
        out.invocations = invocation
        asked += iterations
        out.made = evaluations(repo, args.islands)
        store = Store(repo)
        out.candidates = len(store.read_notes(store.ref_state().notes)) - 1  # the seed is no candidate made
        if len(out.made) >= args.evaluations:
            return out
        # The shortfall at the yield seen so far (duplicates and refused mutations make no evaluation),
        # bounded so that an operator that makes almost none cannot keep a seed going for hours.
        iterations = min(math.ceil((args.evaluations - len(out.made)) * asked / max(len(out.made), 1)),
                         4 * args.evaluations)
    print(f"  {repo.name}: only {len(out.made)} real evaluations after {MAX_RUNS} runs", file=sys.stderr)
    return out


def outcome(made: list[dict], n: int, optimum: float) -> dict:
    """Best-so-far over the first n evaluations: its final ratio to the optimum, and when it got within 3%."""
    best_measured, best_exact, reached, failed = -math.inf, None, None, 0
    for k, note in enumerate(made[:n], start=1):
        if note.get("status") != "ok":
            failed += 1
            continue
        if note["score"] > best_measured:
            best_measured, best_exact = note["score"], note["metrics"]["exact"]
        if reached is None and best_exact >= WITHIN * optimum:
            reached = k
    return {"evaluations": min(len(made), n), "best": best_exact, "ratio": (best_exact or 0.0) / optimum,
            "within_3pct_after": reached, "failed": failed}


def summary_row(operator: str, runs: list[dict], n: int) -> list:
    ratios = [r["ratio"] for r in runs]
    reached = [r["within_3pct_after"] for r in runs]
    median_reach = statistics.median([math.inf if k is None else k for k in reached])
    short = min(r["evaluations"] for r in runs)
    return [
        operator,
        f"{statistics.median(ratios):.1%}",
        f"{min(ratios):.1%} - {max(ratios):.1%}",
        "never" if math.isinf(median_reach) else f"{median_reach:g}",
        f"{sum(k is not None for k in reached)}/{len(runs)}",
        f"{statistics.median(r['failed'] / max(r['evaluations'], 1) for r in runs):.0%}",
        f"{statistics.median(r['candidates'] / r['run_seconds'] for r in runs):.1f}",
        f"{statistics.median(r['seconds'] for r in runs):.0f}" + ("" if short >= n else f" (only {short} evaluations)"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--evaluations", type=int, default=150, help="real evaluations each run is judged on")
    parser.add_argument("--operators", default="search,random,tunables", help=f"comma-separated, of {', '.join(MUTATION)}")
    parser.add_argument("--islands", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--noise", type=float, default=0.0, help="relative sd of the hook's random factor on the score")
    parser.add_argument("--keep", type=Path, help="make the repositories here and keep them (default: a temporary dir)")
    parser.add_argument("--json", type=Path, default=RESULTS / "search_synthetic.json", help="where the record goes")
    args = parser.parse_args()
    operators = args.operators.split(",")
    unknown = [o for o in operators if o not in MUTATION]
    if unknown:
        parser.error(f"--operators: unknown {', '.join(unknown)} (known: {', '.join(MUTATION)})")

    started = time.monotonic()
    space = enumerate_objective(objective())
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="gitevolve-search-"))
    runs: dict[str, list[dict]] = {o: [] for o in operators}
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        for operator in operators:
            for seed in range(args.seeds):
                began = time.monotonic()
                seeded = run_seed(args, workdir, operator, seed)
                made, invocations = seeded.made, seeded.invocations
                result = {"seed": seed, **outcome(made, args.evaluations, space["optimum"]), "invocations": invocations,
                          "evaluated": len(made), "seconds": time.monotonic() - began,
                          "candidates": seeded.candidates, "run_seconds": seeded.seconds,
                          "trajectory": [n["metrics"]["exact"] if n.get("status") == "ok" else None for n in made]}
                runs[operator].append(result)
                reached = result["within_3pct_after"]
                print(f"  {operator} seed {seed}: {result['ratio']:.1%} of the optimum after {result['evaluations']} "
                      f"evaluations, {f'within 3% after {reached}' if reached else 'never within 3%'} "
                      f"({result['seconds']:.0f} s, {invocations} x gitevolve run)", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    at = ", ".join(f"{k}={v}" for k, v in space["optimum_at"].items())
    dead = ", ".join(f"{t.name} dead unless {t.when}" for t in TUNABLES if t.when)
    print(f"Objective: {len(TUNABLES)} tunables, {space['settings']:,} settings ({space['distinct']:,} distinct programs: "
          f"{dead}), {space['valid']:,} valid, {space['within']} within 3% of the optimum.")
    print(f"optimum {space['optimum']:.1f} at {at}; initial {space['initial']:.1f} "
          f"({space['initial'] / space['optimum']:.1%} of it).\n")
    n = args.evaluations
    headers = ["operator", f"best in first {n} / optimum (median)", "min - max", "evaluations to within 3% (median)",
               "seeds within 3%", "failed", "candidates/s", "s per seed"]
    print(tabulate([summary_row(o, runs[o], n) for o in operators], headers=headers))
    print(f"\n{args.seeds} seed(s), {args.islands} islands, {args.workers} workers, noise {args.noise:g}; "
          f"{time.monotonic() - started:.0f} s in all.")

    record = {"gitevolve": gitevolve.__version__, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "tunables": [asdict(t) for t in TUNABLES], "objective": space,
              "runs": runs, "seconds": time.monotonic() - started}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=1) + "\n")
    print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
