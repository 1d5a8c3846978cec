"""The messages sent to the model for one parent, built from git and filled into templates.

System message: the config's (hardware, goals, baseline) inside `system.txt`. User message
(`user.txt`): the task; the parent's code, score and metrics (from its note); what the evaluator
reported for it (artifacts); its lineage with score changes; what was already tried from it,
refused replies included; other candidates as diffs; how to reply (`diff.txt` or `rewrite.txt`).
Code is shown in full only for the parent: everything else is a subject, a score or a diff,
which is what keeps a kernel's prompt complete without bloating it.

Templates are `string.Template` files ($name), because kernel code is full of braces. A
directory named in `llm.prompt.templates` overrides any of them; a placeholder that does not
exist there is an error when the run starts, not a silent gap in every prompt.
"""

from __future__ import annotations

import json
import re
import statistics
import string
from dataclasses import dataclass
from pathlib import Path

from gitevolve.config import Config, PromptConfig
from gitevolve.errors import GitevolveError
from gitevolve.llm import history, structured
from gitevolve.llm.edits import rewrite_targets
from gitevolve.mutate import MutationRejected, Observed, Program, tunables
from gitevolve.mutate.blocks import has_blocks
from gitevolve.population import number
from gitevolve.store import Store

DEFAULTS = Path(__file__).parent / "templates"
PLACEHOLDERS = {
    "system.txt": ("system_message",),
    "user.txt": ("task", "program", "tunables", "artifacts", "lineage", "attempts", "others", "format"),
    "diff.txt": (),
    "rewrite.txt": ("targets",),
    "json.txt": ("example",),
}
LANGUAGES = {".py": "python", ".metal": "metal", ".cu": "cuda", ".cuh": "cuda", ".cpp": "cpp", ".cc": "cpp",
             ".h": "cpp", ".hpp": "cpp", ".c": "c", ".rs": "rust", ".js": "javascript", ".ts": "typescript"}
MAX_METRICS = 40
METRIC_CHARS = 200
REASON_CHARS = 200
# A safe estimate where no tokenizer is asked: code and English run 3.5 to 4.5 characters a
# token in the tokenizers of Llama, Qwen and SmolLM2; 3 leaves room for the worst of them.
CHARS_PER_TOKEN = 3.0
# What a prompt gives up, in turn, until it fits the model's context: other candidates first, then
# the history, then metrics and artifacts. The parent's code and the reply's format always stay.
SHRINK = (
    {},
    {"inspirations": False, "other_islands": 0, "diff_lines": 20},
    {"inspirations": False, "other_islands": 0, "lineage": 2, "attempts": 2},
    {"inspirations": False, "other_islands": 0, "lineage": 2, "attempts": 2, "artifact_chars": 600, "metrics": 8},
    {"inspirations": False, "other_islands": 0, "lineage": 0, "attempts": 0, "artifact_chars": 0, "metrics": 0,
     "tunables": False},
)


def tokens(messages: list[dict]) -> int:
    """The prompt's tokens, estimated from its characters (a little per message for the chat template)."""
    return sum(int(len(m["content"]) / CHARS_PER_TOKEN) + 8 for m in messages)


def load_templates(root: Path, folder: str | None) -> dict[str, str]:
    texts = {name: (DEFAULTS / name).read_text() for name in PLACEHOLDERS}
    if folder:
        where = root / folder
        if not where.is_dir():
            raise GitevolveError(f"llm.prompt.templates: {folder!r} is not a directory of the repository")
        for path in sorted(where.glob("*.txt")):
            if path.name not in PLACEHOLDERS:
                raise GitevolveError(f"{folder}/{path.name}: not a template gitevolve uses ({', '.join(PLACEHOLDERS)})")
            texts[path.name] = path.read_text()
    for name, text in texts.items():
        fill(name, text, {key: "x" for key in PLACEHOLDERS[name]})  # fails now, not in the middle of a run
    return texts


