"""Grouped-query attention (as in Qwen3) as CUDA kernels under MLX (mx.fast.cuda_kernel).

    gqa_attention(queries, keys, values, scale, causal) -> (B, Hq, Lq, D) in the queries' dtype

queries (B, Hq, Lq, D), keys and values (B, Hkv, Lk, D) with Hq a multiple of Hkv: query head h
reads KV head h // (Hq // Hkv). With `causal`, query i sees keys j <= i + (Lk - Lq), so decode
(Lq = 1) against a KV cache sees the whole cache. float16, bfloat16 and float32.

Sequence and cache lengths are runtime values (read from the arrays' shapes inside the kernel):
one compiled kernel serves every length. Dtype, head dim, group size and the tunables below are
compile-time constants. The kernels read the inputs' strides, so a strided view of a
KV cache (mlx-lm's `keys[..., :offset, :]`) is read in place instead of copied on every step.

The tunables start at the plain, slow choices of the published starting point: one thread per
query row, a scalar dot product, a separate softmax pass (max first, then exponentials), each
query head reading its own copy of K/V. Every combination is correct; the evaluator measures
which is fastest against mx.fast.scaled_dot_product_attention. Only the EVOLVE-BLOCK may change.
"""

import itertools
import re
import threading
from dataclasses import dataclass

import mlx.core as mx

# EVOLVE-BLOCK-START
# ---- Decode and the general path (any Lq): the "vector" kernel -------------------------------
# A block serves one query row of HEADS query heads (1, or the whole GQA group sharing one KV
# head, so K/V is read once for the group) over one split of the keys. Its THREADS threads form
# THREADS / KEY_LANES key slots; the KEY_LANES lanes of a slot share one key row, each holding
# D / KEY_LANES of its elements, and add their partial dot products with warp shuffles.
THREADS = 1  # gitevolve: choices=[1, 32, 64, 128, 256]
KEY_LANES = 1  # gitevolve: choices=[1, 2, 4, 8, 16, 32]

# Elements per load: 8 halves are one 16-byte load (clamped to what a lane holds).
VEC = 1  # gitevolve: choices=[1, 2, 4, 8]

# True: one block serves all the query heads of a KV head's group (K/V read once for the group).
SHARE_KV = False  # gitevolve: choices=[False, True]

# False: a first pass over the keys finds the row maximum, a second exponentiates and sums
# (K read twice). True: one pass with a running maximum, rescaling the sums when it rises.
ONLINE_SOFTMAX = False  # gitevolve: choices=[False, True]

# Keys each slot loads before it uses any of them (more loads in flight).
UNROLL = 1  # gitevolve: choices=[1, 2, 4, 8]

# "lanes": the KEY_LANES lanes of a slot split each key row and add their partial dot products
# with shuffles. "keys": each lane of a warp takes a whole key for its scores (the queries in
# shared memory), then the lanes split the head dim for the values: no shuffle per key, 32 keys
# a step, always one pass (needs THREADS >= 32; KEY_LANES, VEC, UNROLL and ONLINE_SOFTMAX are
# then fixed by the head dim). "mma": decode (one query row) on the tensor cores, the GQA group as
# the columns of the mma tiles (float16/bfloat16, head dim 64 or 128, at most 16 query heads per KV
# head, THREADS >= 32; other calls take "keys").
DOT = "lanes"  # gitevolve: choices=["lanes", "keys", "mma"]

# DOT = "mma": 16-key tiles each warp has in its shared-memory ring (STAGES - 1 are in flight while
# it computes one); capped so that the ring fits in shared memory.
STAGES = 2  # gitevolve: choices=[2, 3, 4, 6]
# DOT = "mma": the fewest keys a split of the tensor-core decode holds. Its own, not MIN_SPLIT_KEYS:
# the two kernels' best values differ (on the H200, 1024 for this one and 128 for the vector
# kernel, which still serves float32 and groups of more than 16 heads).
MMA_MIN_SPLIT_KEYS = 256  # gitevolve: choices=[32, 64, 128, 256, 512, 1024]

# Split the keys (flash-decoding) into as many parts as keep the blocks within this many; 0 never
# splits. A split of the vector kernel holds at least MIN_SPLIT_KEYS keys (the tensor-core decode's,
# MMA_MIN_SPLIT_KEYS), and there are at most 256 splits.
SPLIT_BLOCKS = 0  # gitevolve: choices=[0, 132, 264, 528, 1056, 2112]
MIN_SPLIT_KEYS = 256  # gitevolve: choices=[32, 64, 128, 256, 512, 1024]

# How the splits' partial results are merged: "atomic" in the same launch (the last block of a
# row to finish, found with an atomic counter, merges them); "kernel" in a second launch.
COMBINE = "kernel"  # gitevolve: choices=["atomic", "kernel"]

# ---- Prefill (Lq > 1): "vector" uses the kernel above; "mma" a tiled kernel on the tensor cores
# (float16/bfloat16, head dim 64 or 128; other inputs take the vector kernel); "wgmma" the same on
# Hopper's warpgroup MMA (H100/H200; other GPUs take "mma").
PREFILL = "vector"  # gitevolve: choices=["vector", "mma", "wgmma"]
# "wgmma": WGMMA_GROUPS warpgroups (64 query rows each) share each K/V tile; with WGMMA_PIPELINE a
# tile's O += P V runs during the next tile's softmax.
WGMMA_GROUPS = 1  # gitevolve: choices=[1, 2]
WGMMA_PIPELINE = False  # gitevolve: choices=[False, True]

MAX_SPLITS = 256
COMBINE_THREADS = 128

HEADER = r"""
__device__ __forceinline__ float gqa_float(float x) { return x; }
__device__ __forceinline__ float gqa_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float gqa_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T gqa_cast(float x);
template <> __device__ __forceinline__ float gqa_cast<float>(float x) { return x; }
template <> __device__ __forceinline__ __half gqa_cast<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 gqa_cast<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

template <typename T, int N> struct alignas(sizeof(T) * N) GqaVec { T v[N]; };

// N consecutive elements of a row as floats: one vector load when `fast` (unit stride, aligned).
template <int N, typename T>
__device__ __forceinline__ void gqa_load(const T* p, int64_t stride, bool fast, float* out) {
  if (fast) {
    GqaVec<T, N> x = *reinterpret_cast<const GqaVec<T, N>*>(p);
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = gqa_float(x.v[i]);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = gqa_float(p[i * stride]);
  }
}

// Split-K: the last block of a row's splits to finish (an atomic ticket, as in CUDA's
// threadFenceReduction sample) merges their partial results, laid out as (max, sum, -, -, D values)
// per split, into the HEADS output rows row0, row0 + row_step, ... Then it sets the ticket back to
// zero for the next call that draws it. `scratch` holds 2 * HEADS * MAX_SPLITS floats.
template <typename T, int D, int HEADS, int THREADS, int MAX_SPLITS>
__device__ void gqa_merge_if_last(const float* partials, T* out, int* ticket, int64_t row0, int64_t row_step,
                                  int nsplit, float* scratch) {
  constexpr int P = D + 4;
  __shared__ bool last;
  const int tid = threadIdx.x;
  __threadfence();
  __syncthreads();
  if (tid == 0) last = atomicAdd(ticket, 1) == nsplit - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  float* wm = scratch;
  float* wl = scratch + HEADS * MAX_SPLITS;
  for (int i = tid; i < HEADS * nsplit; i += THREADS) {
    const float* part = partials + ((row0 + (int64_t)(i / nsplit) * row_step) * nsplit + i % nsplit) * P;
    wm[i] = __ldcg(part);
    wl[i] = __ldcg(part + 1);
  }
  __syncthreads();
  for (int j = tid; j < HEADS; j += THREADS) {
    float* w = wm + j * nsplit;
    float best = -1e30f, total = 0.f;
    for (int s = 0; s < nsplit; ++s) best = fmaxf(best, w[s]);
    for (int s = 0; s < nsplit; ++s) { w[s] = exp2f(w[s] - best); total += w[s] * wl[j * nsplit + s]; }
    const float inv = total > 0.f ? 1.f / total : 0.f;
    for (int s = 0; s < nsplit; ++s) w[s] *= inv;
  }
  __syncthreads();
  for (int i = tid; i < HEADS * D / 4; i += THREADS) {
    const int j = i / (D / 4), d = (i % (D / 4)) * 4;
    const float* part = partials + (row0 + (int64_t)j * row_step) * nsplit * P + 4 + d;
    float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 8
    for (int s = 0; s < nsplit; ++s) {
      const float4 x = __ldcg(reinterpret_cast<const float4*>(part + s * P));
      const float w = wm[j * nsplit + s];
      o.x += w * x.x; o.y += w * x.y; o.z += w * x.z; o.w += w * x.w;
    }
    T* dst = out + (row0 + (int64_t)j * row_step) * D + d;
    dst[0] = gqa_cast<T>(o.x); dst[1] = gqa_cast<T>(o.y); dst[2] = gqa_cast<T>(o.z); dst[3] = gqa_cast<T>(o.w);
  }
  if (tid == 0) *ticket = 0;
}
"""

