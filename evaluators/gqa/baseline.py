"""The baseline's timing process (hooks/gqa_mlx.py --baseline): MLX's own attention, timed in a
process that never loads candidate code, so nothing a candidate does can reach the function it
races, nor slow it down from inside.

It measures the device's bandwidth first (while the supervisor holds the candidate's process
stopped), then serves the supervisor:

    block   time one block of calls (timing.py)
    peak    the bytes one call holds at its peak, on fresh inputs of a scenario
    quit    exit
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import traceback

import mlx.core as mx

from evaluators.gqa import backend, bandwidth, timing
from evaluators.gqa.channel import Channel
from evaluators.gqa.correctness import make_inputs
from evaluators.gqa.memory import peak_bytes
from evaluators.gqa.shapes import select

_sdpa = mx.fast.scaled_dot_product_attention


def attention(queries, keys, values, scale, causal, masked_decode: bool = False):
    """MLX's attention as mlx-lm calls it.

    It takes Hkv < Hq directly, and its "causal" mask is aligned bottom-right like ours. A single
    query row sees every key, so decode goes without the mask: with mask="causal" MLX 0.32's
    CUDA backend takes a slower path (measured on the H100: ~680 us per call at a 32k cache
    against ~170 us unmasked), which would flatter every candidate. `masked_decode` passes the
    mask there too (benchmarks/gqa_kernels.py --mlx-decode-mask).
    """
    masked = causal and (queries.shape[2] > 1 or masked_decode)
    return _sdpa(queries, keys, values, scale=scale, mask="causal" if masked else None)


def serve(channel: Channel, args: argparse.Namespace) -> None:
    try:
        chosen = backend.choose(args.backend)
    except backend.Unavailable as e:
        channel.send({"op": "unavailable", "reason": str(e)})
        return
    scenarios = {s.name: s for s in select(args.scenarios or chosen.scenario_set)}
    channel.send({"op": "hello"})
    channel.receive()  # "measure": the supervisor has stopped the candidate's process
    device = bandwidth.measure()
    channel.send({"op": "ready", "backend": backend.current(), "device": str(mx.default_device()),
                  "scenarios": list(scenarios), "bandwidth": dataclasses.asdict(device)})
    runners = {}
    while True:
        message, _ = channel.receive()
        op = message["op"]
        if op == "quit":
            return
        scenario = scenarios[message["scenario"]]
        if op == "block":
            if scenario.name not in runners:
                runners.clear()  # one scenario's inputs at a time
                runners[scenario.name] = timing.runner(attention, scenario)
            runners[scenario.name](message, channel.send)
        elif op == "peak":
            channel.send({"op": "peak", "bytes": peak_bytes(attention, make_inputs(scenario).args())})
        else:
            raise ValueError(f"unknown command {op!r}")


def main(args: argparse.Namespace) -> None:
    channel = Channel.from_arg(args.channel)
    code = 0
    try:
        serve(channel, args)
    except BaseException as e:  # noqa: BLE001 - told to the supervisor, which classifies it
        code = 1
        try:
            channel.send({"op": "error", "error": f"{type(e).__name__}: {e}"[:2000],
                          "traceback": traceback.format_exc()[-3000:]})
        except OSError:
            pass
        traceback.print_exc()
    sys.stderr.flush()
    os._exit(code)
