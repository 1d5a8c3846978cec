"""The GQA attention harness shared by every backend (MLX ops, Metal and CUDA kernels under MLX).

    cli         the hook's options (standard library only, shared by supervisor and child)
    supervise   the hook as a supervisor: the evaluation in a child process, crashes, GPU
                faults, hangs and compiler errors turned into results
    faults      which messages mean a compile error, a GPU fault, a busy device
    child       the evaluation in the child: backend, then evaluate, result to a file
    backend     auto, cpu, cuda or metal, and the scenario set that goes with it
    shapes      model head layouts and the scenario sets ("cpu", "gpu")
    reference   the float32 reference in plain MLX ops
    correctness fresh inputs, tolerances per dtype, the worst mismatch
    timing      candidate and mx.fast.scaled_dot_product_attention, interleaved
    guards      the baseline hidden from the candidate, the EVOLVE-BLOCK frame, fresh loading
    launches    the candidate's kernels counted and their outputs poisoned: proof they ran
    bandwidth   the device's memory bandwidth, and times no memory allows
    memory      peak memory of a call; whose out-of-memory error it was
    summary     the figures the published OpenEvolve run reported, from honest measurements
    evaluate    all of it, as one hook result (docs/hooks.md)
"""