def fill(name: str, text: str, values: dict[str, str]) -> str:
    lines = []
    for line in text.splitlines():
        m = re.fullmatch(r"\s*\$\{?(\w+)\}?\s*", line)
        if not (m and m.group(1) in values and not values[m.group(1)].strip()):
            lines.append(line)  # a line holding only an empty section goes, so it leaves no gap
    # Blank runs are collapsed in the template, before substitution: never inside the code.
    template = string.Template(re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n")
    try:
        return template.substitute(values)
    except KeyError as e:
        raise GitevolveError(f"template {name}: unknown placeholder ${e.args[0]} (known: "
                             f"{', '.join('$' + k for k in PLACEHOLDERS[name]) or 'none'})") from None
    except ValueError as e:
        raise GitevolveError(f"template {name}: {e} (write $$ for a dollar sign)") from None


@dataclass(frozen=True)
class Neighbours:
    """The run around a parent, from its refs: the base and each island's champion."""

    base: history.Entry | None
    champions: dict[int, history.Entry]


class Prompts:
    def __init__(self, store: Store, config: Config) -> None:
        self.store, self.config = store, config
        self.settings: PromptConfig = config.llm.prompt if config.llm else PromptConfig()
        self.edit_format = config.llm.edit_format if config.llm else "diff"
        self.templates = load_templates(store.root, self.settings.templates)

    def messages(self, parent: Program, inspirations: list[Program], feedback: list[dict],
                 tried: list[Observed] | None = None, room: int | None = None) -> list[dict]:
        """`tried`: the island's scored candidates, for the table of what each tunable's values scored.
        `room`: the tokens the prompt may take; history, inspirations, metrics and artifacts are cut,
        in that order, until it fits (the parent's code and the reply format never are)."""
        for cut in SHRINK if room is not None else SHRINK[:1]:
            messages = self._messages(parent, inspirations if cut.get("inspirations", True) else [], feedback,
                                      tried if cut.get("tunables", True) else [],
                                      self.settings.model_copy(update={k: v for k, v in cut.items() if k in PromptConfig.model_fields}),
                                      cut.get("metrics", MAX_METRICS))
            if room is None or tokens(messages) <= room:
                break
        return messages

    def _messages(self, parent: Program, inspirations: list[Program], feedback: list[dict], tried: list[Observed],
                  s: PromptConfig, metrics: int) -> list[dict]:
        sha = parent.candidate.sha
        lineage = history.lineage(self.store, sha, s.lineage)
        note = lineage[0].note if lineage and lineage[0].sha == sha else None
        around = self._neighbours()
        island = (note or {}).get("island", parent.candidate.island)
        user = fill("user.txt", self.templates["user.txt"], {
            "task": self._task(parent),
            "program": self._program(parent, note, island, around, metrics),
            "tunables": tunables_table(parent, tried),
            "artifacts": self._artifacts(note, s),
            "lineage": self._lineage(lineage),
            "attempts": self._attempts(sha, parent.candidate.score, feedback if s.attempts else [], s),
            "others": self._others(parent, inspirations, island, around, s),
            "format": self._format(parent),
        })
        system = fill("system.txt", self.templates["system.txt"], {"system_message": s.system_message.strip()})
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def _neighbours(self) -> Neighbours:
        state = self.store.ref_state()
        entries = history.commits(self.store, [s for s in [state.base, *state.islands.values()] if s])
        return Neighbours(entries.get(state.base or ""), {k: entries[s] for k, s in state.islands.items() if s in entries})

    def _task(self, parent: Program) -> str:
        if any(has_blocks(text) for text in parent.files.values()):
            where = ("Only the lines between EVOLVE-BLOCK-START and EVOLVE-BLOCK-END may change; "
                     "an edit anywhere else is refused.")
        else:
            where = "Any line of these files may change."
        return ("Improve the program below. An evaluator scores every candidate, higher is better; a candidate "
                f"that fails its checks scores nothing. {where}")

    def _program(self, parent: Program, note: dict | None, island: int | None, around: Neighbours, most: int) -> str:
        c = parent.candidate
        where = "the base" if island is None else f"island {island}"
        lines = [f"# Current program: commit {c.sha[:10]} ({where})", ""]
        if note is None:
            lines.append("Not evaluated yet.")
        else:
            facts = []
            if around.base is not None and around.base.sha != c.sha:
                facts.append(f"base {_score(around.base.score)}")
            best = around.champions.get(island) if island is not None else None
            if best is not None and best.sha != c.sha:
                facts.append(f"best on island {island} {_score(best.score)} ({best.sha[:10]})")
            said = f" ({'; '.join(facts)})" if facts else ""
            lines.append(f"Status {note.get('status')}, score {_score(number(note.get('score')))}{said}.")
            metrics = note.get("metrics") or {}
            if metrics and most:
                lines += ["", "Metrics:"] + [f"- {k}: {_short(v, METRIC_CHARS)}" for k, v in list(sorted(metrics.items()))[:most]]
        for path, text in parent.files.items():
            fence = "````" if "```" in text else "```"
            lines += ["", f"## {path}", "", f"{fence}{LANGUAGES.get(Path(path).suffix, '')}", text.rstrip("\n"), fence]
        return "\n".join(lines)

    def _artifacts(self, note: dict | None, s: PromptConfig) -> str:
        artifacts = dict((note or {}).get("artifacts") or {})
        stdout = artifacts.get("stdout", "").rstrip().rsplit("\n", 1)
        if stdout[-1].lstrip().startswith("{"):  # the hook's result line: its metrics are shown above
            artifacts["stdout"] = stdout[0] if len(stdout) > 1 else ""
        shown = {k: v for k, v in sorted(artifacts.items()) if isinstance(v, str) and v.strip()}
        if not shown or s.artifact_chars == 0:
            return ""
        lines = ["# What the evaluator reported for this program"]
        if (note or {}).get("reason"):
            lines += ["", f"Reason: {note['reason']}"]
        for name, text in shown.items():
            lines += ["", f"## {name}", "", "```", _clip(text.strip("\n"), s.artifact_chars), "```"]
        return "\n".join(lines)

    def _lineage(self, entries: list[history.Entry]) -> str:
        if len(entries) < 2:
            return ""
        lines = ["# How this program came about (newest first; score, and its change from the line below)", ""]
        for entry, older in zip(entries, entries[1:] + [None]):
            change = ""
            if older is not None and entry.score is not None and older.score is not None:
                change = f" ({entry.score - older.score:+.4g})"
            label = " (base)" if entry.seed and older is None else ""
            lines.append(f"- {entry.sha[:10]}  {_outcome(entry)}{change}  {entry.subject}{label}")
        return "\n".join(lines)

    def _attempts(self, sha: str, score: float | None, feedback: list[dict], s: PromptConfig) -> str:
        tried = history.children(self.store, sha, s.attempts) if s.attempts else []
        if not tried and not feedback:
            return ""
        lines = ["# Already tried from this program (do not repeat these)", ""]
        for entry in tried:
            change = f" ({entry.score - score:+.4g})" if entry.score is not None and score is not None else ""
            lines.append(f"- {entry.sha[:10]}  {_outcome(entry)}{change}  {entry.subject}")
        for refused in feedback:
            lines.append(f"- a reply that could not be applied ({refused.get('model')}): {refused.get('reason')}")
        return "\n".join(lines)

    def _others(self, parent: Program, inspirations: list[Program], island: int | None, around: Neighbours,
                s: PromptConfig) -> str:
        seen, blocks = {parent.candidate.sha}, []
        mine = [(p.candidate.sha, "from this island", p.candidate.score, p.candidate.subject) for p in inspirations]
        rivals = sorted(((k, e) for k, e in around.champions.items() if k != island and e.score is not None),
                        key=lambda ke: (-(ke[1].score or 0.0), ke[0]))
        theirs = [(e.sha, f"best of island {k}", e.score, e.subject) for k, e in rivals]
        for picks, limit in ((mine, len(mine)), (theirs, s.other_islands)):
            shown = 0
            for sha, label, score, subject in picks:
                if shown == limit or sha in seen:
                    continue
                seen.add(sha)
                patch = history.diff(self.store, parent.candidate.sha, sha, list(parent.files), s.diff_lines)
                if not patch.strip():
                    continue  # the same code: nothing to learn from it
                shown += 1
                change = f" ({score - parent.candidate.score:+.4g})" if score is not None and parent.candidate.score is not None else ""
                blocks += ["", f"## {sha[:10]}, {label}: score {_score(score)}{change}: {subject}", "", "```diff", patch, "```"]
        if not blocks:
            return ""
        return "\n".join(["# Other candidates, as diffs from the current program"] + blocks)

    def _format(self, parent: Program) -> str:
        if self.edit_format == "diff":
            return fill("diff.txt", self.templates["diff.txt"], {})
        if self.edit_format == "json":
            return fill("json.txt", self.templates["json.txt"], {"example": structured.example(parent.files)})
        targets = [f"{path} lines {r[0] + 1}-{r[1] + 1}" if r else f"all of {path}" for path, r in rewrite_targets(parent.files)]
        what = f"the EVOLVE-BLOCK ({targets[0]})" if len(targets) == 1 else f"the {len(targets)} EVOLVE-BLOCKs ({', '.join(targets)})"
        return fill("rewrite.txt", self.templates["rewrite.txt"], {"targets": what})


def tunables_table(parent: Program, tried: list[Observed]) -> str:
    """What each live tunable's values have scored on the island: how often tried (failures among
    them), the best and the median score. One line per tunable: a compact view of what a search has
    learned, where the lineage shows only one path."""
    try:
        found, alive = tunables.declared(parent.files)
    except MutationRejected:
        return ""
    if not alive or not tried:
        return ""
    lines = ["# The tunables, as this island has tried them", "",
             f"Per value: candidates tried (failed), best score, median score; over {len(tried)} scored candidates. "
             "The current program's value is marked *. You may add a tunable or widen a tunable's choices "
             "(`NAME = VALUE  # gitevolve: choices=[...]`, with `when=...` for one that matters only under "
             "another's value): the built-in search explores them.", ""]
    key_of = {(t.path, t.name): k for t, k in zip(found, tunables.keys(found))}
    for t in alive:
        key = key_of[(t.path, t.name)]
        cells = []
        for value in t.choices:
            scores = [o.score for o in tried if o.settings.get(key) == value]
            ok = [x for x in scores if x is not None]
            mark = "*" if value == t.value else ""
            if not scores:
                cells.append(f"{value!r}{mark}: -")
                continue
            failed = f" ({len(scores) - len(ok)})" if len(ok) < len(scores) else ""
            best = f", {_score(max(ok))}, {_score(statistics.median(ok))}" if ok else ""
            cells.append(f"{value!r}{mark}: {len(scores)}{failed}{best}")
        lines.append(f"- {key}: " + " | ".join(cells))
    return "\n".join(lines)


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _outcome(entry: history.Entry) -> str:
    if entry.note is None:
        return "not evaluated"
    if entry.score is not None and entry.note.get("status") == "ok":
        return f"score {_score(entry.score)}"
    reason = " ".join(str(entry.note.get("reason") or "").split())[:REASON_CHARS]
    return f"{entry.note.get('status', 'failed')}" + (f" ({reason})" if reason else "")


def _short(value: object, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _clip(text: str, limit: int) -> str:
    """Head and tail: a compiler's first error is at the head, a crash's traceback at the tail."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}"
