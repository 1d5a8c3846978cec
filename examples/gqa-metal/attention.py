"""Grouped-query attention (as in Qwen3) as Metal kernels under MLX (mx.fast.metal_kernel).

    gqa_attention(queries, keys, values, scale, causal) -> (B, Hq, Lq, D) in the queries' dtype

queries (B, Hq, Lq, D), keys and values (B, Hkv, Lk, D) with Hq a multiple of Hkv: query head h
reads KV head h // (Hq // Hkv). With `causal`, query i sees keys j <= i + (Lk - Lq), so decode
(Lq = 1) against a KV cache sees the whole cache. float16, bfloat16 and float32.

The same algorithm as examples/gqa-cuda (its "lanes" vector kernel and its second-launch merge),
in the Metal Shading Language, after MLX's own sdpa_vector kernels: SIMD groups of 32 lanes,
simd_shuffle_xor / simd_sum, threadgroup memory. Sequence and cache lengths are runtime values
read from the arrays' shapes; the kernels read the inputs' strides, so a strided view of a KV cache
is read in place. NOT COMPILED OR RUN YET: written without Apple hardware (see README.md).

The tunables start at the plain, slow choices of the published starting point: one thread per
query row, scalar dot products, a separate softmax pass, each query head reading its own copy of
K/V. Only the EVOLVE-BLOCK may change.
"""

from dataclasses import dataclass

import mlx.core as mx

# EVOLVE-BLOCK-START
# A threadgroup serves one query row of HEADS query heads (1, or the whole GQA group sharing one
# KV head) over one split of the keys. Its THREADS threads form THREADS / KEY_LANES key slots; the
# KEY_LANES lanes of a slot share one key row, each holding D / KEY_LANES of its elements, and
# add their partial dot products with SIMD shuffles.
THREADS = 1  # gitevolve: choices=[1, 32, 64, 128, 256]
KEY_LANES = 1  # gitevolve: choices=[1, 2, 4, 8, 16, 32]

# Elements a lane reads from a row at a time (clamped to what a lane holds).
VEC = 1  # gitevolve: choices=[1, 2, 4, 8]

# True: one threadgroup serves all the query heads of a KV head's group (K/V read once for it).
SHARE_KV = False  # gitevolve: choices=[False, True]

# False: a first pass over the keys finds the row maximum, a second exponentiates and sums
# (K read twice). True: one pass with a running maximum, rescaling the sums when it rises.
ONLINE_SOFTMAX = False  # gitevolve: choices=[False, True]

# Keys each slot loads before it uses any of them.
UNROLL = 1  # gitevolve: choices=[1, 2, 4, 8]

# Split the keys (two-pass / flash-decoding) into as many parts as keep the threadgroups within
# this many; 0 never splits. A split holds at least MIN_SPLIT_KEYS keys; a second kernel merges
# the splits.
SPLIT_BLOCKS = 0  # gitevolve: choices=[0, 32, 64, 128, 256, 512]
MIN_SPLIT_KEYS = 256  # gitevolve: choices=[32, 64, 128, 256, 512, 1024]

MAX_SPLITS = 256
COMBINE_THREADS = 128

HEADER = r"""
// N consecutive elements of a row as floats, `stride` apart (1 for a contiguous row).
template <int N, typename T>
inline void gqa_load(const device T* p, int64_t stride, thread float* out) {
  if (stride == 1) {
    for (int i = 0; i < N; ++i) out[i] = static_cast<float>(p[i]);
  } else {
    for (int i = 0; i < N; ++i) out[i] = static_cast<float>(p[i * stride]);
  }
}
"""

