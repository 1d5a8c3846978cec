"""The GQA attention harness shared by every backend (MLX ops, Metal and CUDA kernels under MLX).

    shapes       model head layouts and the scenario sets ("cpu", "gpu")
    reference    the float32 reference in plain MLX ops
    correctness  fresh inputs, tolerances per dtype, the worst mismatch
    timing       candidate and mx.fast.scaled_dot_product_attention, interleaved
    guards       the baseline hidden from the candidate, the EVOLVE-BLOCK frame, fresh loading
    evaluate     all of it, as one hook result (docs/hooks.md)
"""