# Template arguments: T, D, G (query heads per KV head), HEADS (query heads per block), LANES,
# VEC, THREADS, UNROLL, ONLINE, PER_KEY (DOT == "keys"), CAUSAL, ATOMIC (merge splits in this
# launch), MAX_SPLITS.
VECTOR_SOURCE = r"""
  constexpr int SLOTS = THREADS / LANES;
  constexpr int WARPS = (THREADS + 31) / 32;
  constexpr int WARP = THREADS < 32 ? THREADS : 32;  // threads of a warp that exist
  constexpr int E = D / LANES;      // elements of a row held by one lane
  constexpr int CHUNKS = E / VEC;   // lane l holds elements [(l + LANES*i)*VEC, +VEC), i < CHUNKS
  constexpr float LOG2E = 1.4426950408889634f;
  const float NEG_INF = -__int_as_float(0x7f800000);
  const float START = -1e30f;       // finite: exp2(START - START) is 1, never NaN

  const int Hq = queries_shape[1], Lq = queries_shape[2], Lk = keys_shape[2];
  const int nsplit = gridDim.x, split = blockIdx.x, qi = blockIdx.z;
  const int head_blocks = Hq / HEADS;
  const int b = blockIdx.y / head_blocks, h0 = (blockIdx.y % head_blocks) * HEADS, kvh = h0 / G;
  const int tid = threadIdx.x, lane = tid % LANES, slot = tid / LANES;

  // The keys this row sees, and this block's share of them.
  int visible = CAUSAL ? min(Lk, qi + Lk - Lq + 1) : Lk;
  visible = max(visible, 0);
  const int per = (visible + nsplit - 1) / nsplit;
  const int k_begin = min(visible, split * per);
  const int n = min(visible, k_begin + per) - k_begin;

  const T* kbase = keys + b * keys_strides[0] + kvh * keys_strides[1] + k_begin * keys_strides[2];
  const T* vbase = values + b * values_strides[0] + kvh * values_strides[1] + k_begin * values_strides[2];
  const int64_t krow = keys_strides[2], vrow = values_strides[2];
  const int64_t kcol = keys_strides[3], vcol = values_strides[3];
  // Vector loads need unit stride along D and aligned rows; otherwise element by element.
  constexpr int KVEC = PER_KEY ? 8 : VEC;  // a lane per key reads its whole row, 8 elements a load
  const bool fast_k = kcol == 1 && krow % KVEC == 0 && (reinterpret_cast<uintptr_t>(kbase) % (KVEC * sizeof(T))) == 0;
  const bool fast_v = vcol == 1 && vrow % VEC == 0 && (reinterpret_cast<uintptr_t>(vbase) % (VEC * sizeof(T))) == 0;
  const float qscale = scale[0] * LOG2E;  // exp2 of scaled scores gives the softmax's exp
  const T* qrow0 = queries + b * queries_strides[0] + h0 * queries_strides[1] + qi * queries_strides[2];

  float m[HEADS], l[HEADS], acc[HEADS][E];
#pragma unroll
  for (int j = 0; j < HEADS; ++j) {
    m[j] = START;
    l[j] = 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) acc[j][e] = 0.f;
  }

  __shared__ float red_m[SLOTS][HEADS], red_l[SLOTS][HEADS];
  __shared__ float row_m[HEADS], row_l[HEADS];

  if constexpr (PER_KEY) {
    // Each lane takes a whole key for the scores (queries from shared memory, read by all lanes
    // at once); then the warp's lanes split the head dim for the weighted sum of values, each
    // holding E = D / 32 elements. A warp handles 32 keys a step; l stays a per-lane partial sum.
    __shared__ __align__(16) float qs[HEADS][D];
    __shared__ __align__(16) float ps[WARPS][HEADS][32];
    for (int i = tid; i < HEADS * D; i += THREADS)
      qs[i / D][i % D] = gqa_float(qrow0[(i / D) * queries_strides[1] + (i % D) * queries_strides[3]]) * qscale;
    __syncthreads();
    const int warp = tid / 32, wl = tid % 32;
    for (int step = warp * 32; step < n; step += THREADS) {  // uniform within the warp
      const int key = step + wl;
      float s[HEADS];
#pragma unroll
      for (int j = 0; j < HEADS; ++j) s[j] = 0.f;
      if (key < n) {
        const T* kr = kbase + key * krow;
#pragma unroll
        for (int dc = 0; dc < D; dc += 8) {
          float k8[8];
          gqa_load<8>(kr + dc * kcol, kcol, fast_k, k8);
#pragma unroll
          for (int j = 0; j < HEADS; ++j) {
            const float4 a = *reinterpret_cast<const float4*>(&qs[j][dc]);
            const float4 c = *reinterpret_cast<const float4*>(&qs[j][dc + 4]);
            s[j] += a.x * k8[0] + a.y * k8[1] + a.z * k8[2] + a.w * k8[3] + c.x * k8[4] + c.y * k8[5] + c.z * k8[6] + c.w * k8[7];
          }
        }
      } else {
#pragma unroll
        for (int j = 0; j < HEADS; ++j) s[j] = NEG_INF;
      }
#pragma unroll
      for (int j = 0; j < HEADS; ++j) {
        float top = s[j];
#pragma unroll
        for (int off = 16; off > 0; off /= 2) top = fmaxf(top, __shfl_xor_sync(0xffffffffu, top, off));
        top = fmaxf(top, m[j]);
        const float corr = exp2f(m[j] - top);
        m[j] = top;
        l[j] *= corr;
#pragma unroll
        for (int e = 0; e < E; ++e) acc[j][e] *= corr;
        const float p = exp2f(s[j] - top);
        l[j] += p;
        ps[warp][j][wl] = p;
      }
      __syncwarp();
#pragma unroll
      for (int kk = 0; kk < 32; kk += 4) {
        float4 p4[HEADS];
#pragma unroll
        for (int j = 0; j < HEADS; ++j) p4[j] = *reinterpret_cast<const float4*>(&ps[warp][j][kk]);
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const int key2 = step + kk + u;
          if (key2 < n) {
            float v[E];
            gqa_load<E>(vbase + key2 * vrow + wl * E * vcol, vcol, fast_v, v);
#pragma unroll
            for (int j = 0; j < HEADS; ++j) {
              const float p = u == 0 ? p4[j].x : u == 1 ? p4[j].y : u == 2 ? p4[j].z : p4[j].w;
#pragma unroll
              for (int e = 0; e < E; ++e) acc[j][e] += p * v[e];
            }
          }
        }
      }
      __syncwarp();
    }
#pragma unroll
    for (int j = 0; j < HEADS; ++j)
#pragma unroll
      for (int off = 16; off > 0; off /= 2) l[j] += __shfl_xor_sync(0xffffffffu, l[j], off);
  } else {
    // This lane's elements of the queries.
    float q[HEADS][E];
#pragma unroll
    for (int j = 0; j < HEADS; ++j) {
      const T* qrow = qrow0 + j * queries_strides[1];
#pragma unroll
      for (int i = 0; i < CHUNKS; ++i)
#pragma unroll
        for (int e = 0; e < VEC; ++e)
          q[j][i * VEC + e] = gqa_float(qrow[((lane + LANES * i) * VEC + e) * queries_strides[3]]) * qscale;
    }

    // The scores of UNROLL keys (slot + u * SLOTS of this step) for every head, summed over the
    // lanes of the slot. Every lane of the warp runs the shuffles: the loops around them have
    // block-uniform trip counts, and keys past the end are masked (score -inf), not skipped.
    auto scores = [&](int step, float (&s)[UNROLL][HEADS], float (&v)[UNROLL][E], bool load_v) {
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) {
        const int key = step + u * SLOTS + slot;
        float k[E];
        if (key < n) {
#pragma unroll
          for (int i = 0; i < CHUNKS; ++i) {
            const int col = (lane + LANES * i) * VEC;
            gqa_load<VEC>(kbase + key * krow + col * kcol, kcol, fast_k, k + i * VEC);
            if (load_v) gqa_load<VEC>(vbase + key * vrow + col * vcol, vcol, fast_v, v[u] + i * VEC);
          }
        } else {
#pragma unroll
          for (int e = 0; e < E; ++e) { k[e] = 0.f; v[u][e] = 0.f; }
        }
#pragma unroll
        for (int j = 0; j < HEADS; ++j) {
          float dot = 0.f;
#pragma unroll
          for (int e = 0; e < E; ++e) dot += q[j][e] * k[e];
          s[u][j] = dot;
        }
      }
#pragma unroll
      for (int off = LANES / 2; off > 0; off /= 2)
#pragma unroll
        for (int u = 0; u < UNROLL; ++u)
#pragma unroll
          for (int j = 0; j < HEADS; ++j) s[u][j] += __shfl_xor_sync(0xffffffffu, s[u][j], off);
#pragma unroll
      for (int u = 0; u < UNROLL; ++u)
        if (step + u * SLOTS + slot >= n)
#pragma unroll
          for (int j = 0; j < HEADS; ++j) s[u][j] = NEG_INF;
    };

    if constexpr (!ONLINE) {
      // First pass: the row maximum over every key of this block.
      for (int step = 0; step < n; step += SLOTS * UNROLL) {
        float s[UNROLL][HEADS], unused[UNROLL][E];
        scores(step, s, unused, false);
#pragma unroll
        for (int u = 0; u < UNROLL; ++u)
#pragma unroll
          for (int j = 0; j < HEADS; ++j) m[j] = fmaxf(m[j], s[u][j]);
      }
      if (lane == 0)
#pragma unroll
        for (int j = 0; j < HEADS; ++j) red_m[slot][j] = m[j];
      __syncthreads();
      for (int j = tid; j < HEADS; j += THREADS) {
        float best = START;
        for (int i = 0; i < SLOTS; ++i) best = fmaxf(best, red_m[i][j]);
        row_m[j] = best;
      }
      __syncthreads();
#pragma unroll
      for (int j = 0; j < HEADS; ++j) m[j] = row_m[j];
      __syncthreads();
    }

    // Second (or only) pass: exponentials, their sum, and the weighted sum of values.
    for (int step = 0; step < n; step += SLOTS * UNROLL) {
      float s[UNROLL][HEADS], v[UNROLL][E];
      scores(step, s, v, true);
#pragma unroll
      for (int j = 0; j < HEADS; ++j) {
        if constexpr (ONLINE) {
          float top = m[j];
#pragma unroll
          for (int u = 0; u < UNROLL; ++u) top = fmaxf(top, s[u][j]);
          const float corr = exp2f(m[j] - top);
          m[j] = top;
          l[j] *= corr;
#pragma unroll
          for (int e = 0; e < E; ++e) acc[j][e] *= corr;
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
          const float p = exp2f(s[u][j] - m[j]);
          l[j] += p;
#pragma unroll
          for (int e = 0; e < E; ++e) acc[j][e] += p * v[u][e];
        }
      }
    }
  }

  // Merge the slots of this block: a common maximum and rescaled sums; the values of the slots
  // of a warp added with shuffles, then those of the warps through shared memory.
  constexpr int BIG = WARPS * HEADS * D > 2 * HEADS * MAX_SPLITS ? WARPS * HEADS * D : 2 * HEADS * MAX_SPLITS;
  __shared__ __align__(16) float big[BIG];  // the warps' values; later the splits' weights
  if (lane == 0)
#pragma unroll
    for (int j = 0; j < HEADS; ++j) { red_m[slot][j] = m[j]; red_l[slot][j] = l[j]; }
  __syncthreads();
  for (int j = tid; j < HEADS; j += THREADS) {
    float best = START;
    for (int i = 0; i < SLOTS; ++i) best = fmaxf(best, red_m[i][j]);
    float total = 0.f;
    for (int i = 0; i < SLOTS; ++i) total += red_l[i][j] * exp2f(red_m[i][j] - best);
    row_m[j] = best;
    row_l[j] = total;
  }
  __syncthreads();
#pragma unroll
  for (int j = 0; j < HEADS; ++j) {
    const float w = exp2f(m[j] - row_m[j]);
#pragma unroll
    for (int e = 0; e < E; ++e) acc[j][e] *= w;
  }
#pragma unroll
  for (int off = LANES; off < WARP; off *= 2)
#pragma unroll
    for (int j = 0; j < HEADS; ++j)
#pragma unroll
      for (int e = 0; e < E; ++e) acc[j][e] += __shfl_xor_sync(0xffffffffu, acc[j][e], off);
  if (tid % WARP < LANES)
#pragma unroll
    for (int j = 0; j < HEADS; ++j)
#pragma unroll
      for (int i = 0; i < CHUNKS; ++i)
#pragma unroll
        for (int e = 0; e < VEC; ++e)
          big[(tid / WARP) * HEADS * D + j * D + (lane + LANES * i) * VEC + e] = acc[j][i * VEC + e];
  __syncthreads();
  float* red = big;  // red[j * D + d]: the block's (unnormalised) values
  if constexpr (WARPS > 1) {
    for (int i = tid; i < HEADS * D; i += THREADS) {
      float t = 0.f;
#pragma unroll
      for (int w = 0; w < WARPS; ++w) t += big[w * HEADS * D + i];
      red[i] = t;
    }
    __syncthreads();
  }

  // Output row of query head h0 + j: ((b * Hq + h0 + j) * Lq + qi).
  const int64_t row0 = ((int64_t)b * Hq + h0) * Lq + qi;
  if (nsplit == 1) {
    for (int i = tid; i < HEADS * D; i += THREADS) {
      const int j = i / D, d = i % D;
      const float total = row_l[j];
      out[(row0 + (int64_t)j * Lq) * D + d] = gqa_cast<T>(total > 0.f ? red[i] / total : 0.f);
    }
    return;
  }

  // Several splits: this block's partial result goes to `partials` as (max, sum, -, -, D values) ...
  constexpr int P = D + 4;
  for (int i = tid; i < HEADS * D; i += THREADS) {
    const int j = i / D, d = i % D;
    partials[((row0 + (int64_t)j * Lq) * nsplit + split) * P + 4 + d] = red[i];
  }
  for (int j = tid; j < HEADS; j += THREADS) {
    float* part = partials + ((row0 + (int64_t)j * Lq) * nsplit + split) * P;
    part[0] = row_m[j];
    part[1] = row_l[j];
  }
  if constexpr (ATOMIC) {
    // ... and the last block of this row to finish merges them all; otherwise the second kernel does.
    gqa_merge_if_last<T, D, HEADS, THREADS, MAX_SPLITS>(
        partials, out, const_cast<int*>(counters) + blockIdx.y * gridDim.z + qi, row0, Lq, nsplit, big);
  }
"""

