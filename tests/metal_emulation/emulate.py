"""Run `mx.fast.metal_kernel` kernels on a CPU: MLX writes the Metal source, g++ compiles it.

`Emulator.run(fn, *args)` traces `fn` (plain MLX code that launches custom Metal kernels) under
`mx.export_function`, which builds the kernels without evaluating them; called with `verbose=True`,
each kernel then prints the full Metal source MLX generated for it (header, signature with
template parameters, body, explicit instantiation). Each launch's source is compiled as C++20
against shim.h, run on the numpy inputs given, and its outputs feed the launches after it.

This checks the kernels' C++ semantics: indexing, strides, masks, template arithmetic, the
algorithm, and that barriers and SIMD shuffles are reached by every thread. It does not check
Metal's compiler, address spaces, threadgroup-memory limits, the speed, or anything that depends
on real SIMD timing; see shim.h for what the emulation keeps.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

SHIM = Path(__file__).resolve().parent / "shim.h"

# How a buffer of each C type travels to and from the program (shim.h's emu::load / emu::store).
STORED = {"float16_t": ("float", np.float32), "half": ("float", np.float32), "bfloat16_t": ("float", np.float32),
          "float": ("float", np.float32), "int": ("int", np.int32), "int64_t": ("int64_t", np.int64),
          "uint": ("uint", np.uint32), "uint32_t": ("uint32_t", np.uint32)}


class EmulationError(AssertionError):
    """The kernel failed to compile or to run (divergent barrier, bad shuffle, crash)."""


@dataclass
class Launch:
    name: str  # the kernel's name as given to mx.fast.metal_kernel
    input_names: list
    output_names: list
    source: str  # MLX's generated Metal source
    inputs: list  # mx arrays seen by the kernel during tracing
    outputs: list  # mx arrays it returned
    grid: tuple
    threadgroup: tuple
    output_shapes: list
    init_value: float | None  # what MLX fills the outputs with first; None leaves them unset
    row_contiguous: bool  # MLX copies strided inputs before the launch


@dataclass
class Param:
    c_type: str
    name: str
    by_reference: bool  # `constant float& scale`: a scalar input
    attribute: str  # "buffer" or a Metal thread attribute such as thread_position_in_threadgroup


def capture(fn, args, export_path: Path) -> list[Launch]:
    """The launches `fn(*args)` makes, with MLX's generated source for each."""
    launches = []
    make_kernel = mx.fast.metal_kernel

    def recording_kernel(**spec):
        kernel = make_kernel(**spec)

        def call(**kwargs):
            outputs = kernel(**kwargs, verbose=True)
            launches.append(Launch(spec["name"], list(spec["input_names"]), list(spec["output_names"]), "",
                                   list(kwargs["inputs"]), list(outputs), tuple(kwargs["grid"]),
                                   tuple(kwargs["threadgroup"]), [tuple(s) for s in kwargs["output_shapes"]],
                                   kwargs.get("init_value"), spec.get("ensure_row_contiguous", True)))
            return outputs

        return call

    # Kernels made while tracing are recorded; one the caller made earlier is not (the example
    # makes its kernels on first use, and the tests load a fresh copy of it).
    mx.fast.metal_kernel = recording_kernel
    try:
        printed = _printed_by(lambda: mx.export_function(str(export_path), fn, *args), export_path.with_suffix(".log"))
    finally:
        mx.fast.metal_kernel = make_kernel
    sources = re.findall(r"Generated source code for `[^`]*`:\n```\n(.*?)```", printed, re.S)
    if not launches:
        raise EmulationError("no mx.fast.metal_kernel launch was recorded: were its kernels made before tracing?")
    if len(sources) != len(launches):
        raise EmulationError(f"{len(launches)} kernel launches but {len(sources)} printed sources:\n{printed[:2000]}")
    for launch, source in zip(launches, sources):
        launch.source = source
    return launches


