"""The benchmark's numbers summed up the way the published OpenEvolve GQA run reported them.

That run reported decode +12.5% mean (sd 38.3%), prefill +14.4%, total throughput +10.4%,
memory -0.99%, and 7/3/4/6 scenarios gained over 25%, 5-25%, stayed within 5%, regressed.
The same figures are computed here, from measurements that are trustworthy, so that a result
can be set beside that claim:

    score                     geometric mean over scenarios of baseline median / candidate median
                              (only when every scenario is correct: a wrong one fails the candidate)
    <kind>_speedup            geometric mean of the decode (prefill) scenarios' speedups
    <kind>_speedup_mean, _sd  arithmetic mean and population standard deviation of those speedups
    throughput_tokens_per_s.* query tokens of all scenarios over the time to run each once
                              (candidate, baseline), and throughput_gain, their ratio
    peak_memory_mb.*          the most one call held above its inputs, over scenarios, and
                              memory_change_pct, candidate against baseline
    gained_over_25pct, gained_5_to_25pct, within_5pct, regressed_over_5pct
                              how many scenarios' speedups fall in each band
"""

from __future__ import annotations

import math
import statistics
from typing import Sequence

from evaluators.gqa.shapes import Scenario


def geomean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


def bands(speedups: Sequence[float]) -> dict:
    # Rounded so that 1.05 is 5%, not 5.000000000000004%: the band edges are meant inclusive.
    gains = [round(s - 1.0, 9) for s in speedups]
    return {
        "gained_over_25pct": sum(g > 0.25 for g in gains),
        "gained_5_to_25pct": sum(0.05 < g <= 0.25 for g in gains),
        "within_5pct": sum(-0.05 <= g <= 0.05 for g in gains),
        "regressed_over_5pct": sum(g < -0.05 for g in gains),
    }


def by_kind(scenarios: Sequence[Scenario], speedups: dict[str, float]) -> dict:
    out = {}
    for kind in ("decode", "prefill"):
        mine = [speedups[s.name] for s in scenarios if s.kind == kind]
        if mine:
            out[f"{kind}_speedup"] = round(geomean(mine), 4)
            out[f"{kind}_speedup_mean"] = round(statistics.fmean(mine), 4)
            out[f"{kind}_speedup_sd"] = round(statistics.pstdev(mine), 4)
    return out


def throughput(scenarios: Sequence[Scenario], seconds: dict[str, float]) -> float:
    """Query tokens per second over the whole set: each scenario's batch x query length, once each."""
    tokens = sum(s.batch * s.query_len for s in scenarios)
    return tokens / sum(seconds[s.name] for s in scenarios)


def summarise(scenarios: Sequence[Scenario], candidate_s: dict[str, float], baseline_s: dict[str, float],
              candidate_peak: dict[str, int], baseline_peak: dict[str, int]) -> dict:
    """All of the above, from each scenario's median seconds and peak bytes, candidate and baseline."""
    speedups = {s.name: baseline_s[s.name] / candidate_s[s.name] for s in scenarios}
    ours, theirs = throughput(scenarios, candidate_s), throughput(scenarios, baseline_s)
    peak_ours, peak_theirs = max(candidate_peak.values()), max(baseline_peak.values())
    metrics = {
        "geomean_speedup": round(geomean(speedups.values()), 4),
        **by_kind(scenarios, speedups),
        "throughput_tokens_per_s.candidate": round(ours, 1),
        "throughput_tokens_per_s.baseline": round(theirs, 1),
        "throughput_gain": round(ours / theirs, 4),
        "peak_memory_mb.candidate": round(peak_ours / 2**20, 3),
        "peak_memory_mb.baseline": round(peak_theirs / 2**20, 3),
        **bands(list(speedups.values())),
    }
    if peak_theirs:
        metrics["memory_change_pct"] = round(100 * (peak_ours / peak_theirs - 1), 2)
    return metrics
