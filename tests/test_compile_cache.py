"""The NVRTC compile cache (evaluators/gqa/nvrtc_cache.c) against a stand-in NVRTC, on any Linux.

The stand-in is a real shared library named libnvrtc.so.13 with versioned symbols, as NVIDIA's
is, and the "MLX" that calls it is a shared library linked against it and loaded with
RTLD_LOCAL, as Python loads MLX: the same dynamic-linking path the cache takes on a GPU. Its
"compile" writes a PTX that depends on every input and counts the compiles, so a test can tell a
compile from a hit and a right answer from a stale one. On the H200 the cache is checked with MLX
itself (benchmarks/results/compile_cache-h200-*).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from evaluators.gqa import compile_cache

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("cc") is None,
                                reason="needs Linux and a C compiler (cc)")

FAKE_NVRTC = r'''
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
typedef int nvrtcResult;
typedef struct P { char *src; char *out; char names[4][64]; int n; } *nvrtcProgram;
static int compiles;
int fake_compiles(void) { return compiles; }
nvrtcResult nvrtcVersion(int *a, int *b) { *a = 13; *b = 0; return 0; }
nvrtcResult nvrtcCreateProgram(nvrtcProgram *p, const char *src, const char *name, int nh,
                               const char *const *h, const char *const *inc) {
    *p = calloc(1, sizeof **p); (*p)->src = strdup(src); return 0; }
nvrtcResult nvrtcDestroyProgram(nvrtcProgram *p) { free((*p)->src); free((*p)->out); free(*p); *p = 0; return 0; }
nvrtcResult nvrtcAddNameExpression(nvrtcProgram p, const char *n) { strcpy(p->names[p->n++], n); return 0; }
nvrtcResult nvrtcCompileProgram(nvrtcProgram p, int n, const char *const *opts) {
    compiles++;
    if (strstr(p->src, "#error")) return 6;
    p->out = malloc(strlen(p->src) + 256);
    sprintf(p->out, "ptx of [%s] for [%s]", p->src, n ? opts[0] : "");
    return 0; }
nvrtcResult nvrtcGetPTXSize(nvrtcProgram p, size_t *s) { if (!p->out) return 4; *s = strlen(p->out) + 1; return 0; }
nvrtcResult nvrtcGetPTX(nvrtcProgram p, char *o) { if (!p->out) return 4; strcpy(o, p->out); return 0; }
nvrtcResult nvrtcGetCUBINSize(nvrtcProgram p, size_t *s) { return 4; }
nvrtcResult nvrtcGetCUBIN(nvrtcProgram p, char *o) { return 4; }
nvrtcResult nvrtcGetProgramLogSize(nvrtcProgram p, size_t *s) { *s = p->out ? 3 : 7; return 0; }
nvrtcResult nvrtcGetProgramLog(nvrtcProgram p, char *o) { strcpy(o, p->out ? "ok" : "error!"); return 0; }
nvrtcResult nvrtcGetLoweredName(nvrtcProgram p, const char *n, const char **l) {
    for (int i = 0; i < p->n; i++) if (!strcmp(p->names[i], n)) { *l = p->names[i] + 32; sprintf(p->names[i] + 32, "_Z%s", n); return 0; }
    return 10; }
'''

# What MLX does with NVRTC, in the order it does it.
CLIENT = r'''
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
typedef int nvrtcResult;
typedef void *nvrtcProgram;
nvrtcResult nvrtcCreateProgram(nvrtcProgram *, const char *, const char *, int, const char *const *, const char *const *);
nvrtcResult nvrtcDestroyProgram(nvrtcProgram *);
nvrtcResult nvrtcAddNameExpression(nvrtcProgram, const char *);
nvrtcResult nvrtcCompileProgram(nvrtcProgram, int, const char *const *);
nvrtcResult nvrtcGetPTXSize(nvrtcProgram, size_t *);
nvrtcResult nvrtcGetPTX(nvrtcProgram, char *);
nvrtcResult nvrtcGetCUBINSize(nvrtcProgram, size_t *);
nvrtcResult nvrtcGetProgramLogSize(nvrtcProgram, size_t *);
nvrtcResult nvrtcGetProgramLog(nvrtcProgram, char *);
nvrtcResult nvrtcGetLoweredName(nvrtcProgram, const char *, const char **);
int fake_compiles(void);
/* Compile `src` for `arch` with kernel `name`; the outcome into `out`, one line of JSON. */
int build(const char *src, const char *arch, const char *name, char *out, size_t size) {
    nvrtcProgram p;
    const char *header = "#define HEADER 1", *include = "header.h";
    nvrtcCreateProgram(&p, src, "kernel.cu", 1, &header, &include);
    nvrtcAddNameExpression(p, name);
    const char *opts[] = {arch};
    int rc = nvrtcCompileProgram(p, 1, opts);
    size_t n = 0, cubin = 0, log_n = 0;
    char ptx[1024] = "", log[64] = "";
    const char *lowered = "";
    int ptx_rc = nvrtcGetPTXSize(p, &n);
    if (!ptx_rc) nvrtcGetPTX(p, ptx);
    int cubin_rc = nvrtcGetCUBINSize(p, &cubin);
    nvrtcGetProgramLogSize(p, &log_n);
    nvrtcGetProgramLog(p, log);
    int lowered_rc = nvrtcGetLoweredName(p, name, &lowered);
    snprintf(out, size, "{\"rc\": %d, \"ptx_rc\": %d, \"ptx\": \"%s\", \"ptx_size\": %zu, \"cubin_rc\": %d, "
             "\"log\": \"%s\", \"lowered_rc\": %d, \"lowered\": \"%s\", \"compiles\": %d}",
             rc, ptx_rc, ptx, n, cubin_rc, log, lowered_rc, lowered_rc ? "" : lowered, fake_compiles());
    nvrtcDestroyProgram(&p);
    return rc;
}
'''

DRIVER = '''
import ctypes, json, sys
from evaluators.gqa import compile_cache
client = ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_LOCAL)   # as Python loads MLX's library
out = ctypes.create_string_buffer(4096)
results = []
for src, arch in json.loads(sys.argv[2]):
    client.build(src.encode(), arch.encode(), b"gqa_kernel<4>", out, 4096)
    results.append(json.loads(out.value))
print(json.dumps({"results": results, "stats": compile_cache.stats()}))
'''

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def libs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("nvrtc")
    (d / "fake.c").write_text(FAKE_NVRTC)
    (d / "client.c").write_text(CLIENT)
    (d / "version.map").write_text("libnvrtc.so.13 { global: *; };\n")
    cc = ["cc", "-shared", "-fPIC", "-O1"]
    subprocess.run([*cc, "-Wl,-soname,libnvrtc.so.13", "-Wl,--version-script", str(d / "version.map"),
                    "-o", str(d / "libnvrtc.so.13"), str(d / "fake.c")], check=True)
    subprocess.run([*cc, "-o", str(d / "libclient.so"), str(d / "client.c"), "-L", str(d), "-l:libnvrtc.so.13"],
                   check=True)
    return d


def compile_in_a_process(libs: Path, cache: Path | None, *builds: tuple[str, str]) -> dict:
    """One process, as one candidate's: each build is (source, arch)."""
    env = {**os.environ, "LD_LIBRARY_PATH": str(libs), "PYTHONPATH": str(ROOT)}
    if cache is not None:
        extra, why = compile_cache.environment(str(cache), {})
        assert why == "on", why
        env.update(extra)
    done = subprocess.run([sys.executable, "-c", DRIVER, str(libs / "libclient.so"), json.dumps(builds)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


KERNEL = ("__global__ void k() {}", "--gpu-architecture=sm_90a")


def test_a_second_process_gets_the_first_one_s_compile_without_compiling(libs, tmp_path):
    first = compile_in_a_process(libs, tmp_path / "cache", KERNEL)
    second = compile_in_a_process(libs, tmp_path / "cache", KERNEL)
    assert first["results"][0]["compiles"] == 1 and second["results"][0]["compiles"] == 0
    assert first["stats"]["compile_cache_misses"] == 1 and second["stats"]["compile_cache_hits"] == 1
    # Everything MLX reads after a compile is what the real compile gave, result codes included.
    drop = {"compiles"}
    assert {k: v for k, v in second["results"][0].items() if k not in drop} == \
           {k: v for k, v in first["results"][0].items() if k not in drop}
    assert first["results"][0]["ptx"] == "ptx of [__global__ void k() {}] for [--gpu-architecture=sm_90a]"
    assert first["results"][0]["lowered"] == "_Zgqa_kernel<4>" and first["results"][0]["cubin_rc"] == 4


def test_any_changed_input_is_compiled_again_never_served_the_old_binary(libs, tmp_path):
    cache = tmp_path / "cache"
    compile_in_a_process(libs, cache, KERNEL)
    edited = ("__global__ void k() { /* edited, same name */ }", KERNEL[1])
    other_gpu = (KERNEL[0], "--gpu-architecture=sm_100a")
    later = compile_in_a_process(libs, cache, edited, other_gpu, KERNEL)
    assert [r["compiles"] for r in later["results"]] == [1, 2, 2]  # two misses, then the first kernel's hit
    assert "edited" in later["results"][0]["ptx"] and "sm_100a" in later["results"][1]["ptx"]
    assert later["stats"]["compile_cache_hits"] == 1 and later["stats"]["compile_cache_misses"] == 2


def test_a_failed_compile_is_not_kept_and_a_damaged_entry_is_a_miss(libs, tmp_path):
    cache = tmp_path / "cache"
    broken = ("#error no", KERNEL[1])
    for _ in range(2):
        failed = compile_in_a_process(libs, cache, broken)["results"][0]
        assert failed["rc"] == 6 and failed["compiles"] == 1 and failed["log"] == "error!"
    compile_in_a_process(libs, cache, KERNEL)
    [entry] = cache.glob("*.nvrtc")
    entry.write_bytes(entry.read_bytes()[:-5])  # a disk that filled, a writer killed mid-way
    again = compile_in_a_process(libs, cache, KERNEL)
    assert again["results"][0]["compiles"] == 1 and again["results"][0]["ptx"].startswith("ptx of")
    assert compile_in_a_process(libs, cache, KERNEL)["results"][0]["compiles"] == 0  # written again, whole


def test_without_the_cache_every_process_compiles(libs, tmp_path):
    runs = [compile_in_a_process(libs, None, KERNEL) for _ in range(2)]
    assert [r["results"][0]["compiles"] for r in runs] == [1, 1]
    assert runs[0]["stats"] == {}


def test_re_measures_compile_afresh_and_off_means_off(tmp_path):
    environ = {"XDG_CACHE_HOME": str(tmp_path)}
    assert compile_cache.choose("auto", environ) == (tmp_path / "gitevolve" / "nvrtc", "on")
    for purpose in ("remeasure", "promote"):
        assert compile_cache.choose("auto", {**environ, "GITEVOLVE_PURPOSE": purpose}) == \
               (None, f"off (a {purpose} compiles afresh)")
    assert compile_cache.environment("off", environ) == ({}, "off (--compile-cache off)")
    # The CPU backend never loads the library, nor builds it.
    assert compile_cache.for_candidate("cpu", "auto", environ) == (None, None)
    assert not (tmp_path / "gitevolve").exists()


def test_a_missing_compiler_leaves_the_cache_off_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    extra, why = compile_cache.environment(str(tmp_path / "cache"), {})
    assert extra == {} and why.startswith("off (") and "no-such-cc" in why
