"""End-to-end generation: a Qwen3 model with the candidate's attention against the same model with MLX's.

    python benchmarks/qwen3_decode.py --kernel attention.py                 # Qwen3-0.6B's shapes, fp16
    python benchmarks/qwen3_decode.py --kernel gitevolve/island-2 --model qwen3-14b --layers 8
    python benchmarks/qwen3_decode.py --kernel examples/gqa-mlx/attention.py --model tiny --dtype float32   # CPU

The model is mlx-lm's own Qwen3 code with random weights (nothing to download), so what is
measured is the attention inside a real decoder: RoPE, the KV cache mlx-lm keeps (a strided view
of a buffer grown in steps of 256, not the fresh contiguous arrays of a microbenchmark), norms and
MLPs around it. Both models share the weights and the prompt; generations alternate
(A B B A ...) so drift of the machine falls on both sides.

The published OpenEvolve result on this task timed text generation in a child process that never
loaded the evolved kernel. Here the candidate's attention is counted: every layer of every forward
pass must have gone through it, or the run fails instead of reporting a speedup. Greedy tokens and
prefill logits are compared with the baseline's, and printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx_lm.models.qwen3 as qwen3
from mlx_lm.models.cache import make_prompt_cache
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.candidate_file import candidate_file  # noqa: E402
from evaluators.gqa.guards import BaselineCalled, baseline_hidden, load_candidate  # noqa: E402

# Qwen3's published configs (config.json on the Hub); "tiny" keeps the structure for a CPU check.
CONFIGS = {
    "qwen3-0.6b": dict(hidden_size=1024, num_hidden_layers=28, intermediate_size=3072, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True),
    "qwen3-14b": dict(hidden_size=5120, num_hidden_layers=40, intermediate_size=17408, num_attention_heads=40,
                      num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=False),
    "tiny": dict(hidden_size=256, num_hidden_layers=2, intermediate_size=512, num_attention_heads=8,
                 num_key_value_heads=2, head_dim=32, vocab_size=1000, tie_word_embeddings=True),
}


@dataclass
class Generation:
    tokens: list[int]
    prefill_s: float
    decode_s: float
    logits: mx.array = field(repr=False)  # the prefill's last-position logits, float32


@dataclass
class Side:
    name: str
    prefill_tps: list[float] = field(default_factory=list)
    decode_tps: list[float] = field(default_factory=list)
    peak_memory: int = 0

    def summary(self) -> dict:
        return {
            "prefill_tokens_per_s": statistics.median(self.prefill_tps),
            "decode_tokens_per_s": statistics.median(self.decode_tps),
            "decode_spread": _spread(self.decode_tps),
            "peak_memory_mb": self.peak_memory / 2**20,
        }


def build_model(name: str, layers: int | None, dtype: mx.Dtype, seed: int) -> qwen3.Model:
    config = {**CONFIGS[name], "model_type": "qwen3", "rms_norm_eps": 1e-6, "max_position_embeddings": 40960,
              "rope_theta": 1_000_000.0}
    if layers:
        config["num_hidden_layers"] = layers
    mx.random.seed(seed)
    model = qwen3.Model(qwen3.ModelArgs(**config))
    model.set_dtype(dtype)
    mx.eval(model.parameters())
    return model


def generate(model: qwen3.Model, prompt: mx.array, new_tokens: int) -> Generation:
    """Greedy decoding, one `mx.eval` per token, as a chat loop would do it."""
    cache = make_prompt_cache(model)
    start = time.perf_counter()
    logits = model(prompt[None], cache=cache)[:, -1, :]
    token = mx.argmax(logits, axis=-1)
    mx.eval(token, logits)
    prefill_s = time.perf_counter() - start
    tokens = [token.item()]
    start = time.perf_counter()
    for _ in range(new_tokens - 1):
        token = mx.argmax(model(token[:, None], cache=cache)[:, -1, :], axis=-1)
        mx.eval(token)
        tokens.append(token.item())
    decode_s = time.perf_counter() - start
    return Generation(tokens, prefill_s, decode_s, logits.astype(mx.float32))


class Patched:
    """mlx-lm's attention call routed to the candidate, counting the calls that reach it."""

    def __init__(self, candidate) -> None:
        self.candidate, self.calls = candidate, 0
        self.original = qwen3.scaled_dot_product_attention

    def __call__(self, queries, keys, values, cache, scale, mask, sinks=None):
        if sinks is not None or not (mask is None or isinstance(mask, str)):
            raise SystemExit("the model asked for attention sinks or an explicit mask array, which gqa_attention does not take")
        self.calls += 1
        with baseline_hidden() as wire:
            try:
                out = self.candidate.gqa_attention(queries, keys, values, scale, mask == "causal")
            except BaselineCalled:
                pass
        if wire.calls:  # also when the candidate swallowed the error
            raise SystemExit("the candidate called mx.fast.scaled_dot_product_attention: there is nothing to compare")
        return out

    def __enter__(self) -> Patched:
        qwen3.scaled_dot_product_attention = self
        return self

    def __exit__(self, *exc) -> None:
        qwen3.scaled_dot_product_attention = self.original


