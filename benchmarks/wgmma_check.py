"""Check the wgmma building blocks of examples/gqa-cuda's "wgmma" prefill one at a time, on an H100.

    python benchmarks/wgmma_check.py

Two small kernels, each one warpgroup, use the example's own WGMMA_HEADER and tile layout:
S = Q K^T for a 64 x 64 tile (Q, K from 128-byte-swizzled shared memory, K-major), and O = P V for
64 x D (P from registers in the A operand layout, V from shared memory read transposed). Each is
compared with numpy for float16 and bfloat16 at D = 64 and 128, so a wrong prefill can be traced to
the descriptor, the swizzle or the fragment layout that is wrong.
"""

import importlib.util
from pathlib import Path

import numpy as np

import mlx.core as mx

ROOT = Path(__file__).resolve().parent.parent

LAYOUT = r"""
  constexpr int SUB = D / 64;
  extern __shared__ __align__(16) unsigned char gqa_smem[];
  unsigned char* const a_tile = gqa_smem + ((1024 - static_cast<uint32_t>(__cvta_generic_to_shared(gqa_smem)) % 1024) % 1024);
  unsigned char* const b_tile = a_tile + SUB * 64 * 128;
  auto at = [](unsigned char* tile, int rows, int r, int c16) {
    return tile + (c16 / 8) * rows * 128 + r * 128 + (((c16 % 8) ^ (r % 8)) << 4);
  };
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
"""

QK_SOURCE = LAYOUT + r"""
  for (int i = tid; i < 64 * D / 8; i += 128) {
    const int r = i / (D / 8), c16 = i % (D / 8);
    *reinterpret_cast<uint4*>(at(a_tile, 64, r, c16)) = *reinterpret_cast<const uint4*>(q + r * D + c16 * 8);
    *reinterpret_cast<uint4*>(at(b_tile, 64, r, c16)) = *reinterpret_cast<const uint4*>(k + r * D + c16 * 8);
  }
  gqa_fence_async_shared();
  __syncthreads();
  float s[8][4];
  gqa_wgmma_fence();
#pragma unroll
  for (int kd = 0; kd < D / 16; ++kd)
    gqa_wgmma_ss(s, gqa_wgmma_desc(a_tile + (kd / 4) * 64 * 128 + (kd % 4) * 32, 16, 1024),
                 gqa_wgmma_desc(b_tile + (kd / 4) * 64 * 128 + (kd % 4) * 32, 16, 1024), kd > 0, T());
  gqa_wgmma_commit();
  gqa_wgmma_wait<0>();
  gqa_wgmma_fence_operands(s);
  for (int nt = 0; nt < 8; ++nt)
    for (int e = 0; e < 4; ++e)
      out[(warp * 16 + g + (e >= 2 ? 8 : 0)) * 64 + nt * 8 + 2 * t + (e & 1)] = s[nt][e];
"""

PV_SOURCE = LAYOUT + r"""
  for (int i = tid; i < 64 * D / 8; i += 128) {
    const int r = i / (D / 8), c16 = i % (D / 8);
    *reinterpret_cast<uint4*>(at(b_tile, 64, r, c16)) = *reinterpret_cast<const uint4*>(v + r * D + c16 * 8);
  }
  gqa_fence_async_shared();
  __syncthreads();
  const int r0 = warp * 16 + g, r1 = r0 + 8;
  uint32_t pa[4][4];
  for (int kk = 0; kk < 4; ++kk) {
    const int c = 16 * kk + 2 * t;
    pa[kk][0] = gqa_pack_raw<T>(p[r0 * 64 + c], p[r0 * 64 + c + 1]);
    pa[kk][1] = gqa_pack_raw<T>(p[r1 * 64 + c], p[r1 * 64 + c + 1]);
    pa[kk][2] = gqa_pack_raw<T>(p[r0 * 64 + c + 8], p[r0 * 64 + c + 9]);
    pa[kk][3] = gqa_pack_raw<T>(p[r1 * 64 + c + 8], p[r1 * 64 + c + 9]);
  }
  float o[D / 8][4];
  gqa_wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
    gqa_wgmma_rs(o, pa[kk], gqa_wgmma_desc(b_tile + kk * 16 * 128, 64 * 128, 1024), kk > 0, T());
  gqa_wgmma_commit();
  gqa_wgmma_wait<0>();
  gqa_wgmma_fence_operands(o);
  for (int j = 0; j < D / 8; ++j)
    for (int e = 0; e < 4; ++e)
      out[(e < 2 ? r0 : r1) * D + 8 * j + 2 * t + (e & 1)] = o[j][e];
"""


def _example():
    spec = importlib.util.spec_from_file_location("gqa_cuda_attention", ROOT / "examples" / "gqa-cuda" / "attention.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    example = _example()
    header = example._compact(example.WGMMA_HEADER)
    qk = mx.fast.cuda_kernel(name="wgmma_check_qk", input_names=["q", "k"], output_names=["out"], source=QK_SOURCE,
                             header=header, shared_memory=2 * 2 * 64 * 128 + 1024)
    pv = mx.fast.cuda_kernel(name="wgmma_check_pv", input_names=["p", "v"], output_names=["out"], source=PV_SOURCE,
                             header=header, shared_memory=2 * 2 * 64 * 128 + 1024)
    rng = np.random.default_rng(0)
    worst = 0.0
    for dtype in (mx.float16, mx.bfloat16):
        for d in (64, 128):
            q, k = rng.standard_normal((64, d)), rng.standard_normal((64, d))
            p, v = rng.random((64, 64)), rng.standard_normal((64, d))
            mq, mk, mp, mv = (mx.array(x.astype(np.float32)).astype(dtype) for x in (q, k, p, v))
            # the reference from the rounded inputs, in float64
            rq, rk, rp, rv = (np.array(x.astype(mx.float32), dtype=np.float64) for x in (mq, mk, mp, mv))
            template = [("T", dtype), ("D", d)]
            s = qk(inputs=[mq, mk], template=template, grid=(128, 1, 1), threadgroup=(128, 1, 1),
                   output_shapes=[(64, 64)], output_dtypes=[mx.float32])[0]
            o = pv(inputs=[mp, mv], template=template, grid=(128, 1, 1), threadgroup=(128, 1, 1),
                   output_shapes=[(64, d)], output_dtypes=[mx.float32])[0]
            for what, got, want in (("S = Q K^T", s, rq @ rk.T), ("O = P V", o, rp @ rv)):
                err = float(np.abs(np.array(got) - want).max())
                worst = max(worst, err / max(1.0, float(np.abs(want).max())))
                print(f"{what:10} {str(dtype):14} D={d:<4} max abs error {err:.3e} (of values up to {np.abs(want).max():.1f})")
    print("PASS" if worst < 1e-3 else f"FAIL: worst relative error {worst:.3e}")


if __name__ == "__main__":
    main()