# One block per output row: merge the splits' (max, sum, values) into the output.
# Template arguments: T, D, MAX_SPLITS.
COMBINE_SOURCE = r"""
  constexpr int P = D + 4;
  const int nsplit = partials_shape[1];
  const int64_t row = blockIdx.x;
  const float* part = partials + row * nsplit * P;
  __shared__ float wm[MAX_SPLITS], wl[MAX_SPLITS];
  for (int s = threadIdx.x; s < nsplit; s += blockDim.x) { wm[s] = part[s * P]; wl[s] = part[s * P + 1]; }
  __syncthreads();
  if (threadIdx.x == 0) {
    float best = -1e30f, total = 0.f;
    for (int s = 0; s < nsplit; ++s) best = fmaxf(best, wm[s]);
    for (int s = 0; s < nsplit; ++s) { wm[s] = exp2f(wm[s] - best); total += wm[s] * wl[s]; }
    const float inv = total > 0.f ? 1.f / total : 0.f;
    for (int s = 0; s < nsplit; ++s) wm[s] *= inv;
  }
  __syncthreads();
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float o = 0.f;
#pragma unroll 8
    for (int s = 0; s < nsplit; ++s) o += wm[s] * part[s * P + 4 + d];
    out[row * D + d] = gqa_cast<T>(o);
  }
"""

MMA_HEADER = HEADER + r"""
__device__ __forceinline__ uint32_t gqa_bits(__half x) { return __half_as_ushort(x); }
__device__ __forceinline__ uint32_t gqa_bits(__nv_bfloat16 x) { return __bfloat16_as_ushort(x); }
template <typename T>
__device__ __forceinline__ uint32_t gqa_pack(float lo, float hi) {
  return gqa_bits(gqa_cast<T>(lo)) | (gqa_bits(gqa_cast<T>(hi)) << 16);
}
template <typename T>
__device__ __forceinline__ uint32_t gqa_pack_raw(T lo, T hi) { return gqa_bits(lo) | (gqa_bits(hi) << 16); }

// 2^x in one instruction (exp2f adds a range fix-up around it that softmax does not need: its
// arguments are <= 0 or a few units above, and a flushed denormal is a zero weight).
__device__ __forceinline__ float gqa_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// One online-softmax step for a lane's two rows of m16n8 accumulator tiles (elements 0, 1 of each
// tile in row r0, 2, 3 in row r1): `p` holds their scores in log2 units, top0 / top1 this lane's
// maxima of them and of the running maxima m0 / m1. The rows' maxima are gathered from the 4 lanes
// of their quad, the running maxima and sums updated, the scores turned into weights, and c0 / c1
// set to how much O must be rescaled. `exp2` is exp2f, or gqa_exp2 where no range fix-up is needed.
template <int N, typename Exp2>
__device__ __forceinline__ void gqa_softmax_rows(float (&p)[N][4], float top0, float top1, float& m0, float& m1,
                                                 float& l0, float& l1, float& c0, float& c1, Exp2 exp2) {
  top0 = fmaxf(top0, __shfl_xor_sync(0xffffffffu, top0, 1));
  top0 = fmaxf(top0, __shfl_xor_sync(0xffffffffu, top0, 2));
  top1 = fmaxf(top1, __shfl_xor_sync(0xffffffffu, top1, 1));
  top1 = fmaxf(top1, __shfl_xor_sync(0xffffffffu, top1, 2));
  c0 = exp2(m0 - top0);
  c1 = exp2(m1 - top1);
  m0 = top0;
  m1 = top1;
  l0 *= c0;
  l1 *= c1;
#pragma unroll
  for (int nt = 0; nt < N; ++nt) {
    p[nt][0] = exp2(p[nt][0] - m0);
    p[nt][1] = exp2(p[nt][1] - m0);
    p[nt][2] = exp2(p[nt][2] - m1);
    p[nt][3] = exp2(p[nt][3] - m1);
    l0 += p[nt][0] + p[nt][1];
    l1 += p[nt][2] + p[nt][3];
  }
}

// Four packed pairs from 16 bytes of shared memory.
template <typename T>
__device__ __forceinline__ void gqa_lds128(const T* p, uint32_t (&w)[4]) {
  const uint4 x = *reinterpret_cast<const uint4*>(p);
  w[0] = x.x; w[1] = x.y; w[2] = x.z; w[3] = x.w;
}

// 16 bytes from global to shared memory without a trip through registers; zeros when not `valid`.
// `.ca`, not the L1-bypassing `.cg`: measured on the H100 (Nsight Compute, decode at 32k), `.cg`
// asked L2 for each 32-byte sector twice, once per 16-byte half (8.4M sector reads and 3.2M
// requests for 4.2M sectors of K/V), `.ca` once (1.06M requests), and the kernel took 11% less time.
__device__ __forceinline__ void gqa_cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void gqa_cp_async16(void* smem, const void* gmem) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem));
}
__device__ __forceinline__ void gqa_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Wait until at most N of this thread's cp.async groups are still in flight.
template <int N>
__device__ __forceinline__ void gqa_cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

// The end of a prefill warp: O of its rows r0 and r1 (lane (g, t) holds dims 8 j + 2t and 8 j + 2t + 1
// of both, in the m16n8 accumulator layout) divided by the rows' softmax sums, whose parts are
// spread over the 4 lanes of a quad, and stored to `ob`, the (Lq, D) output of this head.
template <typename T, int J>
__device__ __forceinline__ void gqa_store_rows(T* ob, int Lq, int r0, int r1, int t, float l0, float l1,
                                               const float (&o)[J][4]) {
  constexpr int D = 8 * J;
  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  const float i0 = l0 > 0.f ? 1.f / l0 : 0.f, i1 = l1 > 0.f ? 1.f / l1 : 0.f;
#pragma unroll
  for (int j = 0; j < J; ++j) {
    if (r0 < Lq)
      *reinterpret_cast<uint32_t*>(ob + (int64_t)r0 * D + 8 * j + 2 * t) = gqa_pack<T>(o[j][0] * i0, o[j][1] * i0);
    if (r1 < Lq)
      *reinterpret_cast<uint32_t*>(ob + (int64_t)r1 * D + 8 * j + 2 * t) = gqa_pack<T>(o[j][2] * i1, o[j][3] * i1);
  }
}

// Eight consecutive elements of a row (element stride `stride`) as four packed pairs, zeros when
// not `valid`: how the prefill kernel gathers its query fragments, once per block.
template <typename T>
__device__ __forceinline__ void gqa_load8_bits(const T* p, int64_t stride, bool valid, uint32_t (&w)[4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) w[i] = valid ? gqa_pack_raw<T>(p[2 * i * stride], p[(2 * i + 1) * stride]) : 0u;
}

// Four 8x8 matrices of 16-bit elements from shared memory: lanes 8i..8i+7 give the row addresses
// of matrix i, and each lane gets (row l / 4, columns 2 (l % 4) + (0, 1)) of every matrix, the A
// operand layout of an mma.
__device__ __forceinline__ void gqa_ldsm_x4(const void* p, uint32_t (&r)[4]) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
// The transpose of an 8x8 matrix of 16-bit pairs held one pair per lane in the mma layout (lane l
// holds row l / 4, columns 2 (l % 4) + (0, 1)): an accumulator becomes an operand.
__device__ __forceinline__ uint32_t gqa_movmatrix_trans(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

// Four 8x8 matrices of 16-bit elements from shared memory, transposed: lanes 8i..8i+7 give the row
// addresses of matrix i, and each lane gets (row 2 (l % 4) + (0, 1), column l / 4) of every matrix,
// the B operand layout of an mma whose k runs along the matrices' rows.
__device__ __forceinline__ void gqa_ldsm_x4_trans(const void* p, uint32_t (&r)[4]) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}

// d += a * b for one m16n8k16 tile, float accumulators (PTX ISA fragment layouts).
__device__ __forceinline__ void gqa_mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, __half) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void gqa_mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, __nv_bfloat16) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
"""

