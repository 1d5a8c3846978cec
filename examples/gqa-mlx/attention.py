"""Grouped-query attention (as in Qwen3) written with plain MLX ops.

    gqa_attention(queries, keys, values, scale, causal) -> (B, Hq, Lq, D) in the queries' dtype

queries (B, Hq, Lq, D), keys and values (B, Hkv, Lk, D) with Hq a multiple of Hkv: query head h
reads KV head h // (Hq // Hkv). With `causal`, query i sees keys j <= i + (Lk - Lq), so a
prompt appended to a cache, and decode (Lq = 1), see everything before them.

Only the EVOLVE-BLOCK may change. Its tunables start at the plain, slow choices; every
combination is correct, and the evaluator (hooks/gqa_mlx.py) measures which is fastest
against mx.fast.scaled_dot_product_attention.
"""

import mlx.core as mx

# EVOLVE-BLOCK-START
# "float32" upcasts half-precision inputs; "input" computes in the inputs' own dtype.
COMPUTE_DTYPE = "float32"  # gitevolve: choices=["float32", "input"]

# How query heads meet their KV head: "repeat" copies K/V to Hq heads; "broadcast" views queries
# as (B, Hkv, G, Lq, D) against K/V broadcast over G; "fold" stacks a group's G heads as G*Lq rows
# of one matrix per KV head; "loop" runs the G query heads of each group one after another.
GROUPING = "repeat"  # gitevolve: choices=["repeat", "broadcast", "fold", "loop"]

# Keys per chunk, combined with an online softmax; 0 takes all keys at once.
KV_CHUNK = 0  # gitevolve: choices=[0, 64, 128, 256, 512]

# "additive" adds a float mask of 0 / -inf; "where" selects -inf where a key is hidden.
MASK = "additive"  # gitevolve: choices=["additive", "where"]

# Skip masking where no key is hidden: decode, and chunks every query sees in full.
SKIP_FULL_MASK = False  # gitevolve: choices=[False, True]

# Scale the Lq x D queries once instead of the Lq x Lk scores.
PRESCALE_QUERIES = False  # gitevolve: choices=[False, True]

# "manual": max, exp, sum and divide as separate ops; "fused": mx.softmax (one kernel).
SOFTMAX = "manual"  # gitevolve: choices=["manual", "fused"]


def _softmax(scores):
    if SOFTMAX == "fused":
        return mx.softmax(scores, axis=-1, precise=True)
    shifted = mx.exp(scores - mx.max(scores, axis=-1, keepdims=True))
    return shifted / mx.sum(shifted, axis=-1, keepdims=True)


def _hidden(rows, query_len, start, stop, key_len):
    """(rows, stop - start) booleans, True where a key is masked; row r is query r % query_len."""
    position = mx.arange(rows) % query_len
    return mx.arange(start, stop)[None, :] > position[:, None] + (key_len - query_len)


def _mask(scores, rows, query_len, start, stop, key_len):
    if SKIP_FULL_MASK and stop - 1 <= key_len - query_len:
        return scores  # the first query already sees key stop - 1, so every query sees the chunk
    hidden = _hidden(rows, query_len, start, stop, key_len)
    if MASK == "additive":
        return scores + mx.where(hidden, -mx.inf, 0.0).astype(scores.dtype)
    return mx.where(hidden, mx.array(-mx.inf, scores.dtype), scores)


def _scores(q, k, scale):
    scores = q @ k.swapaxes(-1, -2)
    return scores if PRESCALE_QUERIES else scores * scale


def _attend(q, k, v, scale, causal, query_len):
    """q (..., rows, D) against k, v (..., Lk, D), broadcast over the leading axes."""
    rows, key_len = q.shape[-2], k.shape[-2]
    chunk = KV_CHUNK if 0 < KV_CHUNK < key_len else key_len
    if chunk == key_len:
        scores = _scores(q, k, scale)
        if causal:
            scores = _mask(scores, rows, query_len, 0, key_len, key_len)
        return _softmax(scores) @ v
    # Online softmax: keep each row's running max, the sum of exp below it, and the weighted
    # values, rescaled whenever a later chunk raises the max. Chunks go in key order, so the
    # first holds key 0, which every query sees (Lk >= Lq): the running max is finite from then on.
    best = total = out = None
    for start in range(0, key_len, chunk):
        stop = min(start + chunk, key_len)
        scores = _scores(q, k[..., start:stop, :], scale)
        if causal:
            scores = _mask(scores, rows, query_len, start, stop, key_len)
        chunk_best = mx.max(scores, axis=-1, keepdims=True)
        new_best = chunk_best if best is None else mx.maximum(best, chunk_best)
        weights = mx.exp(scores - new_best)
        part = weights @ v[..., start:stop, :]
        if best is None:
            total, out = mx.sum(weights, axis=-1, keepdims=True), part
        else:
            rescale = mx.exp(best - new_best)
            total = total * rescale + mx.sum(weights, axis=-1, keepdims=True)
            out = out * rescale + part
        best = new_best
    return out / total


def gqa_attention(queries, keys, values, scale, causal):
    batch, query_heads, query_len, dim = queries.shape
    kv_heads = keys.shape[1]
    group = query_heads // kv_heads
    dtype = mx.float32 if COMPUTE_DTYPE == "float32" else queries.dtype
    q, k, v = queries.astype(dtype), keys.astype(dtype), values.astype(dtype)
    if PRESCALE_QUERIES:
        q = q * mx.array(scale, dtype)
    if GROUPING == "repeat":
        out = _attend(q, mx.repeat(k, group, axis=1), mx.repeat(v, group, axis=1), scale, causal, query_len)
    elif GROUPING == "broadcast":
        q = q.reshape(batch, kv_heads, group, query_len, dim)
        out = _attend(q, k[:, :, None], v[:, :, None], scale, causal, query_len)
    elif GROUPING == "fold":
        q = q.reshape(batch, kv_heads, group * query_len, dim)
        out = _attend(q, k, v, scale, causal, query_len)
    else:
        q = q.reshape(batch, kv_heads, group, query_len, dim)
        out = mx.stack([_attend(q[:, :, g], k, v, scale, causal, query_len) for g in range(group)], axis=2)
    return out.reshape(batch, query_heads, query_len, dim).astype(queries.dtype)
# EVOLVE-BLOCK-END