# Template arguments: T, D, G (query heads per KV head), HEADS (query heads per threadgroup),
# LANES, VEC, THREADS, UNROLL, ONLINE, CAUSAL.
VECTOR_SOURCE = r"""
  constexpr int SLOTS = THREADS / LANES;
  constexpr int SIMD = THREADS < 32 ? THREADS : 32;   // lanes of a SIMD group that exist
  constexpr int GROUPS = (THREADS + 31) / 32;         // SIMD groups in the threadgroup
  constexpr int E = D / LANES;                        // elements of a row held by one lane
  constexpr int CHUNKS = E / VEC;   // lane l holds elements [(l + LANES*i)*VEC, +VEC), i < CHUNKS
  constexpr float LOG2E = 1.4426950408889634f;
  const float START = -1e30f;       // finite: exp2(START - START) is 1, never NaN

  const int Hq = queries_shape[1], Lq = queries_shape[2], Lk = keys_shape[2];
  const int nsplit = int(threadgroups_per_grid.x), split = int(threadgroup_position_in_grid.x);
  const int qi = int(threadgroup_position_in_grid.z);
  const int head_blocks = Hq / HEADS;
  const int hb = int(threadgroup_position_in_grid.y);
  const int b = hb / head_blocks, h0 = (hb % head_blocks) * HEADS, kvh = h0 / G;
  const int tid = int(thread_position_in_threadgroup.x), lane = tid % LANES, slot = tid / LANES;

  // The keys this row sees, and this threadgroup's share of them.
  int visible = CAUSAL ? min(Lk, qi + Lk - Lq + 1) : Lk;
  visible = max(visible, 0);
  const int per = (visible + nsplit - 1) / nsplit;
  const int k_begin = min(visible, split * per);
  const int n = min(visible, k_begin + per) - k_begin;

  const device T* kbase = keys + b * keys_strides[0] + kvh * keys_strides[1] + k_begin * keys_strides[2];
  const device T* vbase = values + b * values_strides[0] + kvh * values_strides[1] + k_begin * values_strides[2];
  const int64_t krow = keys_strides[2], vrow = values_strides[2];
  const int64_t kcol = keys_strides[3], vcol = values_strides[3];

  // This lane's elements of the queries, scaled so that exp2 gives the softmax's exp.
  const float qscale = scale * LOG2E;
  float q[HEADS][E];
  for (int j = 0; j < HEADS; ++j) {
    const device T* qrow = queries + b * queries_strides[0] + (h0 + j) * queries_strides[1] + qi * queries_strides[2];
    for (int i = 0; i < CHUNKS; ++i)
      for (int e = 0; e < VEC; ++e)
        q[j][i * VEC + e] = static_cast<float>(qrow[((lane + LANES * i) * VEC + e) * queries_strides[3]]) * qscale;
  }

  float m[HEADS], l[HEADS], acc[HEADS][E];
  for (int j = 0; j < HEADS; ++j) {
    m[j] = START;
    l[j] = 0.f;
    for (int e = 0; e < E; ++e) acc[j][e] = 0.f;
  }

  threadgroup float red_m[SLOTS][HEADS];
  threadgroup float red_l[SLOTS][HEADS];
  threadgroup float row_m[HEADS];
  threadgroup float row_l[HEADS];
  threadgroup float red[GROUPS * HEADS * D];

  // Two passes when !ONLINE: pass 0 finds the row maximum (keys only), pass 1 sums. One pass
  // (pass 1 alone) when ONLINE. Every lane of a SIMD group runs the shuffles: the loops around
  // them have threadgroup-uniform trip counts, and keys past the end are masked, not skipped.
  for (int pass = ONLINE ? 1 : 0; pass < 2; ++pass) {
    for (int step = 0; step < n; step += SLOTS * UNROLL) {
      float s[UNROLL][HEADS];
      float v[UNROLL][E];
      for (int u = 0; u < UNROLL; ++u) {
        const int key = step + u * SLOTS + slot;
        float k[E];
        if (key < n) {
          for (int i = 0; i < CHUNKS; ++i) {
            const int col = (lane + LANES * i) * VEC;
            gqa_load<VEC>(kbase + key * krow + col * kcol, kcol, k + i * VEC);
            if (pass == 1) gqa_load<VEC>(vbase + key * vrow + col * vcol, vcol, v[u] + i * VEC);
          }
        } else {
          for (int e = 0; e < E; ++e) { k[e] = 0.f; v[u][e] = 0.f; }
        }
        for (int j = 0; j < HEADS; ++j) {
          float dot = 0.f;
          for (int e = 0; e < E; ++e) dot += q[j][e] * k[e];
          s[u][j] = dot;
        }
      }
      for (ushort off = LANES / 2; off > 0; off /= 2)
        for (int u = 0; u < UNROLL; ++u)
          for (int j = 0; j < HEADS; ++j) s[u][j] += simd_shuffle_xor(s[u][j], off);
      for (int u = 0; u < UNROLL; ++u)
        if (step + u * SLOTS + slot >= n)
          for (int j = 0; j < HEADS; ++j) s[u][j] = -INFINITY;

      for (int j = 0; j < HEADS; ++j) {
        if (pass == 0) {
          for (int u = 0; u < UNROLL; ++u) m[j] = max(m[j], s[u][j]);
          continue;
        }
        if (ONLINE) {
          float top = m[j];
          for (int u = 0; u < UNROLL; ++u) top = max(top, s[u][j]);
          const float corr = exp2(m[j] - top);
          m[j] = top;
          l[j] *= corr;
          for (int e = 0; e < E; ++e) acc[j][e] *= corr;
        }
        for (int u = 0; u < UNROLL; ++u) {
          const float p = exp2(s[u][j] - m[j]);
          l[j] += p;
          for (int e = 0; e < E; ++e) acc[j][e] += p * v[u][e];
        }
      }
    }
    if (pass == 0) {
      // The threadgroup's maximum, shared by every slot for the second pass.
      if (lane == 0)
        for (int j = 0; j < HEADS; ++j) red_m[slot][j] = m[j];
      threadgroup_barrier(mem_flags::mem_threadgroup);
      for (int j = tid; j < HEADS; j += THREADS) {
        float best = START;
        for (int i = 0; i < SLOTS; ++i) best = max(best, red_m[i][j]);
        row_m[j] = best;
      }
      threadgroup_barrier(mem_flags::mem_threadgroup);
      for (int j = 0; j < HEADS; ++j) m[j] = row_m[j];
      threadgroup_barrier(mem_flags::mem_threadgroup);
    }
  }

  // Merge the slots: a common maximum and rescaled sums; the values of the slots of a SIMD group
  // added with shuffles, then those of the SIMD groups through threadgroup memory.
  if (lane == 0)
    for (int j = 0; j < HEADS; ++j) { red_m[slot][j] = m[j]; red_l[slot][j] = l[j]; }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  for (int j = tid; j < HEADS; j += THREADS) {
    float best = START;
    for (int i = 0; i < SLOTS; ++i) best = max(best, red_m[i][j]);
    float total = 0.f;
    for (int i = 0; i < SLOTS; ++i) total += red_l[i][j] * exp2(red_m[i][j] - best);
    row_m[j] = best;
    row_l[j] = total;
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  for (int j = 0; j < HEADS; ++j) {
    const float w = exp2(m[j] - row_m[j]);
    for (int e = 0; e < E; ++e) acc[j][e] *= w;
  }
  for (ushort off = LANES; off < SIMD; off *= 2)
    for (int j = 0; j < HEADS; ++j)
      for (int e = 0; e < E; ++e) acc[j][e] += simd_shuffle_xor(acc[j][e], off);
  if (tid % SIMD < LANES)
    for (int j = 0; j < HEADS; ++j)
      for (int i = 0; i < CHUNKS; ++i)
        for (int e = 0; e < VEC; ++e)
          red[(tid / SIMD) * HEADS * D + j * D + (lane + LANES * i) * VEC + e] = acc[j][i * VEC + e];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (GROUPS > 1) {
    for (int i = tid; i < HEADS * D; i += THREADS) {
      float t = 0.f;
      for (int g = 0; g < GROUPS; ++g) t += red[g * HEADS * D + i];
      red[i] = t;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }

  // Output row of query head h0 + j: ((b * Hq + h0 + j) * Lq + qi).
  const int64_t row0 = (int64_t(b) * Hq + h0) * Lq + qi;
  if (nsplit == 1) {
    for (int i = tid; i < HEADS * D; i += THREADS) {
      const int j = i / D, d = i % D;
      const float total = row_l[j];
      out[(row0 + int64_t(j) * Lq) * D + d] = static_cast<T>(total > 0.f ? red[i] / total : 0.f);
    }
    return;
  }
  // Several splits: (max, sum, -, -, D values) per split, merged by the second kernel.
  constexpr int P = D + 4;
  for (int i = tid; i < HEADS * D; i += THREADS) {
    const int j = i / D, d = i % D;
    partials[((row0 + int64_t(j) * Lq) * nsplit + split) * P + 4 + d] = red[i];
  }
  for (int j = tid; j < HEADS; j += THREADS) {
    device float* part = partials + ((row0 + int64_t(j) * Lq) * nsplit + split) * P;
    part[0] = row_m[j];
    part[1] = row_l[j];
  }
"""

