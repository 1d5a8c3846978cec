"""What the GQA harness measures: model head layouts and the scenarios run on them.

Lengths are chosen so that none is a multiple of a likely tile (37, 29, 1000, 777...):
a kernel that only handles full tiles, or that reads the query length where it needs the
key length, shows up as a mismatch instead of passing by luck.
"""

from __future__ import annotations

from dataclasses import dataclass


ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class Model:
    name: str
    query_heads: int
    kv_heads: int
    head_dim: int

    @property
    def group(self) -> int:
        return self.query_heads // self.kv_heads


MODELS = {
    m.name: m
    for m in (
        Model("qwen3-0.6b", query_heads=16, kv_heads=8, head_dim=128),
        # The shape the published OpenEvolve run used (while calling it 0.6B): 5 query heads per KV head.
        Model("qwen3-14b", query_heads=40, kv_heads=8, head_dim=128),
        Model("tiny", query_heads=8, kv_heads=2, head_dim=64),
    )
}


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # "prefill" or "decode"
    batch: int
    query_len: int
    key_len: int
    dtype: str  # an mlx dtype name: float32, float16, bfloat16
    model: str
    causal: bool = True  # decode too: Lq=1 must still see the whole cache (offset Lk - Lq)

    def __post_init__(self) -> None:
        if self.kind not in ("prefill", "decode"):
            raise ValueError(f"{self.name}: kind must be prefill or decode, not {self.kind!r}")
        if self.key_len < self.query_len:
            raise ValueError(f"{self.name}: key_len < query_len leaves queries with no key to attend to")
        if self.dtype not in ITEMSIZE:
            raise ValueError(f"{self.name}: dtype must be one of {', '.join(ITEMSIZE)}, not {self.dtype!r}")
        if self.model not in MODELS:
            raise ValueError(f"{self.name}: unknown model {self.model!r}")

    @property
    def shape(self) -> Model:
        return MODELS[self.model]

    @property
    def kv_bytes(self) -> int:
        """Bytes of keys and values together: what attention must read at least once."""
        m = self.shape
        return 2 * self.batch * m.kv_heads * self.key_len * m.head_dim * ITEMSIZE[self.dtype]

    @property
    def query_bytes(self) -> int:
        m = self.shape
        return self.batch * m.query_heads * self.query_len * m.head_dim * ITEMSIZE[self.dtype]

    def describe(self) -> str:
        m = self.shape
        return (f"{self.name}: {self.kind} B={self.batch} Hq={m.query_heads} Hkv={m.kv_heads} D={m.head_dim} "
                f"Lq={self.query_len} Lk={self.key_len} {self.dtype}{' causal' if self.causal else ''}")


def _prefill(name, batch, lq, lk, dtype, model, causal=True):
    return Scenario(name, "prefill", batch, lq, lk, dtype, model, causal)


def _decode(name, batch, lk, dtype, model, causal=True):
    return Scenario(name, "decode", batch, 1, lk, dtype, model, causal)


# Each runs in a few milliseconds on one CPU core, so a candidate is judged in seconds.
CPU = (
    _prefill("prefill-37", 1, 37, 37, "float32", "qwen3-0.6b"),
    # A prompt continued against an existing cache: Lq < Lk, so the causal offset matters in prefill too.
    _prefill("prefill-29-after-71", 1, 29, 100, "float16", "qwen3-14b"),
    _decode("decode-256-b2", 2, 256, "float32", "qwen3-0.6b"),
    _decode("decode-1000", 1, 1000, "float16", "qwen3-14b"),
    _decode("decode-777-bf16", 1, 777, "bfloat16", "qwen3-0.6b"),
)

# Sized for one GPU: short and long prompts, decode against caches up to 32k, all three dtypes.
GPU = (
    _prefill("prefill-16", 1, 16, 16, "float16", "qwen3-0.6b"),
    _prefill("prefill-37-b4", 4, 37, 37, "bfloat16", "qwen3-0.6b"),
    _prefill("prefill-64-fp32", 2, 64, 64, "float32", "qwen3-14b"),
    _prefill("prefill-61-after-450", 1, 61, 511, "float16", "qwen3-14b"),
    _prefill("prefill-512", 1, 512, 512, "float16", "qwen3-0.6b"),
    _prefill("prefill-1000-b2", 2, 1000, 1000, "bfloat16", "qwen3-0.6b"),
    _prefill("prefill-2048", 1, 2048, 2048, "float16", "qwen3-14b"),
    _prefill("prefill-4000", 1, 4000, 4000, "bfloat16", "qwen3-0.6b"),
    _prefill("prefill-777-noncausal", 1, 777, 777, "float16", "qwen3-0.6b", causal=False),
    _decode("decode-128", 1, 128, "float16", "qwen3-0.6b"),
    _decode("decode-129-b8", 8, 129, "bfloat16", "qwen3-0.6b"),
    _decode("decode-1000", 1, 1000, "float16", "qwen3-14b"),
    _decode("decode-1023-fp32", 1, 1023, "float32", "qwen3-0.6b"),
    _decode("decode-2049-b4", 4, 2049, "float16", "qwen3-0.6b"),
    _decode("decode-4095", 1, 4095, "bfloat16", "qwen3-14b"),
    _decode("decode-8191-b2", 2, 8191, "float16", "qwen3-14b"),
    _decode("decode-16384", 1, 16384, "float16", "qwen3-0.6b"),
    _decode("decode-16383-bf16", 1, 16383, "bfloat16", "qwen3-14b"),
    _decode("decode-32768", 1, 32768, "float16", "qwen3-14b"),
    _decode("decode-32767-b2", 2, 32767, "bfloat16", "qwen3-0.6b"),
    # Memory stress: sixteen sequences' caches, 537 MB of K/V, far past any cache on the chip.
    _decode("decode-8191-b16-memory", 16, 8191, "float16", "qwen3-14b"),
)

SETS = {"cpu": CPU, "gpu": GPU}


def select(spec: str) -> tuple[Scenario, ...]:
    """A named set ("cpu", "gpu"), or a comma-separated list of scenario names from any set."""
    if spec in SETS:
        return SETS[spec]
    known = {s.name: s for group in SETS.values() for s in group}
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f"unknown scenario set or names {unknown or spec!r}: use one of {', '.join(SETS)} "
                         f"or names from them")
    return tuple(known[n] for n in names)