# Decode (Lq = 1) on the tensor cores. A KV head's G query heads share every key and value, so the
# kernel computes S^T = K Q^T and O^T = V^T P^T: the 16 keys of a tile, and the head dim, are the
# 16-row side of each m16n8k16 mma and the G query heads its 8-column side (two column tiles when
# G > 8). Decode is bound by memory only if a warp's tile costs little, and a split is served by
# few warps, so that side halves the mma count and the accumulator registers of a Q K^T layout
# (where 16 rows hold 5 query heads for Qwen3-14B), which lets more warps share an SM.
# Each warp walks 16-key tiles of its block's split, copying them with cp.async into its own ring
# of STAGES tiles in shared memory, so STAGES - 1 tiles are in flight while it computes one. Row r's
# 16-byte chunk c is stored at chunk c ^ (r & 7), so that the `ldmatrix` loads of K (as it is) and V
# (transposed) are free of bank conflicts; a lane's copy addresses are computed once and only
# offset per tile (a split's last tile, the only one that may be partial, takes the careful path).
# P^T leaves the first mma as an accumulator and enters the second as an operand, transposed by
# `movmatrix`. The softmax rescales its sums only when a query's maximum grows by more than 2^8 (as
# FlashAttention-4 does): the exponentials stay below 256, exact in float32 sums and in
# half-precision P, and the rescale runs a few times per split instead of once per tile.
# The warps then merge through shared memory, and the splits as in the vector kernel.
# Template arguments: T, D (64 or 128), G (<= 16), THREADS, STAGES, ATOMIC, MAX_SPLITS.
DECODE_MMA_SOURCE = r"""
  constexpr int WARPS = THREADS / 32, P = D + 4, KS = D / 16, NT = (G + 7) / 8;
  constexpr int MERGE_FLOATS = WARPS * G * D > 2 * G * MAX_SPLITS ? WARPS * G * D : 2 * G * MAX_SPLITS;
  constexpr float LOG2E = 1.4426950408889634f, SLACK = 8.f;  // rescale when a maximum grows past 2^SLACK
  const float NEG_INF = -__int_as_float(0x7f800000);

  const int Hq = queries_shape[1], Hkv = keys_shape[1], Lk = keys_shape[2];
  const int nsplit = gridDim.x, split = blockIdx.x;
  const int b = blockIdx.y / Hkv, kvh = blockIdx.y % Hkv, h0 = kvh * G;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;

  // This block's keys: whole 16-key tiles, so only a split's last tile is partly past its end.
  const int per = ((Lk + nsplit - 1) / nsplit + 15) / 16 * 16;
  const int k_begin = min(Lk, split * per);
  const int n = min(Lk, k_begin + per) - k_begin;

  const T* kbase = keys + b * keys_strides[0] + kvh * keys_strides[1] + k_begin * keys_strides[2];
  const T* vbase = values + b * values_strides[0] + kvh * values_strides[1] + k_begin * values_strides[2];
  const int64_t krow = keys_strides[2], vrow = values_strides[2], kcol = keys_strides[3], vcol = values_strides[3];
  const bool fast = kcol == 1 && vcol == 1 && krow % 8 == 0 && vrow % 8 == 0 &&
      reinterpret_cast<uintptr_t>(kbase) % 16 == 0 && reinterpret_cast<uintptr_t>(vbase) % 16 == 0;
  const float sl2 = scale[0] * LOG2E;

  // O^T: o[mt][nt] holds dims 16 mt + g (+8) of query heads 8 nt + 2t (+1).
  float o[KS][NT][4];
#pragma unroll
  for (int mt = 0; mt < KS; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) o[mt][nt][0] = o[mt][nt][1] = o[mt][nt][2] = o[mt][nt][3] = 0.f;
  // Per lane, for query heads 8 nt + 2t + e: the running maximum (the same in every lane of a
  // column) and this lane's part of the sum.
  float m[NT][2], l[NT][2];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) m[nt][0] = m[nt][1] = -1e30f, l[nt][0] = l[nt][1] = 0.f;  // finite: never NaN

  constexpr int TILE = 16 * D, CHUNKS = D / 8, ROWS = 32 / CHUNKS, COPIES = 16 / ROWS;
  extern __shared__ __align__(16) unsigned char gqa_smem[];
  T* ring = reinterpret_cast<T*>(gqa_smem) + warp * STAGES * 2 * TILE;  // STAGES x (K tile, V tile)
  const int ntiles = (n + 15) / 16;
  const int mine = ntiles > warp ? (ntiles - warp + WARPS - 1) / WARPS : 0;  // warp-uniform
  // A lane copies chunk `cc` of rows rr + ROWS j of every tile. When the rows are D apart (a cache's
  // usual layout, views of it included) every offset but the tile's is a constant of the
  // instruction, and the swizzle's XOR takes a few values known per lane (rr < ROWS, a power of two).
  const int cc = lane % CHUNKS, rr = lane / CHUNKS;
  const bool packed = fast && krow == D && vrow == D;
  const T* klane = kbase + rr * D + cc * 8;
  const T* vlane = vbase + rr * D + cc * 8;
  auto fetch = [&](int it) {  // this warp's tile `it` into its stage; one cp.async group either way
    if (it < mine) {
      const int k0 = (warp + it * WARPS) * 16;
      T* kd = ring + (it % STAGES) * 2 * TILE;
      T* vd = kd + TILE;
      if (packed && k0 + 16 <= n) {
        const T* ks = klane + k0 * D;
        const T* vs = vlane + k0 * D;
#pragma unroll
        for (int j = 0; j < COPIES; ++j) {
          const int at = (rr + ROWS * j) * D + ((cc ^ rr) ^ ((ROWS * j) & 7)) * 8;
          gqa_cp_async16(kd + at, ks + ROWS * j * D);
          gqa_cp_async16(vd + at, vs + ROWS * j * D);
        }
      } else {
        for (int i = lane; i < 16 * CHUNKS; i += 32) {
          const int row = i / CHUNKS, c = i % CHUNKS, key = k0 + row, at = row * D + (c ^ (row & 7)) * 8;
          if (fast) {
            gqa_cp_async16(kd + at, kbase + min(key, n - 1) * krow + c * 8, key < n);
            gqa_cp_async16(vd + at, vbase + min(key, n - 1) * vrow + c * 8, key < n);
          } else {
#pragma unroll
            for (int e = 0; e < 8; ++e) {
              kd[at + e] = key < n ? kbase[key * krow + (c * 8 + e) * kcol] : gqa_cast<T>(0.f);
              vd[at + e] = key < n ? vbase[key * vrow + (c * 8 + e) * vcol] : gqa_cast<T>(0.f);
            }
          }
        }
      }
    }
    gqa_cp_async_commit();
  };
  for (int it = 0; it < STAGES - 1; ++it) fetch(it);

  // Q^T, read while the first tiles are on their way, as the B operand of k-step s and column tile
  // nt: query head 8 nt + g, dims 16 s + 2t (+1) and 16 s + 8 + 2t (+1); zeros past the group.
  uint32_t qb[NT][KS][2];
  {
    const T* qh = queries + b * queries_strides[0];
    const int64_t qd = queries_strides[3];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int head = 8 * nt + g;
      const T* qr = qh + (h0 + min(head, G - 1)) * queries_strides[1];
#pragma unroll
      for (int s = 0; s < KS; ++s)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int d = 16 * s + 8 * h + 2 * t;
          qb[nt][s][h] = head < G ? gqa_pack_raw<T>(qr[d * qd], qr[(d + 1) * qd]) : 0u;
        }
    }
  }

  // ldmatrix row addresses (lanes 8i..8i+7 give matrix i's rows), the swizzle's XOR folded in:
  // K (A of k-step s): key l % 16 of chunk 2s + l / 16; V (transposed, A of row tile mt): key
  // l % 8 + 8 (l / 16) of chunk 2 mt + (l / 8) % 2.
  const int kkey = lane % 16, kx = (lane / 16) ^ (lane & 7);
  const int vkey = lane % 8 + 8 * (lane / 16), vx = ((lane / 8) & 1) ^ (lane & 7);

  for (int it = 0; it < mine; ++it) {
    fetch(it + STAGES - 1);
    gqa_cp_async_wait<STAGES - 1>();  // this lane's copies of tile `it` have landed ...
    __syncwarp();                      // ... and so have the other lanes'
    const int k0 = (warp + it * WARPS) * 16;
    const T* ks = ring + (it % STAGES) * 2 * TILE;
    const T* vs = ks + TILE;

    // S^T = K Q^T in two chains (even and odd k-steps) that the tensor cores overlap. Lane (g, t)
    // gets keys k0 + g (+8) of query heads 8 nt + 2t (+1).
    float s[NT][4], s2[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = s2[nt][e] = 0.f;
#pragma unroll
    for (int st = 0; st < KS; ++st) {
      uint32_t ka[4];
      gqa_ldsm_x4(ks + kkey * D + ((2 * st) ^ kx) * 8, ka);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) gqa_mma(st % 2 ? s2[nt] : s[nt], ka, qb[nt][st][0], qb[nt][st][1], T());
    }
    const bool partial = k0 + 16 > n;  // warp-uniform
    bool grow = false;
    float top[NT][2];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float x = (s[nt][e] + s2[nt][e]) * sl2;
        s[nt][e] = !partial || k0 + g + 8 * (e / 2) < n ? x : NEG_INF;
      }
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        top[nt][e] = fmaxf(s[nt][e], s[nt][e + 2]);
        grow = grow || top[nt][e] > m[nt][e] + SLACK;
      }
    }
    // A query's maximum is shared by the 8 lanes of its column: raise it past SLACK only.
    if (__any_sync(0xffffffffu, grow)) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float x = top[nt][e];
          x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 4));
          x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 8));
          x = fmaxf(fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 16)), m[nt][e]);
          const float c = gqa_exp2(m[nt][e] - x);
          m[nt][e] = x;
          l[nt][e] *= c;
#pragma unroll
          for (int mt = 0; mt < KS; ++mt) { o[mt][nt][e] *= c; o[mt][nt][e + 2] *= c; }
        }
    }
    // P^T, then transposed into the B operand of O^T += V^T P^T: keys 2t (+1) and 2t + 8 (+1) of
    // query head 8 nt + g.
    uint32_t pb[NT][2];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nt][e] = gqa_exp2(s[nt][e] - m[nt][e % 2]);
        l[nt][e % 2] += s[nt][e];
      }
      pb[nt][0] = gqa_movmatrix_trans(gqa_pack<T>(s[nt][0], s[nt][1]));
      pb[nt][1] = gqa_movmatrix_trans(gqa_pack<T>(s[nt][2], s[nt][3]));
    }
#pragma unroll
    for (int mt = 0; mt < KS; ++mt) {
      uint32_t va[4];
      gqa_ldsm_x4_trans(vs + vkey * D + ((2 * mt) ^ vx) * 8, va);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) gqa_mma(o[mt][nt], va, pb[nt][0], pb[nt][1], T());
    }
    __syncwarp();  // every lane is done with this stage before it is refilled
  }
  gqa_cp_async_wait<0>();  // the groups committed past the last tile are empty; none is left behind
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e)
#pragma unroll
      for (int off = 4; off < 32; off *= 2) l[nt][e] += __shfl_xor_sync(0xffffffffu, l[nt][e], off);

  // Merge the warps: each query head's common maximum and sum, then the warps' rescaled values,
  // summed in one pass (one warp at a time between barriers cost 4-7 us a call). All of it lives in
  // the dynamic shared memory, the rings' once every warp is done with its own (MLX opts a kernel
  // in to more than 48 KiB of shared memory only by its dynamic size).
  __syncthreads();
  float* acc = reinterpret_cast<float*>(gqa_smem);  // WARPS x G x D values; later the merge's scratch
  float (*wm)[16] = reinterpret_cast<float (*)[16]>(acc + MERGE_FLOATS);
  float (*wl)[16] = wm + WARPS;
  float* row_m = &wl[WARPS][0];
  float* row_l = row_m + G;
  if (g == 0)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int head = 8 * nt + 2 * t + e;
        if (head < G) { wm[warp][head] = m[nt][e]; wl[warp][head] = l[nt][e]; }
      }
  __syncthreads();
  for (int j = tid; j < G; j += THREADS) {
    float best = -1e30f, total = 0.f;
    for (int w = 0; w < WARPS; ++w) best = fmaxf(best, wm[w][j]);
    for (int w = 0; w < WARPS; ++w) total += wl[w][j] * exp2f(wm[w][j] - best);
    row_m[j] = best;
    row_l[j] = total;
  }
  __syncthreads();
  float f[NT][2];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int head = 8 * nt + 2 * t + e;
      f[nt][e] = head < G ? exp2f(m[nt][e] - row_m[head]) : 0.f;
    }
  // Each warp's rescaled values go to a slice of their own; then one pass adds the slices up.
  float* slice = acc + warp * G * D;
#pragma unroll
  for (int mt = 0; mt < KS; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int head = 8 * nt + 2 * t + e % 2, d = 16 * mt + g + 8 * (e / 2);
        if (head < G) slice[head * D + d] = o[mt][nt][e] * f[nt][e % 2];
      }
  __syncthreads();
  for (int i = tid; i < G * D; i += THREADS) {
    float sum = acc[i];
#pragma unroll
    for (int w = 1; w < WARPS; ++w) sum += acc[w * G * D + i];
    acc[i] = sum;
  }
  __syncthreads();

  const int64_t row0 = (int64_t)b * Hq + h0;  // output row of query head h0 + j: row0 + j
  if (nsplit == 1) {
    for (int i = tid; i < G * D; i += THREADS)
      out[row0 * D + i] = gqa_cast<T>(row_l[i / D] > 0.f ? acc[i] / row_l[i / D] : 0.f);
    return;
  }
  for (int i = tid; i < G * D; i += THREADS)
    partials[((row0 + i / D) * nsplit + split) * P + 4 + i % D] = acc[i];
  for (int j = tid; j < G; j += THREADS) {
    float* part = partials + ((row0 + j) * nsplit + split) * P;
    part[0] = row_m[j];
    part[1] = row_l[j];
  }
  if constexpr (ATOMIC)  // its first barrier also keeps acc, now its scratch, until every thread is done with it
    gqa_merge_if_last<T, D, G, THREADS, MAX_SPLITS>(partials, out, const_cast<int*>(counters) + blockIdx.y, row0, 1,
                                                   nsplit, acc);
"""