def _spread(values: list[float]) -> float:
    """Half the distance between the quartiles, relative to the median."""
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4)
    return (q[2] - q[0]) / 2 / statistics.median(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", required=True, help="the candidate: a path, or a commit-ish holding --file")
    parser.add_argument("--file", default="attention.py", help="the candidate's file at a commit-ish")
    parser.add_argument("--model", choices=sorted(CONFIGS), default="qwen3-0.6b")
    parser.add_argument("--layers", type=int, help="fewer decoder layers than the model has (memory, time)")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=4, help="generations per side, alternating")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.new_tokens < 2 or args.repeats < 1:
        parser.error("--new-tokens must be at least 2 and --repeats at least 1")

    candidate = load_candidate(candidate_file(args.kernel, args.file))
    model = build_model(args.model, args.layers, getattr(mx, args.dtype), args.seed)
    layers = len(model.layers)
    prompt = mx.random.randint(0, CONFIGS[args.model]["vocab_size"], (args.prompt_tokens,), key=mx.random.key(args.seed))
    base, cand = Side("mx.fast.scaled_dot_product_attention"), Side("candidate")
    generate(model, prompt, 4)  # compile and warm both paths before anything is timed
    with Patched(candidate):
        generate(model, prompt, 4)

    runs: dict[str, Generation] = {}
    calls_per_generation = layers * args.new_tokens  # one prefill pass and new_tokens - 1 decode passes
    for r in range(args.repeats):
        for side in ((base, cand) if r % 2 == 0 else (cand, base)):
            mx.reset_peak_memory()
            if side is cand:
                with Patched(candidate) as patched:
                    g = generate(model, prompt, args.new_tokens)
                if patched.calls != calls_per_generation:
                    raise SystemExit(f"the candidate's attention ran {patched.calls} times in a generation that needs "
                                     f"{calls_per_generation}: it was not in the timed path")
            else:
                g = generate(model, prompt, args.new_tokens)
            side.peak_memory = max(side.peak_memory, mx.get_peak_memory())
            side.prefill_tps.append(args.prompt_tokens / g.prefill_s)
            side.decode_tps.append((args.new_tokens - 1) / g.decode_s)
            runs[side.name] = g

    b, c = runs[base.name], runs[cand.name]
    same = sum(x == y for x, y in zip(b.tokens, c.tokens))
    diverged = next((i for i, (x, y) in enumerate(zip(b.tokens, c.tokens)) if x != y), None)
    logit_error = mx.max(mx.abs(b.logits - c.logits)).item()
    result = {
        "model": args.model, "layers": layers, "dtype": args.dtype, "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens, "repeats": args.repeats, "device": str(mx.default_device()),
        "mlx": mx.__version__, "baseline": (theirs := base.summary()), "candidate": (ours := cand.summary()),
        "decode_speedup": ours["decode_tokens_per_s"] / theirs["decode_tokens_per_s"],
        "prefill_speedup": ours["prefill_tokens_per_s"] / theirs["prefill_tokens_per_s"],
        "candidate_attention_calls_per_generation": calls_per_generation,
        "identical_tokens": same, "first_divergence": diverged, "prefill_logits_max_abs_error": logit_error,
        "runs": {s.name: asdict(s) for s in (base, cand)},
    }
    m = CONFIGS[args.model]
    print(f"{args.model} ({layers} layers, {m['num_attention_heads']}:{m['num_key_value_heads']} heads, dim {m['head_dim']}), "
          f"{args.dtype}, prompt {args.prompt_tokens} + {args.new_tokens} new tokens, {args.repeats} generations a side, "
          f"interleaved, on {mx.default_device()}")
    rows = [[s.name, f"{r['prefill_tokens_per_s']:.1f}", f"{r['decode_tokens_per_s']:.1f}", f"±{100 * r['decode_spread']:.1f}%",
             f"{r['peak_memory_mb']:.0f}"] for s, r in ((base, result["baseline"]), (cand, result["candidate"]))]
    print(tabulate(rows, headers=["attention", "prefill tok/s", "decode tok/s", "spread", "peak MiB"]))
    print(f"decode speedup {result['decode_speedup']:.3f}x, prefill speedup {result['prefill_speedup']:.3f}x; "
          f"candidate ran in all {calls_per_generation} attention calls of each generation")
    print(f"greedy tokens identical to the baseline's: {same}/{args.new_tokens}"
          + (f" (first divergence at token {diverged})" if diverged is not None else "")
          + f"; prefill logits max |error| {logit_error:.2e}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
