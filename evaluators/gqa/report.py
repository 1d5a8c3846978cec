"""The timed result, put together where the clock is: the candidate's process says what it checked
(correctness, kernels, its peak memory), the race says how long each side took, the baseline's
process what the device can do. Nothing here comes from the candidate's process but its checks;
no figure of speed does. Standard library only: the supervisor runs it.
"""

from __future__ import annotations

from typing import Sequence

from evaluators.gqa import bandwidth, faults, summary
from evaluators.gqa.race import Race
from evaluators.gqa.shapes import Scenario

PEAK = "candidate_peak_bytes."


def assemble(checked: dict, scenarios: Sequence[Scenario], races: dict[str, Race], baseline_peaks: dict[str, int],
             device: bandwidth.Bandwidth, allow_identical: bool = False) -> dict:
    """The hook result of a candidate whose process passed every check (`checked`, status ok)."""
    metrics = {k: v for k, v in checked.get("metrics", {}).items() if not k.startswith(PEAK)}
    peaks = {k[len(PEAK):]: int(v) for k, v in checked.get("metrics", {}).items() if k.startswith(PEAK)}
    artifacts = dict(checked.get("artifacts", {}))
    missing = [s.name for s in scenarios if s.name not in races or s.name not in peaks]
    if missing:
        return faults.failure("timing_tampered", f"the candidate's process finished without racing "
                              f"{', '.join(missing)}", False, metrics, artifacts)
    metrics.update(device.metrics())
    seconds = {n: r.candidate.median_us * 1e-6 for n, r in races.items()}
    for s in scenarios:
        r = races[s.name]
        metrics[f"speedup.{s.name}"] = round(r.speedup, 4)
        metrics[f"candidate_us.{s.name}"] = round(r.candidate.median_us, 1)
        metrics[f"baseline_us.{s.name}"] = round(r.baseline.median_us, 1)
        metrics[f"clean_baseline_us.{s.name}"] = round(r.clean.baseline.median_us, 1)
        if bandwidth.judged(s):
            metrics[f"roofline_fraction.{s.name}"] = float(f"{bandwidth.roofline_fraction(s, seconds[s.name], device):.4g}")
    metrics["baseline_slowdown"] = round(max(r.baseline.fastest_us / r.clean.baseline.fastest_us
                                             for r in races.values()), 3)
    metrics["calls_per_block"] = ", ".join(f"{s.name} {races[s.name].clean.calls}" for s in scenarios)
    metrics["clock_handshake_fraction"] = float(f"{max(r.handshake_fraction for r in races.values()):.3g}")
    artifacts["timings"] = table(scenarios, races)
    for s in scenarios:
        why = bandwidth.impossible(s, seconds[s.name], device)
        if why:
            return faults.failure("impossible_speed", why, False, metrics, artifacts)
    metrics.update(summary.summarise(
        scenarios, seconds, {n: r.baseline.median_us * 1e-6 for n, r in races.items()}, peaks, baseline_peaks))
    metrics["worst_spread"] = round(max(r.spread for r in races.values()), 4)
    # What the score is, for the people who read it (gitevolve shows it beside the ratios).
    metrics["score_is"] = (f"the geometric mean over {len(races)} scenarios of the speedup over "
                           f"mx.fast.scaled_dot_product_attention (1.0: as fast as MLX's own)")
    result = {"status": "ok", "score": summary.geomean(r.speedup for r in races.values()), "metrics": metrics,
              "artifacts": artifacts}
    if not allow_identical and all(_identical(r) for r in races.values()):
        metrics["identical_to_baseline"] = 1
        result["score"] = 0.0
        result["reason"] = ("identical to the baseline: every timed output's bits equal "
                            "mx.fast.scaled_dot_product_attention's, on every scenario (score 0; "
                            "--allow-identical to score it anyway)")
    return result


def _identical(r: Race) -> bool:
    return all(a.digest == b.digest for a, b in zip(r.candidate.blocks, r.baseline.blocks))


def table(scenarios: Sequence[Scenario], races: dict[str, Race]) -> str:
    rows = [f"{'scenario':<24} {'candidate us':>13} {'baseline us':>12} {'alone us':>9} {'speedup':>8} "
            f"{'spread':>7} {'calls':>6}  shape"]
    for s in scenarios:
        r = races[s.name]
        rows.append(f"{s.name:<24} {r.candidate.median_us:>13.1f} {r.baseline.median_us:>12.1f} "
                    f"{r.clean.baseline.median_us:>9.1f} {r.speedup:>8.3f} {r.spread:>7.1%} {r.clean.calls:>6}  "
                    f"{s.describe().split(': ', 1)[1]}")
    return "\n".join(rows)