# Flash-attention style prefill on the tensor cores (mma.sync m16n8k16): a block of 4 warps takes
# 64 query rows of one head (16 rows a warp) and walks the keys in tiles of 64, copied into two
# stages of shared memory with cp.async (the next tile's copy overlaps this one's use), with an
# online softmax in registers. A warp computes a tile in two halves of SK = 32 keys, and skips a
# half past its own causal rows: with the scores of half a tile in flight a thread needs 168
# registers instead of 196 (registers for three blocks an SM instead of two). On the H100 that was
# 264 us instead of 272 at 2048 tokens, 40:8 heads. 32 rows a warp, so that each K/V fragment
# from shared memory serves two row tiles, was slower: 291 us (halves of 32), 310 (of 16).
# K fragments come from 16-byte shared loads, V's through ldmatrix.trans (9% faster than 16-byte
# loads regrouped with byte permutes), and the row pitches keep both free of bank conflicts.
# Template arguments: T, D (64 or 128), CAUSAL.
MMA_SOURCE = r"""
  constexpr int BQ = 64, BK = 64, SK = 32, KP = D + 32, VP = D + 8, KC = D / 32;
  constexpr float LOG2E = 1.4426950408889634f;
  const float NEG_INF = -__int_as_float(0x7f800000);
  extern __shared__ __align__(16) unsigned char gqa_smem[];  // two stages of (K tile, V tile)
  T* const stage0 = reinterpret_cast<T*>(gqa_smem);
  constexpr int STAGE = BK * KP + BK * VP;

  const int Hq = queries_shape[1], Lq = queries_shape[2], Hkv = keys_shape[1], Lk = keys_shape[2];
  const int qt = gridDim.x - 1 - blockIdx.x;  // the longest causal rows start first
  const int b = blockIdx.y / Hq, h = blockIdx.y % Hq, kvh = h / (Hq / Hkv);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int r0 = qt * BQ + warp * 16 + g, r1 = r0 + 8;  // this lane's two rows
  const float sl2 = scale[0] * LOG2E;

  // Queries as A fragments, the head dim in the order the key fragments are loaded in.
  uint32_t qa[D / 16][4];
  const T* qb = queries + b * queries_strides[0] + h * queries_strides[1];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = half ? r1 : r0;
#pragma unroll
    for (int i = 0; i < KC; ++i) {
      uint32_t w[4];
      gqa_load8_bits(qb + row * queries_strides[2] + (32 * i + 8 * t) * queries_strides[3], queries_strides[3],
                     row < Lq, w);
      qa[2 * i][half] = w[0];
      qa[2 * i][2 + half] = w[1];
      qa[2 * i + 1][half] = w[2];
      qa[2 * i + 1][2 + half] = w[3];
    }
  }

  const T* kb = keys + b * keys_strides[0] + kvh * keys_strides[1];
  const T* vb = values + b * values_strides[0] + kvh * values_strides[1];
  const int64_t krs = keys_strides[2], kcs = keys_strides[3], vrs = values_strides[2], vcs = values_strides[3];
  const bool fast = kcs == 1 && vcs == 1 && krs % 8 == 0 && vrs % 8 == 0 &&
      reinterpret_cast<uintptr_t>(kb) % 16 == 0 && reinterpret_cast<uintptr_t>(vb) % 16 == 0;

  // The keys the block's rows see, and this warp's: a warp skips the halves past its own rows.
  const int kmax = CAUSAL ? min(Lk, min(qt * BQ + BQ, Lq) - 1 + Lk - Lq + 1) : Lk;
  const int wkmax = CAUSAL ? min(Lk, min(qt * BQ + warp * 16 + 16, Lq) - 1 + Lk - Lq + 1) : Lk;
  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m0 = -1e30f, m1 = -1e30f, l0 = 0.f, l1 = 0.f;  // each row's running maximum (log2 units) and sum

  // Tile k0 / BK into stage (k0 / BK) % 2; the next tile's copy runs while this one is used.
  auto fetch = [&](int k0) {
    T* ks = stage0 + (k0 / BK % 2) * STAGE;
    T* vs = ks + BK * KP;
    for (int i = tid; i < BK * D / 8; i += 128) {
      const int row = i / (D / 8), col = (i % (D / 8)) * 8, key = k0 + row;
      if (fast) {
        gqa_cp_async16(ks + row * KP + col, kb + min(key, Lk - 1) * krs + col, key < Lk);
        gqa_cp_async16(vs + row * VP + col, vb + min(key, Lk - 1) * vrs + col, key < Lk);
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          ks[row * KP + col + e] = key < Lk ? kb[key * krs + (col + e) * kcs] : gqa_cast<T>(0.f);
          vs[row * VP + col + e] = key < Lk ? vb[key * vrs + (col + e) * vcs] : gqa_cast<T>(0.f);
        }
      }
    }
    gqa_cp_async_commit();
  };
  if (kmax > 0) fetch(0);
  for (int k0 = 0; k0 < kmax; k0 += BK) {
    __syncthreads();  // every warp is done with the stage the next fetch overwrites
    if (k0 + BK < kmax) fetch(k0 + BK); else gqa_cp_async_commit();
    gqa_cp_async_wait<1>();  // this thread's copies of tile k0 have landed ...
    __syncthreads();         // ... and every other thread's
    const T* ks = stage0 + (k0 / BK % 2) * STAGE;
    const T* vs = ks + BK * KP;

#pragma unroll
    for (int sk = 0; sk < BK; sk += SK) {
      if (k0 + sk >= wkmax) continue;  // the same for the whole warp
      // S = Q K^T for this warp's 16 rows and the half's SK keys.
      float s[SK / 8][4];
#pragma unroll
      for (int nt = 0; nt < SK / 8; ++nt) {
        s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
        for (int i = 0; i < KC; ++i) {
          uint32_t w[4];
          gqa_lds128(ks + (sk + nt * 8 + g) * KP + 32 * i + 8 * t, w);
          gqa_mma(s[nt], qa[2 * i], w[0], w[1], T());
          gqa_mma(s[nt], qa[2 * i + 1], w[2], w[3], T());
        }
      }
      float top0 = m0, top1 = m1;
#pragma unroll
      for (int nt = 0; nt < SK / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = k0 + sk + nt * 8 + t * 2 + (e & 1), row = e < 2 ? r0 : r1;
          const bool ok = key < Lk && (!CAUSAL || key <= row + Lk - Lq);
          s[nt][e] = ok ? s[nt][e] * sl2 : NEG_INF;
          if (e < 2) top0 = fmaxf(top0, s[nt][e]); else top1 = fmaxf(top1, s[nt][e]);
        }
      float c0, c1;
      gqa_softmax_rows(s, top0, top1, m0, m1, l0, l1, c0, c1, [](float x) { return exp2f(x); });
#pragma unroll
      for (int i = 0; i < D / 8; ++i) { o[i][0] *= c0; o[i][1] *= c0; o[i][2] *= c1; o[i][3] *= c1; }
      // O += P V: the score tiles of keys 16kk..16kk+15 are the A fragment of step kk; ldmatrix.trans
      // hands each lane V at keys 2t, 2t+1 (and +8) of dim 8 j + g, the B operand of column tile j.
#pragma unroll
      for (int kk = 0; kk < SK / 16; ++kk) {
        const uint32_t pa[4] = {gqa_pack<T>(s[2 * kk][0], s[2 * kk][1]), gqa_pack<T>(s[2 * kk][2], s[2 * kk][3]),
                                gqa_pack<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                gqa_pack<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int jp = 0; jp < D / 16; ++jp) {
          uint32_t vf[4];
          gqa_ldsm_x4_trans(vs + (sk + kk * 16 + (lane & 15)) * VP + 16 * jp + 8 * (lane >> 4), vf);
          gqa_mma(o[2 * jp], pa, vf[0], vf[1], T());
          gqa_mma(o[2 * jp + 1], pa, vf[2], vf[3], T());
        }
      }
    }
  }

  gqa_store_rows(out + ((int64_t)b * Hq + h) * Lq * D, Lq, r0, r1, t, l0, l1, o);
"""

