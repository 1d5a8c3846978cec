"""Grouped-query attention (as in Qwen3) as CUDA kernels under MLX (mx.fast.cuda_kernel).

    gqa_attention(queries, keys, values, scale, causal) -> (B, Hq, Lq, D) in the queries' dtype

queries (B, Hq, Lq, D), keys and values (B, Hkv, Lk, D) with Hq a multiple of Hkv: query head h
reads KV head h // (Hq // Hkv). With `causal`, query i sees keys j <= i + (Lk - Lq), so decode
(Lq = 1) against a KV cache sees the whole cache. float16, bfloat16 and float32.

Sequence and cache lengths are runtime values (read from the arrays' shapes inside the kernel):
one compiled kernel serves every length. Dtype, head dim, group size and the tunables below are
compile-time template arguments. The kernels read the inputs' strides, so a strided view of a
KV cache (mlx-lm's `keys[..., :offset, :]`) is read in place instead of copied on every step.

The tunables start at the plain, slow choices of the published starting point: one thread per
query row, a scalar dot product, a separate softmax pass (max first, then exponentials), each
query head reading its own copy of K/V. Every combination is correct; the evaluator measures
which is fastest against mx.fast.scaled_dot_product_attention. Only the EVOLVE-BLOCK may change.
"""

import threading

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
# then fixed by the head dim).
DOT = "lanes"  # gitevolve: choices=["lanes", "keys"]

# Split the keys (flash-decoding) until about this many blocks run; 0 never splits. A split
# holds at least MIN_SPLIT_KEYS keys, and there are at most 256 splits.
SPLIT_BLOCKS = 0  # gitevolve: choices=[0, 132, 264, 528, 1056, 2112]
MIN_SPLIT_KEYS = 256  # gitevolve: choices=[32, 64, 128, 256, 512, 1024]

# How the splits' partial results are merged: "atomic" in the same launch (the last block of a
# row to finish, found with an atomic counter, merges them); "kernel" in a second launch.
COMBINE = "kernel"  # gitevolve: choices=["atomic", "kernel"]

# ---- Prefill (Lq > 1): "vector" uses the kernel above; "mma" a tiled kernel on the tensor cores
# (float16/bfloat16, head dim a multiple of 16 up to 128; other inputs take the vector kernel).
PREFILL = "vector"  # gitevolve: choices=["vector", "mma"]

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
    // ... and the last block of this row to finish merges them all (threadFenceReduction);
    // otherwise the second kernel does.
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    int* ticket = const_cast<int*>(counters) + blockIdx.y * gridDim.z + qi;
    if (tid == 0) last = atomicAdd(ticket, 1) == nsplit - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    float* wm = big;
    float* wl = big + HEADS * MAX_SPLITS;
    for (int i = tid; i < HEADS * nsplit; i += THREADS) {
      const float* part = partials + ((row0 + (int64_t)(i / nsplit) * Lq) * nsplit + i % nsplit) * P;
      wm[i] = __ldcg(part);
      wl[i] = __ldcg(part + 1);
    }
    __syncthreads();
    for (int j = tid; j < HEADS; j += THREADS) {
      float* w = wm + j * nsplit;
      float best = START, total = 0.f;
      for (int s = 0; s < nsplit; ++s) best = fmaxf(best, w[s]);
      for (int s = 0; s < nsplit; ++s) { w[s] = exp2f(w[s] - best); total += w[s] * wl[j * nsplit + s]; }
      const float inv = total > 0.f ? 1.f / total : 0.f;
      for (int s = 0; s < nsplit; ++s) w[s] *= inv;
    }
    __syncthreads();
    for (int i = tid; i < HEADS * D / 4; i += THREADS) {
      const int j = i / (D / 4), d = (i % (D / 4)) * 4;
      const float* part = partials + (row0 + (int64_t)j * Lq) * nsplit * P + 4 + d;
      float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 8
      for (int s = 0; s < nsplit; ++s) {
        const float4 x = __ldcg(reinterpret_cast<const float4*>(part + s * P));
        const float w = wm[j * nsplit + s];
        o.x += w * x.x; o.y += w * x.y; o.z += w * x.z; o.w += w * x.w;
      }
      T* dst = out + (row0 + (int64_t)j * Lq) * D + d;
      dst[0] = gqa_cast<T>(o.x); dst[1] = gqa_cast<T>(o.y); dst[2] = gqa_cast<T>(o.z); dst[3] = gqa_cast<T>(o.w);
    }
    if (tid == 0) *ticket = 0;  // ready for the next call that draws this counter
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

