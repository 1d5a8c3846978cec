"""`gitevolve init`: a `.gitevolve.yml` to edit, or a whole example committed as the run's base."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import yaml

import gitevolve
from gitevolve.config import CONFIG_NAME
from gitevolve.errors import GitevolveError
from gitevolve.store import Store

TEMPLATE = """\
# gitevolve settings: every key is documented in docs/config.md; unknown keys are errors.
files: [{files}]                # the evolvable files
evaluator:
  command: {command}            # prints one JSON object on its last line (docs/hooks.md)
  timeout: 300
islands: 5
iterations: 40
# Evaluations in parallel. If the hook times its program, two at once on one machine (one GPU,
# or a few cores) slow each other down and the scores say so: keep 1 unless the hook keeps its
# timing apart (the GQA hooks time one race at a time), or give each worker a GPU of its own:
{workers}
seed: 0
"""
ONE_WORKER = """workers: 1
# devices: [0, 1]              # worker k runs with CUDA_VISIBLE_DEVICES=devices[k] (and GITEVOLVE_WORKER=k)"""


def examples_root() -> Path:
    """Where the examples are: inside the installed package, or beside it in a source checkout."""
    package = Path(gitevolve.__file__).parent
    for root in (package / "_bundled", package.parent):
        if (root / "examples").is_dir():
            return root
    raise GitevolveError("the bundled examples are missing from this installation of gitevolve")


def available_examples() -> list[str]:
    return sorted(p.name for p in (examples_root() / "examples").iterdir() if (p / CONFIG_NAME).is_file())


def write_template(store: Store, files: list[str], command: str | None) -> Path:
    target = store.root / CONFIG_NAME
    if target.exists():
        raise GitevolveError(f"{CONFIG_NAME} already exists: edit it, or remove it to start over")
    target.write_text(TEMPLATE.format(files=", ".join(files) or "CHANGE-ME.py", command=command or "python evaluate.py",
                                      workers=_workers_for(_gpus())))
    return target


def _gpus() -> int:
    """NVIDIA GPUs here, as `nvidia-smi -L` lists them (0 without one, or without the tool)."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return 0
    try:
        listed = subprocess.run([tool, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in listed.splitlines())


def _workers_for(gpus: int) -> str:
    if gpus < 2:
        return ONE_WORKER
    return (f"workers: {gpus}                     # one per GPU that nvidia-smi found here, each timed on its own:\n"
            f"devices: [{', '.join(map(str, range(gpus)))}]")


def add_example(store: Store, name: str) -> tuple[list[str], str | None]:
    """Copy example `name` (and the hooks its config runs) into the repository and commit them.

    Returns the paths and the new commit, or None when they were already committed as they are.
    """
    root = examples_root()
    source = root / "examples" / name
    if not (source / CONFIG_NAME).is_file():
        raise GitevolveError(f"no example {name!r}: choose one of {', '.join(available_examples())}")
    copies = {
        p.relative_to(source).as_posix(): p
        for p in sorted(source.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and p.name != "README.md"
    }
    for hook in _hooks_run_by(source / CONFIG_NAME):
        copies[hook] = root / hook
    for rel, src in copies.items():
        if not src.is_file():
            raise GitevolveError(f"example {name!r} needs {rel}, which this installation lacks")
        target = store.root / rel
        if target.exists() and target.read_bytes() != src.read_bytes():
            raise GitevolveError(f"{rel} already exists here: `gitevolve init --example {name}` will not overwrite it")
    for rel, src in copies.items():
        target = store.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(src.read_bytes())
        target.chmod(src.stat().st_mode & 0o777)
    paths = sorted(copies)
    store.git("add", "--", *paths)
    if not store.git("diff", "--cached", "--name-only", "--", *paths).strip():
        return paths, None  # already committed as they are: nothing to do
    try:
        store.git("commit", "--quiet", "-m", f"Add the {name} example for gitevolve", "-m",
                  f"Copied by `gitevolve init --example {name}`: the program to evolve, its evaluator hook and "
                  f"{CONFIG_NAME}. This commit is the run's base.", "--", *paths)
    except GitevolveError as e:
        if "identity unknown" in str(e) or "tell me who you are" in str(e):
            raise GitevolveError("git does not know who you are, so the example (copied and staged) was not committed: "
                                 "run `git config user.name NAME` and `git config user.email EMAIL`, then "
                                 f"`gitevolve init --example {name}` again") from None
        raise
    return paths, store.head_commit() or ""


def _hooks_run_by(config: Path) -> list[str]:
    evaluator = (yaml.safe_load(config.read_text()) or {}).get("evaluator", {})
    commands = [evaluator.get("command") or ""] + [s.get("command", "") for s in evaluator.get("stages") or []]
    return sorted({word for c in commands for word in shlex.split(c) if word.startswith("hooks/")})