def _wgmma_function(n, a_from_registers, trans_b):
    """CUDA for one wgmma.mma_async (m64 x n x k16, float32 accumulators) for both 16-bit types: A
    from shared memory (a descriptor) or from registers, B from shared memory. The accumulator
    arrays are laid out as an mma.sync m16n8 tile per 8 columns, as wgmma hands them out."""
    regs = n // 2
    d = ", ".join(f"%{i}" for i in range(regs))
    outs = ", ".join(f'"+f"(d[{i // 4}][{i % 4}])' for i in range(regs))
    name = "gqa_wgmma_rs" if a_from_registers else "gqa_wgmma_ss"
    a_param = "const uint32_t (&a)[4]" if a_from_registers else "uint64_t da"
    if a_from_registers:
        a_ops, a_ins, rest = "{" + ", ".join(f"%{regs + i}" for i in range(4)) + "}", '"r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), ', 4
        tail = f"p, 1, 1, {int(trans_b)}"
    else:
        a_ops, a_ins, rest = f"%{regs}", '"l"(da), ', 1
        tail = f"p, 1, 1, 0, {int(trans_b)}"
    text = []
    for ctype, ptx in (("__half", "f16"), ("__nv_bfloat16", "bf16")):
        text.append(
            f"__device__ __forceinline__ void {name}(float (&d)[{n // 8}][4], {a_param}, uint64_t db, bool accumulate, {ctype}) {{\n"
            f'  asm volatile("{{\\n.reg .pred p;\\nsetp.ne.b32 p, %{regs + rest + 1}, 0;\\n"\n'
            f'               "wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{ptx}.{ptx} {{{d}}}, {a_ops}, %{regs + rest}, {tail};\\n}}\\n"\n'
            f"               : {outs}\n"
            f'               : {a_ins}"l"(db), "r"(int(accumulate)));\n'
            "}\n")
    return "".join(text)


# Prefill on Hopper's warpgroup MMA (sm_90a, which MLX compiles custom kernels for on an H100):
# the mma.sync kernel above issues about three times the instructions of cuDNN's (Nsight Compute),
# because each mma.sync computes a 16x8x16 tile from registers that ldmatrix and shared loads fill
# first. Here one warpgroup (the block's 4 warps) computes S = Q K^T for 64 query rows and 64 keys
# in D / 16 wgmma instructions reading Q and K straight from shared memory, and O += P V in 4, with
# P from registers (the S accumulators, repacked to 16 bits, are already in the A operand's layout).
# Q, K and V sit in shared memory as the 128-byte-swizzled tiles wgmma reads: rows of 64 elements
# (128 bytes), a row's 16-byte chunk c at chunk c ^ (row % 8), tiles of D > 64 as several 64-column
# sub-tiles, every tile 1024-byte aligned. K (for S) is K-major; V (for O) is read transposed
# (imm-trans-b). cp.async copies the tiles (the next K/V tile's copy overlaps this one's use), and
# fence.proxy.async makes its writes visible to wgmma, which reads through the async proxy.
# WGS warpgroups share each K/V tile, 64 query rows each, so that a tile's copy serves 64 * WGS rows.
# With PIPE, a tile's O += P V is issued behind the next tile's S = Q K^T and runs during that tile's
# softmax (FlashAttention-3's overlap within a warpgroup), with three stages of K/V tiles.
# Template arguments: T (float16 or bfloat16), D (64 or 128), CAUSAL, WGS (1 or 2), PIPE.
WGMMA_HEADER = MMA_HEADER + r"""
// A shared memory matrix descriptor of a 128-byte-swizzled tile: its start, the byte offsets between
// 8x8 core matrices along the leading (lbo) and stride (sbo) dimensions.
__device__ __forceinline__ uint64_t gqa_wgmma_desc(const void* p, uint32_t lbo, uint32_t sbo) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  return uint64_t((a & 0x3FFFF) >> 4) | (uint64_t((lbo & 0x3FFFF) >> 4) << 16) |
         (uint64_t((sbo & 0x3FFFF) >> 4) << 32) | (uint64_t(1) << 62);
}
__device__ __forceinline__ void gqa_wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void gqa_wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void gqa_wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
// A compile-time int as a value, for the generic lambdas of a kernel body (which cannot be templates).
template <int N>
struct gqa_int {
  static constexpr int value = N;
};
__device__ __forceinline__ void gqa_fence_async_shared() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// A wgmma's accumulator read after the wait that completes it: the compiler sees the wgmma's asm
// write its accumulators at its issue, so a plain read could be moved above the wait; a volatile
// asm is not. It copies rather than pins in place: an accumulator written by anything but a wgmma
// while another wgmma batch is in flight makes ptxas serialize the two.
__device__ __forceinline__ float gqa_wgmma_read(float x) {
  float y;
  asm volatile("mov.b32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
// Pins every accumulator register at this point of the program: the compiler sees a wgmma's asm
// write them at its issue, not at the wait that completes it, and must not move their uses across.
template <int N>
__device__ __forceinline__ void gqa_wgmma_fence_operands(float (&d)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+f"(d[i][j])::"memory");
}
""" + _wgmma_function(64, False, False) + _wgmma_function(64, True, True) + _wgmma_function(128, True, True)

WGMMA_SOURCE = r"""
  constexpr int THREADS = 128 * WGS, BQ = 64 * WGS, BK = 64, SUB = D / 64, CHUNKS = D / 8;  // SUB sub-tiles of 64 columns
  constexpr int QBYTES = SUB * BQ * 128, TBYTES = SUB * BK * 128;
  constexpr float LOG2E = 1.4426950408889634f;
  const float NEG_INF = -__int_as_float(0x7f800000);
  extern __shared__ __align__(16) unsigned char gqa_smem[];
  // The swizzle follows shared-memory address bits 4-9, so tiles start on 1024-byte boundaries.
  unsigned char* const qs = gqa_smem + ((1024 - static_cast<uint32_t>(__cvta_generic_to_shared(gqa_smem)) % 1024) % 1024);
  // Stages of (K tile, V tile): with PIPE a tile's V is still read while the tile after next is copied.
  constexpr int NSTAGES = PIPE ? 3 : 2;
  unsigned char* const stage0 = qs + QBYTES;

  const int Hq = queries_shape[1], Lq = queries_shape[2], Hkv = keys_shape[1], Lk = keys_shape[2];
  const int qt = gridDim.x - 1 - blockIdx.x;  // the longest causal rows start first
  const int b = blockIdx.y / Hq, h = blockIdx.y % Hq, kvh = h / (Hq / Hkv);
  const int tid = threadIdx.x, wg = tid / 128, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int r0 = qt * BQ + warp * 16 + g, r1 = r0 + 8;  // this lane's two rows of S and O (warpgroup wg's 64)
  const float sl2 = scale[0] * LOG2E;

  const T* qb = queries + b * queries_strides[0] + h * queries_strides[1];
  const T* kb = keys + b * keys_strides[0] + kvh * keys_strides[1];
  const T* vb = values + b * values_strides[0] + kvh * values_strides[1];
  const int64_t qrs = queries_strides[2], qcs = queries_strides[3];
  const int64_t krs = keys_strides[2], kcs = keys_strides[3], vrs = values_strides[2], vcs = values_strides[3];
  const bool fast = qcs == 1 && kcs == 1 && vcs == 1 && qrs % 8 == 0 && krs % 8 == 0 && vrs % 8 == 0 &&
      reinterpret_cast<uintptr_t>(qb) % 16 == 0 && reinterpret_cast<uintptr_t>(kb) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(vb) % 16 == 0;

  // Rows [row0, row0 + rows) of a (.., D) matrix into a swizzled tile; zeros past `limit` rows. Row
  // r's 16-byte chunk c16 (of D / 8) sits at (c16 / 8) * rows * 128 + r * 128 + ((c16 % 8) ^ (r % 8)) * 16.
  // A thread copies chunk c16 of every STEP-th row from row rt: STEP being a multiple of 8, the
  // chunk sits at the same swizzled place in each of them.
  constexpr int STEP = THREADS / CHUNKS;
  static_assert(STEP % 8 == 0, "a thread's rows share one swizzle");
  const int c16 = tid % CHUNKS, rt = tid / CHUNKS, chunk = ((c16 % 8) ^ (rt % 8)) << 4;
  auto copy_rows = [&](unsigned char* tile, int rows, const T* src, int64_t rs, int64_t cs, int row0, int limit) {
    unsigned char* dst = tile + (c16 / 8) * rows * 128 + rt * 128 + chunk;
#pragma unroll 1  // unrolled, ptxas keeps each row's address in registers across the loop
    for (int row = row0 + rt; row < row0 + rows; row += STEP, dst += STEP * 128) {
      if (fast) {
        gqa_cp_async16(dst, src + min(row, limit - 1) * rs + c16 * 8, row < limit);
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e)
          reinterpret_cast<T*>(dst)[e] = row < limit ? src[row * rs + (c16 * 8 + e) * cs] : gqa_cast<T>(0.f);
      }
    }
  };
  // O += P V, 16 keys a step: V's 16 rows (two groups of 8, sbo apart) read transposed, its
  // sub-tiles lbo apart; committed as one wgmma group.
  auto gqa_wgmma_pv = [](float (&acc)[D / 8][4], const uint32_t (&p)[BK / 16][4], const unsigned char* v) {
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk)
      gqa_wgmma_rs(acc, p[kk], gqa_wgmma_desc(v + kk * 16 * 128, BK * 128, 1024), true, T());
    gqa_wgmma_commit();
  };
  auto fetch = [&](int k0) {
    unsigned char* ks = stage0 + (k0 / BK % NSTAGES) * 2 * TBYTES;
    copy_rows(ks, BK, kb, krs, kcs, k0, Lk);
    copy_rows(ks + TBYTES, BK, vb, vrs, vcs, k0, Lk);
    gqa_cp_async_commit();
  };

  const int kmax = CAUSAL ? min(Lk, min(qt * BQ + BQ, Lq) - 1 + Lk - Lq + 1) : Lk;
  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m0 = -1e30f, m1 = -1e30f, l0 = 0.f, l1 = 0.f;  // each row's running maximum (log2 units) and sum
  uint32_t pa[BK / 16][4];  // P of the last tile softmax saw, as the A operand of O += P V

  copy_rows(qs, BQ, qb, qrs, qcs, qt * BQ, Lq);
  gqa_cp_async_commit();
  if (kmax > 0) fetch(0);
  // Tile k0 in shared memory, the next one's copy under way; its K (its V is TBYTES further).
  auto ready = [&](int k0) {
    __syncthreads();  // every warp is done with the stage the next fetch overwrites
    if (k0 + BK < kmax) fetch(k0 + BK); else gqa_cp_async_commit();
    gqa_cp_async_wait<1>();    // this thread's copies of Q and of tile k0 have landed ...
    gqa_fence_async_shared();  // ... are made visible to wgmma's reads ...
    __syncthreads();           // ... and so are every other thread's
    return stage0 + (k0 / BK % NSTAGES) * 2 * TBYTES;
  };
  // S = Q K^T, 16 head dims a step: 32 bytes into a 128-byte row, the next sub-tile every 4 steps.
  auto issue_qk = [&](float (&acc)[BK / 8][4], const unsigned char* ks) {
#pragma unroll
    for (int kd = 0; kd < D / 16; ++kd)
      gqa_wgmma_ss(acc, gqa_wgmma_desc(qs + (kd / 4) * BQ * 128 + wg * 64 * 128 + (kd % 4) * 32, 16, 1024),
                   gqa_wgmma_desc(ks + (kd / 4) * BK * 128 + (kd % 4) * 32, 16, 1024), kd > 0, T());
    gqa_wgmma_commit();
  };
  // The online softmax of tile k0's scores: P into `p`, the running maximum and sum updated, and by
  // how much O must be rescaled. It reads S through gqa_wgmma_read, into `p`. Only tiles that reach
  // past the last key or across the causal diagonal of some row in the warpgroup are masked.
  const int wg_row0 = qt * BQ + wg * 64;
  auto softmax = [&](const float (&acc)[BK / 8][4], int k0, float (&p)[BK / 8][4], float& c0, float& c1) {
    float top0 = m0, top1 = m1;
    // Scaled scores into p, each row's maximum into top0 / top1; masked, or not at all.
    auto scores = [&](auto masked) {
#pragma unroll
      for (int nt = 0; nt < BK / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          p[nt][e] = gqa_wgmma_read(acc[nt][e]) * sl2;
          if constexpr (decltype(masked)::value) {
            const int key = k0 + nt * 8 + t * 2 + (e & 1), row = e < 2 ? r0 : r1;
            if (key >= Lk || (CAUSAL && key > row + Lk - Lq)) p[nt][e] = NEG_INF;
          }
          if (e < 2) top0 = fmaxf(top0, p[nt][e]); else top1 = fmaxf(top1, p[nt][e]);
        }
    };
    if (k0 + BK > Lk || (CAUSAL && k0 + BK - 1 > wg_row0 + Lk - Lq)) scores(gqa_int<1>()); else scores(gqa_int<0>());
    gqa_softmax_rows(p, top0, top1, m0, m1, l0, l1, c0, c1, gqa_exp2);
  };
  // P as the A operand of O += P V: score tiles 2kk and 2kk + 1 are step kk's registers.
  auto pack = [&](const float (&p)[BK / 8][4]) {
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      pa[kk][0] = gqa_pack<T>(p[2 * kk][0], p[2 * kk][1]);
      pa[kk][1] = gqa_pack<T>(p[2 * kk][2], p[2 * kk][3]);
      pa[kk][2] = gqa_pack<T>(p[2 * kk + 1][0], p[2 * kk + 1][1]);
      pa[kk][3] = gqa_pack<T>(p[2 * kk + 1][2], p[2 * kk + 1][3]);
    }
  };
  auto rescale = [&](float c0, float c1) {
#pragma unroll
    for (int i = 0; i < D / 8; ++i) { o[i][0] *= c0; o[i][1] *= c0; o[i][2] *= c1; o[i][3] *= c1; }
  };
  float s[BK / 8][4], p[BK / 8][4];
  float c0, c1;

  if constexpr (!PIPE) {
    for (int k0 = 0; k0 < kmax; k0 += BK) {
      const unsigned char* ks = ready(k0);
      gqa_wgmma_fence();
      issue_qk(s, ks);
      gqa_wgmma_wait<0>();
      softmax(s, k0, p, c0, c1);
      rescale(c0, c1);
      pack(p);
      gqa_wgmma_fence_operands(o);
      gqa_wgmma_fence();  // after the last register write a wgmma reads (P, and O rescaled)
      gqa_wgmma_pv(o, pa, ks + TBYTES);
      gqa_wgmma_wait<0>();
      gqa_wgmma_fence_operands(o);
    }
  } else if (kmax > 0) {
    // Tile j's O += P V is issued right behind tile j + 1's S = Q K^T and runs during that tile's
    // softmax; O is rescaled once it is done.
    const unsigned char* ks = ready(0);
    gqa_wgmma_fence();
    issue_qk(s, ks);
    gqa_wgmma_wait<0>();
    softmax(s, 0, p, c0, c1);  // O is still zero: nothing to rescale
    pack(p);
    const unsigned char* vs_prev = ks + TBYTES;
    for (int k0 = BK; k0 < kmax; k0 += BK) {
      ks = ready(k0);
      gqa_wgmma_fence_operands(o);
      gqa_wgmma_fence();
      issue_qk(s, ks);
      gqa_wgmma_pv(o, pa, vs_prev);
      gqa_wgmma_wait<1>();  // S is done; O += P V may still run, reading O and pa: neither is written
      softmax(s, k0, p, c0, c1);
      gqa_wgmma_wait<0>();
      gqa_wgmma_fence_operands(o);
      rescale(c0, c1);
      pack(p);
      vs_prev = ks + TBYTES;
    }
    gqa_wgmma_fence_operands(o);
    gqa_wgmma_fence();
    gqa_wgmma_pv(o, pa, vs_prev);
    gqa_wgmma_wait<0>();
    gqa_wgmma_fence_operands(o);
  }
  gqa_cp_async_wait<0>();  // no copy outlives the block (when no key is visible, Q's was never waited for)

  gqa_store_rows(out + ((int64_t)b * Hq + h) * Lq * D, Lq, r0, r1, t, l0, l1, o);
"""


