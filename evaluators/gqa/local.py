"""The race in one process, for tests and benchmarks: the same blocks, the same judgement and the
same result as under the hook, with the clock and the baseline in the candidate's own process.

It cannot keep a candidate honest (a candidate can reach this process's clock and baseline), and
the hook never uses it: there the supervisor keeps both out of the candidate's reach
(supervise.py). Its clock is the timing process's own, so "parent" and "child" times agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from evaluators.gqa import bandwidth, race, report, timing
from evaluators.gqa.baseline import attention as baseline_attention
from evaluators.gqa.correctness import make_inputs
from evaluators.gqa.evaluate import Failed
from evaluators.gqa.memory import peak_bytes
from evaluators.gqa.shapes import Scenario


@dataclass
class _Worker:
    run: Callable[[dict, Callable[[dict], None]], None]

    def block(self, command: dict) -> race.Block:
        said = {}
        self.run(command, lambda message: said.__setitem__(message["op"], message))
        seconds = said["end"]["seconds"]
        return race.Block(seconds, seconds, len(command["seeds"]), said["checked"]["digest"])

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass


@dataclass
class Local:
    budget: race.Budget = race.Budget()
    allow_identical: bool = False
    keeps_baseline: bool = True
    device: bandwidth.Bandwidth | None = None
    cleans: dict = field(default_factory=dict)
    peaks: dict = field(default_factory=dict)
    races: dict = field(default_factory=dict)

    def prepare(self, scenarios: Sequence[Scenario]) -> None:
        self.device = bandwidth.measure()
        for s in scenarios:
            self.cleans[s.name] = race.clean(_Worker(timing.runner(baseline_attention, s)), s.name, s.query_bytes,
                                             self.budget)
            self.peaks[s.name] = peak_bytes(baseline_attention, make_inputs(s).args())

    def race(self, scenario: Scenario, block) -> None:
        baseline = _Worker(timing.runner(baseline_attention, scenario))
        try:
            # Not judged for a slowed baseline: here the baseline shares the candidate's process and
            # caches, and is not stopped while the candidate's threads run.
            self.races[scenario.name] = race.race(_Worker(block), baseline, scenario.name, self.cleans[scenario.name],
                                                  self.budget, slowed=False)
        except race.Cheated as e:
            raise Failed(e.reason, e.kind, e.transient) from None

    def finish(self, scenarios: Sequence[Scenario], checked: dict) -> dict:
        return report.assemble(checked, scenarios, self.races, self.peaks, self.device, self.allow_identical)
