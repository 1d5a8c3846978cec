"""The `json` edit format: a reply the server's decoder is held to, so even a small model's applies.

llama.cpp, vLLM, Ollama and OpenAI can constrain decoding to a JSON schema (`response_format`).
The schema is made per parent: a list of tunables to set, each live tunable of the program by
name with a value from its declared choices other than the current one, so a reply that names a
tunable always changes it; code edits are search/replace pairs, found as the diff format finds them.
SmolLM2-135M closed no SEARCH/REPLACE block in 41 plain-text replies; held to this schema, its
replies parse by construction, and what remains to refuse is what the evaluator must judge.

Servers differ in how the schema is passed: OpenAI, vLLM and llama.cpp's own server take
`{"type": "json_schema", "json_schema": {...}}`; llama-cpp-python's server takes only
`{"type": "json_object", "schema": {...}}`. `response_format(schema, style)` writes either.
"""

from __future__ import annotations

import json

from gitevolve.mutate import MutationRejected, tunables

SUMMARY_CHARS = 100
RATIONALE_CHARS = 600
MAX_EDITS = 3
MAX_SETTINGS = 3


def reject(kind: str, detail: str) -> MutationRejected:
    return MutationRejected(f"{kind}: {detail}")


def schema(files: dict[str, str], known: list[dict] | None = None) -> dict:
    """The JSON schema a reply for a program with these files must follow. `known`: the settings the
    island has evaluated; a value that would rebuild one of them by itself is not offered, so a model
    cannot ask for what was already measured (SmolLM2-135M asked for one setting 14 times in a row).

    Where the program declares tunables, a reply must set at least one of them: SmolLM2-135M,
    free to leave them out, gave empty replies or invented SEARCH texts in 7 of 8 calls on the
    gqa-mlx example. Code edits may come besides; a program without tunables must give one."""
    try:
        found, alive = tunables.declared(files)
    except MutationRejected:  # a malformed declaration: code edits only (the run's start has said why)
        found, alive = [], []
    key_of = dict(zip(((t.path, t.name) for t in found), tunables.keys(found)))
    current = dict(zip(tunables.keys(found), (t.value for t in found)))
    seen = [k for k in known or [] if k.keys() == current.keys()]
    settings = []
    for t in alive:
        key = key_of[(t.path, t.name)]
        others = [c for c in t.choices if c != t.value and {**current, key: c} not in seen]
        if others:
            settings.append({"type": "object", "properties": {"name": {"const": key},
                                                              "value": {"enum": others}},
                             "required": ["name", "value"], "additionalProperties": False})
    edit = {"type": "object", "properties": {"search": {"type": "string"}, "replace": {"type": "string"}},
            "required": ["search", "replace"], "additionalProperties": False}
    properties = {
        "summary": {"type": "string", "maxLength": SUMMARY_CHARS},
        "rationale": {"type": "string", "maxLength": RATIONALE_CHARS},
    }
    if settings:
        properties["tunables"] = {"type": "array", "items": {"anyOf": settings}, "minItems": 1,
                                  "maxItems": min(MAX_SETTINGS, len(settings))}
    properties["edits"] = {"type": "array", "items": edit, "minItems": 0 if settings else 1, "maxItems": MAX_EDITS}
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def example(files: dict[str, str]) -> str:
    """The reply's shape, with placeholders and no real names: a small model copies a concrete
    example word for word (SmolLM2-135M set the example's tunable in 14 replies of 14)."""
    if "tunables" in schema(files)["properties"]:
        return ('{"summary": "...", "rationale": "...", "tunables": [{"name": "<a tunable>", "value": <one of its other '
                'choices>}], "edits": []}')
    return ('{"summary": "...", "rationale": "...", "edits": [{"search": "<the exact current lines>", '
            '"replace": "<the lines that replace them>"}]}')


def response_format(schema: dict, style: str) -> dict:
    """`schema` as the request's response_format, in the style the server takes."""
    if style == "json_object":
        return {"type": "json_object", "schema": schema}
    return {"type": "json_schema", "json_schema": {"name": "edit", "schema": schema, "strict": True}}


def parse(text: str) -> dict:
    """The reply's object, or a refusal saying what is wrong with it."""
    body = text.strip()
    if body.startswith("```"):  # a server that does not constrain may still fence it
        body = body.strip("`").removeprefix("json").strip()
    try:
        reply = json.loads(body, strict=False)  # a raw newline inside a string is still what the model meant
    except json.JSONDecodeError as e:
        raise reject("unparsable reply", f"not one JSON object ({e.msg} at character {e.pos})") from None
    if not isinstance(reply, dict):
        raise reject("unparsable reply", f"a JSON {type(reply).__name__}, not an object")
    asked = reply.get("tunables") or []
    if isinstance(asked, dict):  # {"NAME": value}: what a model writes where no schema holds it
        asked = [{"name": k, "value": v} for k, v in asked.items()]
    if not isinstance(asked, list) or not all(isinstance(a, dict) and "name" in a and "value" in a for a in asked):
        raise reject("unparsable reply", "`tunables` must be a list of {\"name\": ..., \"value\": ...} objects")
    if not isinstance(reply.get("edits") or [], list):
        raise reject("unparsable reply", "`edits` must be a list of {\"search\": ..., \"replace\": ...} objects")
    return {**reply, "tunables": {str(a["name"]): a["value"] for a in asked}}


def apply_tunables(files: dict[str, str], asked: dict) -> tuple[dict[str, str], dict]:
    """`files` with the asked tunables set; the changes, for the commit's subject."""
    found, alive = tunables.declared(files)
    by_key = dict(zip(tunables.keys(found), found))
    live = {(t.path, t.name) for t in alive}
    changes, lines = {}, {}
    for key, value in asked.items():
        t = by_key.get(key)
        if t is None:
            known = ", ".join(sorted(by_key)) or "none"
            raise reject("unknown tunable", f"{key!r} is not a tunable of the program (its tunables: {known})")
        if (t.path, t.name) not in live:
            raise reject("dead tunable", f"{key} does not matter under the program's other values ({t.when})")
        matched = [c for c in t.choices if c == value and type(c) is type(value)]
        if not matched:
            raise reject("value not a choice", f"{key} may be one of {list(t.choices)}, not {value!r}")
        if matched[0] != t.value:
            changes[t] = matched[0]
            lines.setdefault(t.path, {})[t.line] = matched[0]
    new = dict(files)
    for path, settings in lines.items():
        new[path] = tunables.apply(new[path], settings)
    return new, changes


def summary_and_rationale(reply: dict, changes: dict) -> tuple[str | None, str]:
    """The commit's subject and body. Where only tunables changed, the subject says exactly which
    (as every built-in operator words it), and the model's own summary goes into the body."""
    said = " ".join(str(reply.get("summary") or "").split())[:SUMMARY_CHARS] or None
    rationale = str(reply.get("rationale") or "").strip()[:RATIONALE_CHARS]
    if changes and not reply.get("edits"):
        body = "\n\n".join(part for part in (f"The model's summary: {said}" if said else "", rationale) if part)
        return tunables.subject(changes), body
    return said, rationale