# One threadgroup per output row: merge the splits' (max, sum, values). Template: T, D, MAX_SPLITS.
COMBINE_SOURCE = r"""
  constexpr int P = D + 4;
  const int nsplit = partials_shape[1];
  const int64_t row = int64_t(threadgroup_position_in_grid.x);
  const int tid = int(thread_position_in_threadgroup.x), count = int(threads_per_threadgroup.x);
  const device float* part = partials + row * nsplit * P;
  threadgroup float wm[MAX_SPLITS];
  threadgroup float wl[MAX_SPLITS];
  for (int s = tid; s < nsplit; s += count) { wm[s] = part[s * P]; wl[s] = part[s * P + 1]; }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (tid == 0) {
    float best = -1e30f, total = 0.f;
    for (int s = 0; s < nsplit; ++s) best = max(best, wm[s]);
    for (int s = 0; s < nsplit; ++s) { wm[s] = exp2(wm[s] - best); total += wm[s] * wl[s]; }
    const float inv = total > 0.f ? 1.f / total : 0.f;
    for (int s = 0; s < nsplit; ++s) wm[s] *= inv;
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  for (int d = tid; d < D; d += count) {
    float o = 0.f;
    for (int s = 0; s < nsplit; ++s) o += wm[s] * part[s * P + 4 + d];
    out[row * D + d] = static_cast<T>(o);
  }
"""