def _printed_by(action, log: Path) -> str:
    """What `action` writes to file descriptor 1. MLX prints the generated source from C++
    (std::cout), below Python's sys.stdout, so only redirecting the descriptor catches it."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    libc.fflush(None)
    saved = os.dup(1)
    try:
        with open(log, "wb") as sink:
            os.dup2(sink.fileno(), 1)
            try:
                action()
            finally:
                libc.fflush(None)  # std::cout goes through C stdio, fully buffered into a file
                os.dup2(saved, 1)
    finally:
        os.close(saved)
    return log.read_text()


def parse_signature(source: str) -> tuple[str, list[Param]]:
    """(what to call: the kernel function with its template arguments, its parameters)."""
    match = re.search(r"\[\[kernel\]\] void (\w+)\((.*?)\)\s*\{", source, re.S)
    if not match:
        raise EmulationError(f"no [[kernel]] function in the generated source:\n{source[:2000]}")
    function, signature = match.groups()
    instantiation = re.search(r"decltype\((" + function + r"<[^()]*>)\)", source)
    params = []
    for part in signature.split(",\n"):
        # "const device float16_t* queries [[buffer(0)]]", "const constant float& scale [[buffer(8)]]"
        m = re.fullmatch(r"\s*(?:const\s+)?(?:device|constant)\s+(\w+)\s*([*&])\s*(\w+)\s*\[\[buffer\(\d+\)\]\]\s*",
                         part)
        if m:
            params.append(Param(m[1], m[3], m[2] == "&", "buffer"))
            continue
        m = re.fullmatch(r"\s*(\w+)\s+(\w+)\s*\[\[(\w+)\]\]\s*", part)
        if not m:
            raise EmulationError(f"cannot read kernel parameter {part.strip()!r}")
        params.append(Param(m[1], m[2], False, m[3]))
    return instantiation[1] if instantiation else function, params


def program(launch: Launch, call: str, params: list) -> str:
    """One C++ program that runs this launch (whose kernel `call` takes `params`, as
    parse_signature reads them): buffers and the grid come from files in the directory named by
    argv[1], so the program depends only on the source (and its template arguments, part of the
    source), and one binary serves every shape."""
    # The explicit instantiation names Metal's [[host_name]]; the call below instantiates instead.
    source = "\n".join(line for line in launch.source.splitlines() if not line.startswith("template [[host_name"))
    lines = ['#include "shim.h"', source, "int main(int argc, char** argv) {",
             '  const std::string dir = std::string(argv[1]) + "/";']
    args = []
    for p in params:
        if p.attribute != "buffer":
            args.append(f"at.{p.attribute}")  # `thread` is a Metal keyword, erased by shim.h
            continue
        if p.c_type not in STORED:
            raise EmulationError(f"buffer type {p.c_type} of {p.name} is not emulated")
        lines.append(f'  auto {p.name} = emu::load<{STORED[p.c_type][0]}, {p.c_type}>(dir + "{p.name}");')
        args.append(f"{p.name}[0]" if p.by_reference else f"{p.name}.data()")
    lines += ['  const auto grid = emu::load<int, uint>(dir + "launch");  // grid, threadgroup, seed',
              "  emu::launch({grid[0], grid[1], grid[2]}, {grid[3], grid[4], grid[5]}, grid[6],",
              f"    [&](const emu::Thread& at) {{ {call}({', '.join(args)}); }});"]
    for p in params:
        if p.name in launch.output_names:
            lines.append(f'  emu::store<{STORED[p.c_type][0]}>(dir + "{p.name}.out", {p.name});')
    lines += ["  return 0;", "}", ""]
    return "\n".join(lines)


class Emulator:
    """Compiles each distinct program once (in `build_dir`) and runs it on files in a work dir."""

    def __init__(self, build_dir: Path, seed: int = 0):
        self.build_dir = build_dir
        self.seed = seed  # of the threads' scheduling order
        self.shim = SHIM.read_text()  # part of every binary's identity

    def compile(self, text: str) -> Path:
        digest = hashlib.sha256((self.shim + text).encode()).hexdigest()[:16]
        binary = self.build_dir / f"kernel-{digest}"
        if not binary.exists():
            cpp = binary.with_suffix(".cpp")
            cpp.write_text(text)
            # -w: the Metal attributes ([[kernel]], [[buffer(0)]]) are unknown to g++ and ignored.
            result = subprocess.run(["g++", "-std=c++20", "-O1", "-w", f"-I{SHIM.parent}", "-o", str(binary), str(cpp)],
                                    capture_output=True, text=True)
            if result.returncode:
                raise EmulationError(f"g++ rejected the kernel ({cpp}):\n{result.stderr[-6000:]}")
        return binary

    def run(self, fn, args: list[np.ndarray], dtype: mx.Dtype, work_dir: Path) -> list[np.ndarray]:
        """The arrays `fn` returns (as float32 numpy) for `args` cast to `dtype`, whose values they
        should already hold. `args` may be strided numpy views: the kernels receive their strides.
        Only kernel launches are emulated: what `fn` returns must come straight from a kernel."""
        seen, returned = [], []  # what fn receives and returns while traced

        def traced(*xs):
            seen.extend(xs)
            out = fn(*xs)
            returned.extend(out if isinstance(out, (list, tuple)) else [out])
            return out

        examples = [mx.array(np.ascontiguousarray(a)).astype(dtype) for a in args]
        launches = capture(traced, examples, work_dir / "trace.mlxfn")
        values = {id(x): a for x, a in zip(seen, args)}  # mx array seen while tracing -> numpy
        for i, launch in enumerate(launches):
            for value in launch.inputs:  # constants made inside fn, such as a scale
                if id(value) not in values:
                    values[id(value)] = np.array(value.astype(mx.float32) if value.dtype == mx.bfloat16 else value)
            results = self._run_launch(launch, [values[id(v)] for v in launch.inputs], work_dir / f"launch{i}")
            values.update({id(o): r for o, r in zip(launch.outputs, results)})
        if any(id(r) not in values for r in returned):
            raise EmulationError("fn returned an array that no kernel launch made")
        return [values[id(r)] for r in returned]

    def _run_launch(self, launch: Launch, inputs: list[np.ndarray], work: Path) -> list[np.ndarray]:
        work.mkdir()
        call, params = parse_signature(launch.source)
        binary = self.compile(program(launch, call, params))
        types = {p.name: STORED.get(p.c_type, (None, None))[1] for p in params}
        for name, a in zip(launch.input_names, inputs):
            if name not in types:
                continue
            if launch.row_contiguous:
                a = np.ascontiguousarray(a)
            _backing_memory(a).astype(types[name]).tofile(work / name)
            itemsize = a.itemsize
            np.array(a.shape, np.int32).tofile(work / f"{name}_shape")
            np.array([s // itemsize for s in a.strides], np.int64).tofile(work / f"{name}_strides")
            np.array([a.ndim], np.int32).tofile(work / f"{name}_ndim")
        for name, shape in zip(launch.output_names, launch.output_shapes):
            # Unset outputs start as NaN, so that an element the kernel never writes shows.
            fill = launch.init_value if launch.init_value is not None else np.nan if types[name] == np.float32 else 0
            np.full(int(np.prod(shape)), fill, types[name]).tofile(work / name)
        np.array([*launch.grid, *launch.threadgroup, self.seed], np.int32).tofile(work / "launch")
        result = subprocess.run([str(binary), str(work)], capture_output=True, text=True, timeout=120)
        if result.returncode:
            raise EmulationError(f"{launch.name} exited with {result.returncode}: "
                                 f"{_quote_lines(result.stderr.strip(), binary.with_suffix('.cpp'))}")
        return [np.fromfile(work / f"{name}.out", types[name]).reshape(shape)
                for name, shape in zip(launch.output_names, launch.output_shapes)]


def _backing_memory(a: np.ndarray) -> np.ndarray:
    """The flat memory from a view's first element to its last, which its strides index into."""
    if any(s < 0 for s in a.strides):
        raise ValueError("negative strides are not emulated")
    span = 1 + sum((n - 1) * s // a.itemsize for n, s in zip(a.shape, a.strides)) if a.size else 0
    return np.lib.stride_tricks.as_strided(a, shape=(span,), strides=(a.itemsize,))


def _quote_lines(message: str, cpp: Path) -> str:
    """The program's message, with the source lines it names quoted."""
    text = cpp.read_text().splitlines()
    quoted = {int(n) for n in re.findall(r"line (\d+)", message)}
    return message + "".join(f"\n  line {n}: {text[n - 1].strip()}" for n in sorted(quoted) if 0 < n <= len(text))
