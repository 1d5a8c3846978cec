"""The float32 reference every candidate is compared with.

Plain MLX ops, written for clarity rather than speed, and independent of both the candidate
and `mx.fast`: the baseline is what the candidate races, so it must not also be the judge.
"""

from __future__ import annotations

import mlx.core as mx


def causal_visible(query_len: int, key_len: int) -> mx.array:
    """(Lq, Lk) booleans: query i sees key j iff j <= i + (Lk - Lq), the bottom-right aligned
    causal mask of a prompt appended to a cache of Lk - Lq earlier tokens."""
    offset = key_len - query_len
    return mx.arange(key_len)[None, :] <= mx.arange(query_len)[:, None] + offset


def gqa_reference(queries: mx.array, keys: mx.array, values: mx.array, scale: float, causal: bool) -> mx.array:
    """Attention in float32 with query head h reading KV head h // (Hq // Hkv); returns float32.

    For float32 inputs it is computed on the CPU whatever the default device: on the GPU, MLX's
    float32 matmuls run as TF32 (measured on the H100: 2.0e-3 off a float64 reference, against
    2.3e-6 on the CPU), which would fail correct float32 kernels against a tolerance of 1e-4.
    Half-precision tolerances (1.5e-2, 5e-2) leave room for that error, so those references stay
    on the default device: with every reference on the CPU, the 20-scenario GPU set did not finish
    in 270 s on the H100 (cause not isolated; long prefills need ~100 GFLOP of CPU matmul each).
    """
    device = mx.cpu if queries.dtype == mx.float32 else mx.default_device()
    with mx.stream(device):  # ops take their stream when they are built, not when evaluated
        return _attention(queries, keys, values, scale, causal)


def _attention(queries: mx.array, keys: mx.array, values: mx.array, scale: float, causal: bool) -> mx.array:
    batch, query_heads, query_len, _ = queries.shape
    kv_heads, key_len = keys.shape[1], keys.shape[2]
    if query_heads % kv_heads:
        raise ValueError(f"{query_heads} query heads are not a multiple of {kv_heads} KV heads")
    group = query_heads // kv_heads
    q = queries.astype(mx.float32)
    k = mx.repeat(keys.astype(mx.float32), group, axis=1)
    v = mx.repeat(values.astype(mx.float32), group, axis=1)
    scores = (q @ k.swapaxes(-1, -2)) * scale
    if causal:
        scores = mx.where(causal_visible(query_len, key_len), scores, -mx.inf)
    weights = mx.softmax(scores, axis=-1, precise=True)
    return weights @ v