# name: (inputs, outputs, source, header, ensure_row_contiguous)
_KERNELS = {
    "vector": (["queries", "keys", "values", "scale", "counters"], ["out", "partials"], VECTOR_SOURCE, HEADER, False),
    "decode_mma": (["queries", "keys", "values", "scale", "counters"], ["out", "partials"], DECODE_MMA_SOURCE,
                   MMA_HEADER, False),
    "mma": (["queries", "keys", "values", "scale"], ["out"], MMA_SOURCE, MMA_HEADER, False),
    "wgmma": (["queries", "keys", "values", "scale"], ["out"], WGMMA_SOURCE, WGMMA_HEADER, False),
    "combine": (["partials"], ["out"], COMBINE_SOURCE, HEADER, True),
}
_CUDA_TYPES = {mx.float16: "__half", mx.bfloat16: "__nv_bfloat16", mx.float32: "float"}
_kernels = {}
_COMMENT = re.compile(r'("(?:\\.|[^"\\])*")|//.*')  # a string literal (kept) or a comment


def _compact(cuda):
    """`cuda` without comments and indentation, line for line, so that a compiler's line numbers
    still point at the same lines. MLX copies a kernel's whole source on every call and hashes it
    on every evaluation: its length is host time spent on each call."""
    return "\n".join(_COMMENT.sub(lambda m: m.group(1) or "", line).strip() for line in cuda.split("\n"))


def _kernel(name, template, shared_memory=0):
    """The mx.fast.cuda_kernel `name` with its template arguments written into its source as the
    constants MLX would write, made on first use (importing this file needs no GPU). Passed as
    `template=` instead, they would be formatted and hashed again on every call (about 2 us of host
    time on the H100's host). MLX sizes a kernel's dynamic shared memory when it is made, hence one
    object per size too."""
    key = (name, tuple(template), shared_memory)
    if key not in _kernels:
        inputs, outputs, source, header, contiguous = _KERNELS[name]
        constants, words = [], [name]
        for arg, value in template:
            if isinstance(value, bool):
                constants.append(f"  constexpr bool {arg} = {'true' if value else 'false'};")
                words.append("t" if value else "f")
            elif isinstance(value, int):
                constants.append(f"  constexpr int {arg} = {value};")
                words.append(str(value))
            else:
                constants.append(f"  using {arg} = {_CUDA_TYPES[value]};")
                words.append(_CUDA_TYPES[value].strip("_"))
        _kernels[key] = mx.fast.cuda_kernel(
            name="gqa_" + "_".join(words + [str(shared_memory)]), input_names=inputs, output_names=outputs,
            source="\n".join(constants) + "\n" + _compact(source), header=_compact(header),
            ensure_row_contiguous=contiguous,
            shared_memory=shared_memory)
    return _kernels[key]


def _pow2_divisor(limit, n):
    """The largest power of two <= limit that divides n."""
    p = 1
    while p * 2 <= limit and n % (p * 2) == 0:
        p *= 2
    return p


