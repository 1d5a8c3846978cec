"""A model's reply turned into new file contents, or a precise reason why it cannot be.

Three formats, chosen in the config: SEARCH/REPLACE blocks (`diff`, the default), a full
rewrite of each EVOLVE-BLOCK (`rewrite`), and a JSON object the server's decoder is held to
(`json`: tunables' new values and search/replace pairs, see `structured`). OpenEvolve skipped SEARCH texts it could not find and
accepted prose as code (their issue #241); here every such reply is refused. A refusal is a
`MutationRejected` whose message starts with a short kind (what the run's statistics count,
the text before the first colon) followed by what the model needs to hear to do better.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gitevolve.llm import structured
from gitevolve.mutate import MutationRejected
from gitevolve.mutate.blocks import END, START, check, has_blocks, regions

THINKING = re.compile(r"<think(?:ing)?>.*?</think(?:ing)?>", re.S | re.I)
SEARCH_START = re.compile(r"^[ \t]*<{5,9} ?SEARCH[ \t]*$", re.M)
REPLACE_END = re.compile(r"^[ \t]*>{5,9} ?REPLACE[ \t]*$", re.M)
BLOCK = re.compile(
    r"^[ \t]*<{5,9} ?SEARCH[ \t]*\n(?P<search>.*?)^[ \t]*={5,9}[ \t]*\n(?P<replace>.*?)^[ \t]*>{5,9} ?REPLACE[ \t]*$",
    re.M | re.S,
)
FENCE = re.compile(r"^[ \t]*```[\w+#.-]*[ \t]*\n(?P<code>.*?)^[ \t]*```[ \t]*$", re.M | re.S)
LABEL = r"^[#*_\s>-]*{name}[*_\s]*:[*_\s]*(?P<text>.*)$"
SUMMARY = re.compile(LABEL.format(name="summary"), re.I | re.M)
RATIONALE = re.compile(LABEL.format(name="rationale"), re.I | re.M)
RATIONALE_CHARS = 2000


@dataclass(frozen=True)
class Edit:
    files: dict[str, str]  # the files that change, with their new text
    summary: str | None  # the model's one-line summary, None when it gave none
    rationale: str
    edits: int  # SEARCH/REPLACE blocks or rewritten regions applied
    fuzzy: int  # of which found only by whitespace-tolerant matching


def reject(kind: str, detail: str) -> MutationRejected:
    return MutationRejected(f"{kind}: {detail}")


def apply(reply: str | None, files: dict[str, str], edit_format: str) -> Edit:
    """The edit a reply describes, applied to `files` (path -> text) and checked against the markers."""
    text = THINKING.sub("", reply or "").strip()
    if not text:
        raise reject("empty reply", "the reply had no text")
    if edit_format == "json":
        new, count, fuzzy, (summary, rationale) = _apply_json(text, files)
    else:
        new, count, fuzzy = _apply_diff(text, files) if edit_format == "diff" else _apply_rewrite(text, files)
        summary, rationale = _describe(text)
    changed = {path: body for path, body in new.items() if body != files[path]}
    if not changed:
        raise reject("edit changes nothing", "the new code is identical to the current program")
    for path, body in changed.items():
        try:
            check(path, files[path], body)
        except MutationRejected as e:
            raise reject("edit outside EVOLVE-BLOCK", f"{e}; only the lines between the markers may change") from None
        _check_code(path, files[path], body)
    return Edit(changed, summary, rationale, count, fuzzy)


def _check_code(path: str, old: str, new: str) -> None:
    """What is certain not to run is refused before any commit: an evaluation would only say so later.
    A small model pastes its SEARCH/REPLACE markers into a rewrite, or an artifact in place of code."""
    for marker in (SEARCH_START, REPLACE_END):
        if len(marker.findall(new)) > len(marker.findall(old)):
            raise reject("edit markers in the code", f"{path}: the new code holds SEARCH/REPLACE marker lines; "
                                                    f"give only the code itself")
    if not path.endswith(".py"):
        return
    try:
        compile(old, path, "exec")
    except (SyntaxError, ValueError):
        return  # the program itself does not parse: the evaluator, not this check, decides
    try:
        compile(new, path, "exec")
    except (SyntaxError, ValueError) as e:
        where = f" line {e.lineno}" if getattr(e, "lineno", None) else ""
        raise reject("code does not parse", f"{path}{where}: {getattr(e, 'msg', e)}; the reply must leave valid Python") from None


def _describe(text: str) -> tuple[str | None, str]:
    """The SUMMARY and RATIONALE lines, looked for in the prose before the first edit (not in code)."""
    text = text[: min((m.start() for m in (SEARCH_START.search(text), FENCE.search(text)) if m), default=len(text))]
    summary = None
    if m := SUMMARY.search(text):
        summary = m.group("text").strip() or next((line.strip() for line in text[m.end():].splitlines() if line.strip()), "")
        summary = summary.strip("*_` ") or None
    rationale = ""
    if m := RATIONALE.search(text):
        rest = text[m.start("text"):]
        after = SUMMARY.search(rest)
        rationale = rest[: after.start() if after else len(rest)].strip()
    return summary, rationale[:RATIONALE_CHARS]


# --- SEARCH/REPLACE --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Hit:
    path: str
    start: int  # character offsets in the file's current text
    end: int
    replacement: str


def _apply_diff(text: str, files: dict[str, str]) -> tuple[dict[str, str], int, int]:
    blocks = list(BLOCK.finditer(text))
    opened = len(SEARCH_START.findall(text))
    if not blocks:
        if opened:
            raise reject("unparsable reply", "a <<<<<<< SEARCH block is not closed by a ======= line and a >>>>>>> REPLACE line")
        raise reject("no edit in the reply", "expected SEARCH/REPLACE blocks (<<<<<<< SEARCH, the exact current lines, "
                                             "=======, the new lines, >>>>>>> REPLACE)")
    if opened > len(blocks):
        raise reject("unparsable reply", f"{opened - len(blocks)} of {opened} SEARCH blocks are not closed by "
                                         f"======= and >>>>>>> REPLACE lines")
    current, fuzzy = dict(files), 0
    for n, block in enumerate(blocks, 1):
        search, replace = block.group("search"), block.group("replace")
        if not search.strip():
            raise reject("empty SEARCH", f"block {n} has no SEARCH text: copy the lines to replace from the program")
        hit, tolerant = _locate(current, search, replace, n)
        fuzzy += tolerant
        body = current[hit.path]
        current[hit.path] = body[: hit.start] + hit.replacement + body[hit.end :]
    return current, len(blocks), fuzzy


def _locate(files: dict[str, str], search: str, replace: str, n: int) -> tuple[_Hit, bool]:
    """The one place SEARCH names: exactly, else ignoring trailing, else surrounding whitespace."""
    exact = [_Hit(path, i, i + len(search), replace) for path, body in files.items() for i in _find_all(body, search)]
    if len(exact) == 1:
        return exact[0], False
    if len(exact) > 1:
        raise _ambiguous(exact, n, "")
    for how in (str.rstrip, str.strip):
        hits = [hit for path, body in files.items() for hit in _find_lines(path, body, search, replace, how)]
        if len(hits) == 1:
            return hits[0], True
        if len(hits) > 1:
            raise _ambiguous(hits, n, " (ignoring whitespace)")
    raise reject("SEARCH not found", f"block {n}: {_nearest(files, search)}")


def _find_all(body: str, search: str) -> list[int]:
    """Where `search` occurs starting a line: `x = 1` inside `max = 1` is not a match."""
    found, i = [], body.find(search)
    while i >= 0:
        if i == 0 or body[i - 1] == "\n":
            found.append(i)
        i = body.find(search, i + 1)
    return found


def _find_lines(path: str, body: str, search: str, replace: str, how) -> list[_Hit]:
    lines = body.splitlines(keepends=True)
    wanted = search.splitlines()
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    hits = []
    for i in range(len(lines) - len(wanted) + 1):
        if all(how(lines[i + k].rstrip("\r\n")) == how(w) for k, w in enumerate(wanted)):
            region = lines[i : i + len(wanted)]
            new = _reindent(replace, region, wanted) if how is str.strip else replace
            if not region[-1].endswith("\n"):
                new = new.removesuffix("\n")
            hits.append(_Hit(path, offsets[i], offsets[i + len(wanted)], new))
    return hits


def _reindent(replace: str, region: list[str], wanted: list[str]) -> str:
    """REPLACE shifted by the indentation the file has and SEARCH lacked (or had too much of)."""
    pair = next(((line, w) for line, w in zip(region, wanted) if w.strip()), None)
    if pair is None:
        return replace
    have = pair[0][: len(pair[0]) - len(pair[0].lstrip())]
    said = pair[1][: len(pair[1]) - len(pair[1].lstrip())]
    out = []
    for line in replace.splitlines(keepends=True):
        if not line.strip():
            out.append(line)
        elif len(have) >= len(said):
            out.append(have[: len(have) - len(said)] + line)
        else:
            extra = len(said) - len(have)
            out.append(line[extra:] if line[:extra].isspace() else line.lstrip())
    return "".join(out)


def _ambiguous(hits: list[_Hit], n: int, how: str) -> MutationRejected:
    places = ", ".join(sorted({f"{h.path}" for h in hits}))
    return reject("SEARCH ambiguous", f"block {n}: its SEARCH text occurs {len(hits)} times{how} in {places}; "
                                      f"include more surrounding lines so that it names one place")


def _nearest(files: dict[str, str], search: str) -> str:
    """What tells the model where its SEARCH text went wrong: the first line that differs."""
    wanted = [w for w in search.splitlines()]
    first = next(w for w in wanted if w.strip())
    for path, body in files.items():
        lines = body.splitlines()
        for i, line in enumerate(lines):
            if line.strip() != first.strip():
                continue
            start = wanted.index(first)
            for k, w in enumerate(wanted[start:]):
                if i + k >= len(lines) or lines[i + k].strip() != w.strip():
                    got = lines[i + k].strip() if i + k < len(lines) else "(end of file)"
                    return (f"its first line matches {path}:{i + 1}, but SEARCH line {start + k + 1} `{w.strip()[:80]}` "
                            f"differs from the file's `{got[:80]}`; copy SEARCH lines exactly from the program")
    return f"`{first.strip()[:80]}` does not occur in any evolvable file; copy SEARCH lines exactly from the program"


# --- JSON (structured output) ------------------------------------------------------------------


def _apply_json(text: str, files: dict[str, str]) -> tuple[dict[str, str], int, int, tuple[str | None, str]]:
    reply = structured.parse(text)
    asked, pairs = reply.get("tunables") or {}, reply.get("edits") or []
    if not asked and not pairs:
        raise reject("no edit in the reply", "the reply changes no tunable and gives no edit: name a tunable with a "
                                             "new value, or give a search/replace pair")
    current, changes = structured.apply_tunables(files, asked)
    fuzzy = 0
    for n, pair in enumerate(pairs, 1):
        search, replace = (pair.get("search"), pair.get("replace")) if isinstance(pair, dict) else (None, None)
        if not isinstance(search, str) or not isinstance(replace, str):
            raise reject("unparsable reply", f"edit {n} must be an object with the strings `search` and `replace`")
        if not search.strip():
            raise reject("empty SEARCH", f"edit {n} has no search text: copy the lines to replace from the program")
        hit, tolerant = _locate(current, search, replace, n)
        fuzzy += tolerant
        body = current[hit.path]
        current[hit.path] = body[: hit.start] + hit.replacement + body[hit.end :]
    return current, len(changes) + len(pairs), fuzzy, structured.summary_and_rationale(reply, changes)


# --- full rewrite ------------------------------------------------------------------------------


def rewrite_targets(files: dict[str, str]) -> list[tuple[str, tuple[int, int] | None]]:
    """What a rewrite replaces, in order: each EVOLVE-BLOCK, or a whole file that has none."""
    return [(path, r) for path, body in files.items() for r in (regions(body) if has_blocks(body) else [None])]


def _apply_rewrite(text: str, files: dict[str, str]) -> tuple[dict[str, str], int, int]:
    codes = [m.group("code") for m in FENCE.finditer(text)]
    targets = rewrite_targets(files)
    if not codes:
        raise reject("no code in the reply", f"expected {len(targets)} fenced code block(s), one per EVOLVE-BLOCK, in order")
    if len(targets) == 1:
        codes = codes[-1:]  # the code comes last; earlier fences are snippets in the rationale
    elif len(codes) != len(targets):
        raise reject("wrong number of code blocks", f"expected {len(targets)} fenced code blocks, one per EVOLVE-BLOCK "
                                                    f"in the order shown, got {len(codes)}")
    new = dict(files)
    # Last region first, so the line numbers of earlier regions in the same file still hold.
    for (path, region), code in reversed(list(zip(targets, codes))):
        if not code.strip():
            raise reject("empty rewrite", f"the code block for {path} is empty")
        alone = sum(p == path for p, _ in targets) == 1
        new[path] = _splice(path, new[path], region, code, alone)
    return new, len(targets), 0


def _splice(path: str, body: str, region: tuple[int, int] | None, code: str, alone: bool) -> str:
    code = code if code.endswith("\n") else code + "\n"
    if region is None:
        return code
    if START in code:
        before, _, rest = code.partition(START)
        inside, marker, after = rest.partition(END)
        if not marker:
            raise reject("edit outside EVOLVE-BLOCK", f"{path}: the rewrite opens an EVOLVE-BLOCK it never closes")
        if before.rstrip(" #/*\t").strip() or after.split("\n", 1)[-1].strip():
            if not alone:
                raise reject("wrong rewrite", f"{path} has several EVOLVE-BLOCKs: give only the code between "
                                              f"the markers, one code block per EVOLVE-BLOCK")
            return code  # a whole file: the marker check decides whether its outside is intact
        code = inside.split("\n", 1)[1] if "\n" in inside else ""
        code = code[: code.rfind("\n") + 1]  # drop the comment leader before the END marker
        if not code.strip():
            raise reject("empty rewrite", f"the code block for {path} is empty between the markers")
    lines = body.splitlines(keepends=True)
    first, last = region
    return "".join(lines[:first]) + code + "".join(lines[last + 1 :])