# Flash-attention style prefill on the tensor cores (mma.sync m16n8k16): a block of 4 warps takes
# 64 query rows of one head (16 rows a warp) and walks the keys in tiles of 64 staged in shared
# memory (V transposed), with an online softmax in registers. Template arguments: T, D, CAUSAL.
MMA_SOURCE = r"""
  constexpr int BQ = 64, BK = 64, KP = D + 8, VP = BK + 8;
  constexpr float LOG2E = 1.4426950408889634f;
  const float NEG_INF = -__int_as_float(0x7f800000);
  __shared__ __align__(16) T ks[BK * KP];
  __shared__ __align__(16) T vt[D * VP];

  const int Hq = queries_shape[1], Lq = queries_shape[2], Hkv = keys_shape[1], Lk = keys_shape[2];
  const int qt = gridDim.x - 1 - blockIdx.x;  // the longest causal rows start first
  const int b = blockIdx.y / Hq, h = blockIdx.y % Hq, kvh = h / (Hq / Hkv);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, c = lane % 4;
  const int r0 = qt * BQ + warp * 16 + g, r1 = r0 + 8;  // this lane's two rows
  const float sl2 = scale[0] * LOG2E;

  // Queries as A fragments, one per 16 columns of D.
  uint32_t qa[D / 16][4];
  const T* qb = queries + b * queries_strides[0] + h * queries_strides[1];
  const int64_t qrs = queries_strides[2], qcs = queries_strides[3];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int row = (r & 1) ? r1 : r0, col = kk * 16 + c * 2 + ((r & 2) ? 8 : 0);
      qa[kk][r] = row < Lq ? gqa_pack_raw<T>(qb[row * qrs + col * qcs], qb[row * qrs + (col + 1) * qcs]) : 0u;
    }

  const T* kb = keys + b * keys_strides[0] + kvh * keys_strides[1];
  const T* vb = values + b * values_strides[0] + kvh * values_strides[1];
  const int64_t krs = keys_strides[2], kcs = keys_strides[3], vrs = values_strides[2], vcs = values_strides[3];
  const bool fast = kcs == 1 && vcs == 1 && krs % 8 == 0 && vrs % 8 == 0 &&
      reinterpret_cast<uintptr_t>(kb) % 16 == 0 && reinterpret_cast<uintptr_t>(vb) % 16 == 0;

  const int last_row = min(qt * BQ + BQ, Lq) - 1;
  const int kmax = CAUSAL ? min(Lk, last_row + Lk - Lq + 1) : Lk;
  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m0 = -1e30f, m1 = -1e30f, l0 = 0.f, l1 = 0.f;

  for (int k0 = 0; k0 < kmax; k0 += BK) {
    __syncthreads();  // the previous tile is consumed
    for (int i = tid; i < BK * D / 8; i += 128) {
      const int row = i / (D / 8), col = (i % (D / 8)) * 8, key = k0 + row;
      GqaVec<T, 8> kv, vv;
      if (key < Lk && fast) {
        kv = *reinterpret_cast<const GqaVec<T, 8>*>(kb + key * krs + col);
        vv = *reinterpret_cast<const GqaVec<T, 8>*>(vb + key * vrs + col);
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          kv.v[e] = key < Lk ? kb[key * krs + (col + e) * kcs] : gqa_cast<T>(0.f);
          vv.v[e] = key < Lk ? vb[key * vrs + (col + e) * vcs] : gqa_cast<T>(0.f);
        }
      }
      *reinterpret_cast<GqaVec<T, 8>*>(ks + row * KP + col) = kv;
#pragma unroll
      for (int e = 0; e < 8; ++e) vt[(col + e) * VP + row] = vv.v[e];
    }
    __syncthreads();

    // S = Q K^T for this warp's 16 rows and the tile's 64 keys.
    float s[BK / 8][4];
#pragma unroll
    for (int nt = 0; nt < BK / 8; ++nt) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
      const T* krow = ks + (nt * 8 + g) * KP + c * 2;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
        gqa_mma(s[nt], qa[kk], *reinterpret_cast<const uint32_t*>(krow + kk * 16),
                *reinterpret_cast<const uint32_t*>(krow + kk * 16 + 8), T());
    }
    float top0 = m0, top1 = m1;
#pragma unroll
    for (int nt = 0; nt < BK / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = k0 + nt * 8 + c * 2 + (e & 1), row = e < 2 ? r0 : r1;
        const bool ok = key < Lk && (!CAUSAL || key <= row + Lk - Lq);
        s[nt][e] = ok ? s[nt][e] * sl2 : NEG_INF;
        if (e < 2) top0 = fmaxf(top0, s[nt][e]); else top1 = fmaxf(top1, s[nt][e]);
      }
    // A row's 64 scores sit in the 4 lanes of a quad.
    top0 = fmaxf(top0, __shfl_xor_sync(0xffffffffu, top0, 1));
    top0 = fmaxf(top0, __shfl_xor_sync(0xffffffffu, top0, 2));
    top1 = fmaxf(top1, __shfl_xor_sync(0xffffffffu, top1, 1));
    top1 = fmaxf(top1, __shfl_xor_sync(0xffffffffu, top1, 2));
    const float c0 = exp2f(m0 - top0), c1 = exp2f(m1 - top1);
    m0 = top0;
    m1 = top1;
    l0 *= c0;
    l1 *= c1;
#pragma unroll
    for (int i = 0; i < D / 8; ++i) { o[i][0] *= c0; o[i][1] *= c0; o[i][2] *= c1; o[i][3] *= c1; }
#pragma unroll
    for (int nt = 0; nt < BK / 8; ++nt) {
      s[nt][0] = exp2f(s[nt][0] - m0);
      s[nt][1] = exp2f(s[nt][1] - m0);
      s[nt][2] = exp2f(s[nt][2] - m1);
      s[nt][3] = exp2f(s[nt][3] - m1);
      l0 += s[nt][0] + s[nt][1];
      l1 += s[nt][2] + s[nt][3];
    }
    // O += P V: the score tiles of keys 16kk..16kk+15 are the A fragment of step kk.
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      const uint32_t pa[4] = {gqa_pack<T>(s[2 * kk][0], s[2 * kk][1]), gqa_pack<T>(s[2 * kk][2], s[2 * kk][3]),
                              gqa_pack<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              gqa_pack<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        const T* vrow = vt + (dt * 8 + g) * VP + kk * 16 + c * 2;
        gqa_mma(o[dt], pa, *reinterpret_cast<const uint32_t*>(vrow), *reinterpret_cast<const uint32_t*>(vrow + 8), T());
      }
    }
  }

  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  const float i0 = l0 > 0.f ? 1.f / l0 : 0.f, i1 = l1 > 0.f ? 1.f / l1 : 0.f;
  T* ob = out + ((int64_t)b * Hq + h) * Lq * D;
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) {
    const int col = dt * 8 + c * 2;
    if (r0 < Lq) {
      ob[(int64_t)r0 * D + col] = gqa_cast<T>(o[dt][0] * i0);
      ob[(int64_t)r0 * D + col + 1] = gqa_cast<T>(o[dt][1] * i0);
    }
    if (r1 < Lq) {
      ob[(int64_t)r1 * D + col] = gqa_cast<T>(o[dt][2] * i1);
      ob[(int64_t)r1 * D + col + 1] = gqa_cast<T>(o[dt][3] * i1);
    }
  }
"""