def layout(batch, query_heads, kv_heads, query_len, key_len, head_dim):
    """The vector kernel's launch for these sizes: (heads per block, lanes, vec, threads, splits, keys)."""
    group = query_heads // kv_heads
    heads = group if SHARE_KV else 1
    per_lane = head_dim // 32
    keys = DOT in ("keys", "mma") and THREADS >= 32 and head_dim % 32 == 0 and per_lane & (per_lane - 1) == 0
    if keys:
        lanes, vec = 32, per_lane
    else:
        lanes = _pow2_divisor(min(KEY_LANES, THREADS, 32), head_dim)
        vec = _pow2_divisor(VEC, head_dim // lanes)
    splits = _splits(batch * (query_heads // heads) * query_len, key_len, MIN_SPLIT_KEYS)
    return heads, lanes, vec, THREADS, splits, keys


def _splits(blocks, key_len, min_keys):
    """Split the keys (flash-decoding) into as many parts as keep the blocks within SPLIT_BLOCKS.
    Rounding up instead put 136 blocks on the H100's 132 SMs for 8 KV heads: four SMs then ran
    two blocks one after the other, and the whole launch waited for them."""
    if not SPLIT_BLOCKS or blocks >= SPLIT_BLOCKS:
        return 1
    return min(SPLIT_BLOCKS // blocks, _length_splits(key_len, min_keys))


def _length_splits(key_len, min_keys):
    """The most splits `key_len` keys allow: all that a split count learns of the key length."""
    return min(max(1, key_len // min_keys), MAX_SPLITS)


class _Counters:
    """Counters for the "atomic" merge: each call takes its own slot of a ring of zeros, and the
    last block of each row sets its counter back to zero, so no call needs a fill kernel. A slot
    comes back round only after SLOTS calls of that size, so calls that run at the same time (MLX
    may run independent kernels of one graph concurrently) never share a counter. The slots are
    sliced and evaluated once: slicing on every call would cost a graph node and host time."""

    SLOTS = 1024

    def __init__(self):
        self.lock = threading.Lock()  # only to make a ring; taking a slot needs none (below)
        self.rings = {}  # rows per call -> (slot views, a count of the slots taken)

    def take(self, count):
        ring = self.rings.get(count)
        if ring is None:
            with self.lock:
                ring = self.rings.get(count)
                if ring is None:
                    zeros = mx.zeros((self.SLOTS * count,), dtype=mx.int32)
                    views = [zeros[i * count:(i + 1) * count] for i in range(self.SLOTS)]
                    mx.eval(views)
                    ring = self.rings[count] = (views, itertools.count())
        views, taken = ring
        return views[next(taken) % self.SLOTS]  # next() of an itertools.count is atomic under the GIL


_counters = _Counters()
_consts = {}


def _const(value, dtype):
    key = (value, dtype)
    if key not in _consts:
        _consts[key] = mx.array(value, dtype=dtype)
        mx.eval(_consts[key])
    return _consts[key]


# ---- The launch of one call, planned once per shape and setting ------------------------------
# A call's Python (choosing a kernel and its template, grid and output shapes) is done once per
# plan key and kept: on the H100's host it cost about 12 us a call, paid before the kernel starts,
# and 50 times over before the GPU starts when 50 calls are evaluated together.


@dataclass(frozen=True)
class Stage:
    """One kernel launch, everything about it but its inputs."""
    kernel: object  # from _kernel
    grid: tuple
    threadgroup: tuple
    output_shapes: list
    output_dtypes: list  # the first is the output's

    def __call__(self, inputs):
        return self.kernel(inputs=inputs, grid=self.grid, threadgroup=self.threadgroup,
                           output_shapes=self.output_shapes, output_dtypes=self.output_dtypes)


@dataclass(frozen=True)
class Launch:
    """What a call of these sizes does: its kernel's stage with the inputs that follow the
    queries, keys and values, and the stage that merges the splits' partials when it splits."""
    stage: Stage
    extra: list  # the scale (a float32 scalar array), and a zero for kernels that take counters but merge none
    counters: int = 0  # rows of the atomic merge's counters a call takes from the ring (after `extra`)
    cast: bool = False  # keys or values come in another dtype than the queries
    merge: Stage = None  # the "kernel" merge, given the stage's partials


def _combine(dtype, shape):
    """The "kernel" merge: a second launch over the partials (rows, splits, D + 4)."""
    rows = shape[0] * shape[1] * shape[2]
    return Stage(_kernel("combine", [("T", dtype), ("D", shape[-1]), ("MAX_SPLITS", MAX_SPLITS)]),
                 grid=(rows * COMBINE_THREADS, 1, 1), threadgroup=(COMBINE_THREADS, 1, 1), output_shapes=[shape],
                 output_dtypes=[dtype])


def _split_launch(stage, queries, keys, values, scale, counters, merge):
    """The Launch of a kernel that takes (queries, keys, values, scale, counters) and may split:
    `counters` rows when it merges atomically, else the constant zero; `merge` when it merges in a
    second launch."""
    return Launch(stage, [_const(float(scale), mx.float32)] + ([] if counters else [_const(0, mx.int32)]),
                  counters=counters, cast=not queries.dtype == keys.dtype == values.dtype, merge=merge)


def _plan_vector(queries, keys, values, scale, causal):
    B, Hq, Lq, D = queries.shape
    Hkv, Lk = keys.shape[1], keys.shape[2]
    heads, lanes, vec, threads, splits, per_key = layout(B, Hq, Hkv, Lq, Lk, D)
    # One compiled kernel whether or not a call splits (the split count is a runtime value).
    atomic_kernel = COMBINE == "atomic" and D % 4 == 0  # its merge reads float4s
    atomic = splits > 1 and atomic_kernel
    merged = splits == 1 or atomic
    template = [("T", queries.dtype), ("D", D), ("G", Hq // Hkv), ("HEADS", heads), ("LANES", lanes), ("VEC", vec),
                ("THREADS", threads), ("UNROLL", 1 if per_key else UNROLL), ("ONLINE", ONLINE_SOFTMAX or per_key),
                ("PER_KEY", per_key), ("CAUSAL", bool(causal)), ("ATOMIC", atomic_kernel), ("MAX_SPLITS", MAX_SPLITS)]
    stage = Stage(
        _kernel("vector", template), grid=(splits * threads, B * (Hq // heads), Lq), threadgroup=(threads, 1, 1),
        output_shapes=[(B, Hq, Lq, D) if merged else (1,), (B * Hq * Lq, splits, D + 4) if splits > 1 else (1,)],
        output_dtypes=[queries.dtype, mx.float32])
    return _split_launch(stage, queries, keys, values, scale, B * (Hq // heads) * Lq if atomic else 0,
                         None if merged else _combine(queries.dtype, (B, Hq, Lq, D)))


def uses_decode_mma(queries, keys):
    """Whether a call with these inputs takes the tensor-core decode kernel."""
    B, Hq, Lq, D = queries.shape
    return (DOT == "mma" and THREADS >= 32 and Lq == 1 and queries.dtype in (mx.float16, mx.bfloat16)
            and D in (64, 128) and Hq % keys.shape[1] == 0 and Hq // keys.shape[1] <= 16)


RING_BYTES = 160 * 1024  # the most shared memory a block's tile rings may take


def decode_mma_stages(threads, head_dim, itemsize, group):
    """STAGES, capped so that every warp's ring fits: (stages, bytes of dynamic shared memory),
    the latter also enough for the merge that reuses the rings (see DECODE_MMA_SOURCE)."""
    warps, tile_pair = threads // 32, 2 * 16 * head_dim * itemsize  # a K tile and a V tile
    stages = max(2, min(STAGES, RING_BYTES // (warps * tile_pair)))
    merge = 4 * (max(warps * group * head_dim, 2 * group * MAX_SPLITS) + 2 * warps * 16 + 2 * group)
    return stages, max(warps * stages * tile_pair, merge)


def _plan_decode_mma(queries, keys, values, scale):
    B, Hq, _, D = queries.shape
    Hkv, Lk = keys.shape[1], keys.shape[2]
    splits = _splits(B * Hkv, Lk, MMA_MIN_SPLIT_KEYS)
    atomic = splits > 1 and COMBINE == "atomic"
    merged = splits == 1 or atomic
    stages, ring = decode_mma_stages(THREADS, D, queries.itemsize, Hq // Hkv)
    template = [("T", queries.dtype), ("D", D), ("G", Hq // Hkv), ("THREADS", THREADS), ("STAGES", stages),
                ("ATOMIC", COMBINE == "atomic"), ("MAX_SPLITS", MAX_SPLITS)]
    stage = Stage(
        _kernel("decode_mma", template, ring), grid=(splits * THREADS, B * Hkv, 1), threadgroup=(THREADS, 1, 1),
        output_shapes=[(B, Hq, 1, D) if merged else (1,), (B * Hq, splits, D + 4) if splits > 1 else (1,)],
        output_dtypes=[queries.dtype, mx.float32])
    return _split_launch(stage, queries, keys, values, scale, B * Hkv if atomic else 0,
                         None if merged else _combine(queries.dtype, (B, Hq, 1, D)))


def _hopper():
    """Whether the GPU has wgmma (sm_90: H100, H200); MLX then compiles for sm_90a."""
    return mx.device_info().get("architecture") == "sm_90"


def _plan_mma(queries, keys, values, scale, causal):
    B, Hq, Lq, D = queries.shape
    template = [("T", queries.dtype), ("D", D), ("CAUSAL", bool(causal))]
    rows, threads = 64, 128
    if PREFILL == "wgmma" and _hopper():
        # Q's 64 * WGS rows and two stages of (K, V) tiles of 64 rows, and room to align them to 1024 bytes
        rows, threads, name = 64 * WGMMA_GROUPS, 128 * WGMMA_GROUPS, "wgmma"
        stages = 3 if WGMMA_PIPELINE else 2
        smem = (WGMMA_GROUPS + 2 * stages) * 64 * D * queries.itemsize + 1024
        template = template + [("WGS", WGMMA_GROUPS), ("PIPE", WGMMA_PIPELINE)]
    else:  # two stages of (K, V) tiles: BK rows of KP, VP
        name, smem = "mma", 2 * 64 * ((D + 32) + (D + 8)) * queries.itemsize
    stage = Stage(
        _kernel(name, template, smem),
        grid=(-(-Lq // rows) * threads, B * Hq, 1), threadgroup=(threads, 1, 1), output_shapes=[(B, Hq, Lq, D)],
        output_dtypes=[queries.dtype])
    return Launch(stage, [_const(float(scale), mx.float32)], cast=not queries.dtype == keys.dtype == values.dtype)


def uses_mma(queries):
    """Whether a call with these queries takes the tensor-core prefill kernel."""
    D, Lq = queries.shape[-1], queries.shape[2]
    return PREFILL in ("mma", "wgmma") and Lq > 1 and queries.dtype in (mx.float16, mx.bfloat16) and D in (64, 128)


def plan(queries, keys, values, scale, causal):
    """The Launch for a call with these inputs under the current tunables."""
    if uses_mma(queries):
        return _plan_mma(queries, keys, values, scale, causal)
    if uses_decode_mma(queries, keys):  # one query row: it sees every key, causal or not
        return _plan_decode_mma(queries, keys, values, scale)
    return _plan_vector(queries, keys, values, scale, causal)


def _launch(launch, queries, keys, values):
    if launch.cast:
        keys, values = keys.astype(queries.dtype), values.astype(queries.dtype)
    if launch.counters:
        outs = launch.stage([queries, keys, values, *launch.extra, _counters.take(launch.counters)])
    else:
        outs = launch.stage([queries, keys, values, *launch.extra])
    return outs[0] if launch.merge is None else launch.merge([outs[1]])[0]


def tunables():
    """Every module-level setting a plan reads. A setting missing here would let a call reuse a
    launch planned under another value."""
    return (THREADS, KEY_LANES, VEC, SHARE_KV, ONLINE_SOFTMAX, UNROLL, DOT, STAGES, MMA_MIN_SPLIT_KEYS, SPLIT_BLOCKS,
            MIN_SPLIT_KEYS, COMBINE, PREFILL, WGMMA_GROUPS, WGMMA_PIPELINE, MAX_SPLITS, COMBINE_THREADS, RING_BYTES)


_plans = {}


def _attention(queries, keys, values, scale, causal):
    # The key length enters a plan only through the split counts (see _splits), the vector
    # kernel's and the tensor-core decode's: decode against a growing KV cache reuses one plan for
    # every step.
    kshape = keys.shape
    key = (queries.shape, kshape[0], kshape[1], kshape[3], _length_splits(kshape[2], MIN_SPLIT_KEYS),
           _length_splits(kshape[2], MMA_MIN_SPLIT_KEYS), queries.dtype, keys.dtype, values.dtype, scale, causal,
           tunables())
    launch = _plans.get(key)
    if launch is None:
        launch = _plans[key] = plan(queries, keys, values, scale, causal)
    return _launch(launch, queries, keys, values)
# EVOLVE-BLOCK-END


def gqa_attention(queries: mx.array, keys: mx.array, values: mx.array, scale: float, causal: bool) -> mx.array:
    """Attention of queries (B, Hq, Lq, D) over keys and values (B, Hkv, Lk, D); (B, Hq, Lq, D)."""
    return _attention(queries, keys, values, scale, causal)