_kernels = {}


def _kernel(name):
    """The mx.fast.metal_kernel objects, made on first use (importing this file needs no GPU)."""
    if name not in _kernels:
        if name == "vector":
            k = mx.fast.metal_kernel(
                name="gqa_vector", input_names=["queries", "keys", "values", "scale"],
                output_names=["out", "partials"], source=VECTOR_SOURCE, header=HEADER, ensure_row_contiguous=False)
        else:
            k = mx.fast.metal_kernel(
                name="gqa_combine", input_names=["partials"], output_names=["out"], source=COMBINE_SOURCE,
                ensure_row_contiguous=True)
        _kernels[name] = k
    return _kernels[name]


def _pow2_divisor(limit, n):
    """The largest power of two <= limit that divides n."""
    p = 1
    while p * 2 <= limit and n % (p * 2) == 0:
        p *= 2
    return p


def layout(batch, query_heads, kv_heads, query_len, key_len, head_dim):
    """The vector kernel's launch for these sizes: (heads per threadgroup, lanes, vec, threads,
    splits, per_key), the same shape of answer as the CUDA example's (per_key is always False)."""
    group = query_heads // kv_heads
    heads = group if SHARE_KV else 1
    lanes = _pow2_divisor(min(KEY_LANES, THREADS, 32), head_dim)
    vec = _pow2_divisor(VEC, head_dim // lanes)
    return heads, lanes, vec, THREADS, _splits(batch * (query_heads // heads) * query_len, key_len), False


def _splits(blocks, key_len):
    """Split the keys into as many parts as keep the threadgroups within SPLIT_BLOCKS (rounding
    down, as the CUDA example does: there, rounding up left a few SMs running two blocks in turn)."""
    if not SPLIT_BLOCKS or blocks >= SPLIT_BLOCKS:
        return 1
    return min(SPLIT_BLOCKS // blocks, _length_splits(key_len))


def _length_splits(key_len):
    """The most splits `key_len` keys allow: all that a split count learns of the key length."""
    return min(max(1, key_len // MIN_SPLIT_KEYS), MAX_SPLITS)


_consts = {}


def _const(value, dtype):
    key = (value, dtype)
    if key not in _consts:
        _consts[key] = mx.array(value, dtype=dtype)
        mx.eval(_consts[key])
    return _consts[key]


# ---- The launch of one call, planned once per shape and setting ------------------------------
# A call's Python (the layout, the template, grid and output shapes, the scale as an array) is done
# once per plan key and kept, as in the CUDA example, where it cost about 12 us of host time a call.


@dataclass(frozen=True)
class Stage:
    """One kernel launch, everything about it but its inputs."""
    kernel: object  # from _kernel
    template: list
    grid: tuple
    threadgroup: tuple
    output_shapes: list
    output_dtypes: list  # the first is the output's

    def __call__(self, inputs):
        return self.kernel(inputs=inputs, template=self.template, grid=self.grid, threadgroup=self.threadgroup,
                           output_shapes=self.output_shapes, output_dtypes=self.output_dtypes)


@dataclass(frozen=True)
class Launch:
    """What a call of these sizes does: the vector kernel's stage, its scale, and the stage that
    merges the splits' partials when it splits."""
    stage: Stage
    scale: object  # a float32 scalar array
    cast: bool = False  # keys or values come in another dtype than the queries
    merge: Stage = None


def plan(queries, keys, values, scale, causal):
    """The Launch for a call with these inputs under the current tunables."""
    B, Hq, Lq, D = queries.shape
    Hkv, Lk = keys.shape[1], keys.shape[2]
    heads, lanes, vec, threads, splits, _ = layout(B, Hq, Hkv, Lq, Lk, D)
    template = [("T", queries.dtype), ("D", D), ("G", Hq // Hkv), ("HEADS", heads), ("LANES", lanes), ("VEC", vec),
                ("THREADS", threads), ("UNROLL", UNROLL), ("ONLINE", ONLINE_SOFTMAX), ("CAUSAL", bool(causal))]
    stage = Stage(
        _kernel("vector"), template, grid=(splits * threads, B * (Hq // heads), Lq), threadgroup=(threads, 1, 1),
        output_shapes=[(B, Hq, Lq, D) if splits == 1 else (1,), (B * Hq * Lq, splits, D + 4) if splits > 1 else (1,)],
        output_dtypes=[queries.dtype, mx.float32])
    merge = None if splits == 1 else Stage(
        _kernel("combine"), [("T", queries.dtype), ("D", D), ("MAX_SPLITS", MAX_SPLITS)],
        grid=(B * Hq * Lq * COMBINE_THREADS, 1, 1), threadgroup=(COMBINE_THREADS, 1, 1), output_shapes=[(B, Hq, Lq, D)],
        output_dtypes=[queries.dtype])
    return Launch(stage, _const(float(scale), mx.float32), cast=not queries.dtype == keys.dtype == values.dtype,
                  merge=merge)


def tunables():
    """Every module-level setting a plan reads. A setting missing here would let a call reuse a
    launch planned under another value."""
    return (THREADS, KEY_LANES, VEC, SHARE_KV, ONLINE_SOFTMAX, UNROLL, SPLIT_BLOCKS, MIN_SPLIT_KEYS, MAX_SPLITS,
            COMBINE_THREADS)


_plans = {}


def _attention(queries, keys, values, scale, causal):
    # The key length enters a plan only through the split count (see _splits): decode against a
    # growing KV cache reuses one plan for every step.
    kshape = keys.shape
    key = (queries.shape, kshape[0], kshape[1], kshape[3], _length_splits(kshape[2]),
           queries.dtype, keys.dtype, values.dtype, scale, causal, tunables())
    launch = _plans.get(key)
    if launch is None:
        launch = _plans[key] = plan(queries, keys, values, scale, causal)
    if launch.cast:
        keys, values = keys.astype(queries.dtype), values.astype(queries.dtype)
    outs = launch.stage([queries, keys, values, launch.scale])
    return outs[0] if launch.merge is None else launch.merge([outs[1]])[0]
# EVOLVE-BLOCK-END


def gqa_attention(queries: mx.array, keys: mx.array, values: mx.array, scale: float, causal: bool) -> mx.array:
    """Attention of queries (B, Hq, Lq, D) over keys and values (B, Hkv, Lk, D); (B, Hq, Lq, D)."""
    return _attention(queries, keys, values, scale, causal)