_kernels = {}


def _kernel(name):
    """The mx.fast.cuda_kernel objects, made on first use (importing this file needs no GPU)."""
    if name not in _kernels:
        if name == "vector":
            k = mx.fast.cuda_kernel(
                name="gqa_vector", input_names=["queries", "keys", "values", "scale", "counters"],
                output_names=["out", "partials"], source=VECTOR_SOURCE, header=HEADER, ensure_row_contiguous=False)
        elif name == "combine":
            k = mx.fast.cuda_kernel(
                name="gqa_combine", input_names=["partials"], output_names=["out"], source=COMBINE_SOURCE,
                header=HEADER, ensure_row_contiguous=True)
        else:
            k = mx.fast.cuda_kernel(
                name="gqa_mma", input_names=["queries", "keys", "values", "scale"], output_names=["out"],
                source=MMA_SOURCE, header=MMA_HEADER, ensure_row_contiguous=False)
        _kernels[name] = k
    return _kernels[name]


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
    keys = DOT == "keys" and THREADS >= 32 and head_dim % 32 == 0 and per_lane & (per_lane - 1) == 0
    if keys:
        lanes, vec = 32, per_lane
    else:
        lanes = _pow2_divisor(min(KEY_LANES, THREADS, 32), head_dim)
        vec = _pow2_divisor(VEC, head_dim // lanes)
    blocks = batch * (query_heads // heads) * query_len
    splits = 1
    if SPLIT_BLOCKS and blocks < SPLIT_BLOCKS:
        splits = min(-(-SPLIT_BLOCKS // blocks), max(1, key_len // MIN_SPLIT_KEYS), MAX_SPLITS)
    return heads, lanes, vec, THREADS, splits, keys


class _Counters:
    """Counters for the "atomic" merge: each call takes its own slice of a ring of zeros, and the
    last block of each row sets its counter back to zero, so no call needs a fill kernel. Slices
    come back round only after 1024 calls of that size, so calls that run at the same time (MLX
    may run independent kernels of one graph concurrently) never share a counter."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ring, self.next = None, 0

    def take(self, count):
        with self.lock:
            if self.ring is None or self.ring.size < count * 1024:
                size = 1 << max(16, (count * 1024 - 1).bit_length())
                self.ring, self.next = mx.zeros((size,), dtype=mx.int32), 0
                mx.eval(self.ring)
            if self.next + count > self.ring.size:
                self.next = 0
            start, self.next = self.next, self.next + count
            return self.ring[start:start + count]


_counters = _Counters()
_consts = {}


def _const(value, dtype):
    key = (value, dtype)
    if key not in _consts:
        _consts[key] = mx.array(value, dtype=dtype)
    return _consts[key]


def _vector(queries, keys, values, scale, causal):
    B, Hq, Lq, D = queries.shape
    Hkv, Lk = keys.shape[1], keys.shape[2]
    heads, lanes, vec, threads, splits, per_key = layout(B, Hq, Hkv, Lq, Lk, D)
    # One compiled kernel whether or not a call splits (the split count is a runtime value).
    atomic_kernel = COMBINE == "atomic" and D % 4 == 0  # its merge reads float4s
    atomic = splits > 1 and atomic_kernel
    rows = B * (Hq // heads) * Lq
    counters = _counters.take(rows) if atomic else _const(0, mx.int32)
    merged = splits == 1 or atomic
    template = [("T", queries.dtype), ("D", D), ("G", Hq // Hkv), ("HEADS", heads), ("LANES", lanes), ("VEC", vec),
                ("THREADS", threads), ("UNROLL", 1 if per_key else UNROLL), ("ONLINE", ONLINE_SOFTMAX or per_key),
                ("PER_KEY", per_key), ("CAUSAL", bool(causal)),
                ("ATOMIC", atomic_kernel), ("MAX_SPLITS", MAX_SPLITS)]
    out, partials = _kernel("vector")(
        inputs=[queries, keys, values, _const(float(scale), mx.float32), counters],
        template=template,
        grid=(splits * threads, B * (Hq // heads), Lq),
        threadgroup=(threads, 1, 1),
        output_shapes=[(B, Hq, Lq, D) if merged else (1,), (B * Hq * Lq, splits, D + 4) if splits > 1 else (1,)],
        output_dtypes=[queries.dtype, mx.float32],
    )
    if merged:
        return out
    return _kernel("combine")(
        inputs=[partials],
        template=[("T", queries.dtype), ("D", D), ("MAX_SPLITS", MAX_SPLITS)],
        grid=(B * Hq * Lq * COMBINE_THREADS, 1, 1),
        threadgroup=(COMBINE_THREADS, 1, 1),
        output_shapes=[(B, Hq, Lq, D)],
        output_dtypes=[queries.dtype],
    )[0]


def _mma(queries, keys, values, scale, causal):
    B, Hq, Lq, D = queries.shape
    return _kernel("mma")(
        inputs=[queries, keys, values, _const(float(scale), mx.float32)],
        template=[("T", queries.dtype), ("D", D), ("CAUSAL", bool(causal))],
        grid=(-(-Lq // 64) * 128, B * Hq, 1),
        threadgroup=(128, 1, 1),
        output_shapes=[(B, Hq, Lq, D)],
        output_dtypes=[queries.dtype],
    )[0]


def uses_mma(queries):
    """Whether a call with these queries takes the tensor-core prefill kernel."""
    D, Lq = queries.shape[-1], queries.shape[2]
    return (PREFILL == "mma" and Lq > 1 and queries.dtype in (mx.float16, mx.bfloat16)
            and D % 16 == 0 and D <= 128)


def _attention(queries, keys, values, scale, causal):
    if keys.dtype != queries.dtype or values.dtype != queries.dtype:
        keys, values = keys.astype(queries.dtype), values.astype(queries.dtype)
    if uses_mma(queries):
        return _mma(queries, keys, values, scale, causal)
    return _vector(queries, keys, values, scale, causal)
# EVOLVE-BLOCK-END


def gqa_attention(queries: mx.array, keys: mx.array, values: mx.array, scale: float, causal: bool) -> mx.array:
    """Attention of queries (B, Hq, Lq, D) over keys and values (B, Hkv, Lk, D); (B, Hq, Lq, D)."""
    return _attention(queries, keys, values, scale, causal)
