"""`.gitevolve.yml`: the run's settings, declared once and checked on load.

Every key is known: an unknown key, a wrong type or a missing file is a `GitevolveError`
whose one line names the key (OpenEvolve silently ignored unknown keys, so a typo meant
a setting that never applied). Command-line flags are merged in before validation, so
they are checked by the same rules.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gitevolve.errors import GitevolveError
from gitevolve.evaluate import Stage

CONFIG_NAME = ".gitevolve.yml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class StageConfig(_Section):
    name: str = Field(min_length=1)
    command: str = Field(min_length=1)
    timeout: float = Field(default=300.0, gt=0)
    threshold: float | None = None
    # Relative to the island's champion: the stage must score at least this share of the
    # champion's score at this stage, or the candidate is rejected before the later stages.
    within: float | None = Field(default=None, gt=0, le=1)


class EvaluatorConfig(_Section):
    command: str | None = Field(default=None, min_length=1)
    timeout: float = Field(default=300.0, gt=0)
    retries: int = Field(default=2, ge=0, le=10)
    stages: list[StageConfig] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_way_to_say_it(self) -> EvaluatorConfig:
        if (self.command is None) == (self.stages is None):
            raise ValueError("give either 'command' (one stage) or 'stages' (a list), not both or neither")
        if self.stages and len({s.name for s in self.stages}) != len(self.stages):
            raise ValueError("stage names must be unique")
        return self

    def stage_list(self) -> list[Stage]:
        if self.stages is None:
            return [Stage(name="main", command=self.command or "", timeout=self.timeout)]
        return [Stage(s.name, s.command, s.timeout, s.threshold, s.within) for s in self.stages]


class SelectionConfig(_Section):
    elite: float = Field(default=0.2, ge=0, le=1)
    exploitation: float = Field(default=0.5, ge=0, le=1)
    exploration: float = Field(default=0.3, ge=0, le=1)
    inspirations: int = Field(default=2, ge=0, le=20)

    @model_validator(mode="after")
    def _ratios_sum_to_one(self) -> SelectionConfig:
        total = self.elite + self.exploitation + self.exploration
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"elite + exploitation + exploration must sum to 1 (they sum to {total:g})")
        return self


class MigrationConfig(_Section):
    interval: int = Field(default=4, ge=1)
    rate: float = Field(default=0.2, gt=0, le=1)
    topology: Literal["ring", "random"] = "ring"


class FeatureConfig(_Section):
    name: str = Field(min_length=1)
    bins: int = Field(default=6, ge=1, le=100)
    range: list[float] = Field(min_length=2, max_length=2)

    @model_validator(mode="after")
    def _range_is_ordered(self) -> FeatureConfig:
        if not self.range[0] < self.range[1]:
            raise ValueError(f"range must be [low, high] with low < high, got {self.range}")
        return self


class MutationConfig(_Section):
    # auto: the model when an llm section is there, else search. search: a model of the scores
    # so far picks the tunables (mutate/search.py); tunables: one or two of them changed at random.
    operator: Literal["auto", "search", "tunables", "llm"] = "auto"
    sampler: Literal["tpe", "random"] = "tpe"  # search's: Optuna's TPE, or random search to compare with
    startup: int = Field(default=10, ge=1, le=1000)  # search's settings drawn at random before TPE models them
    max_changes: int = Field(default=2, ge=1, le=10)  # tunables'
    crossover: float = Field(default=0.3, ge=0, le=1)  # tunables'
    builtin_share: float = Field(default=0.0, ge=0, le=1)  # with a model: share of mutations left to the built-in operator
    # With a model: the mix of operators, a weight each (llm, search, tunables); instead of builtin_share.
    weights: dict[Literal["llm", "search", "tunables"], float] | None = None

    @field_validator("weights")
    @classmethod
    def _weights_add_up(cls, weights: dict | None) -> dict | None:
        if weights is None:
            return None
        if any(w < 0 for w in weights.values()) or not sum(weights.values()) > 0:
            raise ValueError(f"weights must be 0 or more, at least one above 0: got {weights}")
        return weights

    def mix(self) -> dict[str, float]:
        """With a model: each operator's share of the mutations (the built-in ones first, in a fixed order)."""
        if self.weights is None:
            builtin = "tunables" if self.operator == "tunables" else "search"
            return {builtin: self.builtin_share, "llm": 1 - self.builtin_share}
        total = sum(self.weights.values())
        return {name: self.weights.get(name, 0) / total for name in ("search", "tunables", "llm")}


class ChampionConfig(_Section):
    # A challenger about to take an island's branch is first evaluated again, interleaved with
    # the champion (C, I, I, C ...), this many times each; 0: the first draw decides. On a noisy
    # machine the best of many draws is partly the luckiest.
    remeasure: int = Field(default=2, ge=0, le=10)
    margin: float = Field(default=0.0, ge=0, le=1)  # by how much (relative) its re-measured mean must lead
    # A first score that leads the champion's by more than this (relative) takes the branch without
    # re-measuring: no noise seen moves a score that far (one setting's repeats differed by up to
    # 23% on the CPU), and early in a run nearly every improvement is that large. 0: always re-measure.
    sure: float = Field(default=0.25, ge=0)


ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LITERAL_KEY = ("a key written into .gitevolve.yml would land in a commit: put it in an environment variable "
               "and name the variable in llm.api_key_env")


def _refuse_literal_keys(raw: object) -> object:
    for name in ("api_key", "key", "token"):
        if isinstance(raw, dict) and name in raw:
            raise ValueError(f"{name}: {LITERAL_KEY}")
    return raw


class ModelConfig(_Section):
    name: str = Field(min_length=1)
    weight: float = Field(default=1.0, gt=0)
    temperature: float | None = Field(default=0.7, ge=0, le=2)  # null: not sent (models that fix it)
    max_tokens: int = Field(default=8192, ge=1)
    timeout: float = Field(default=300.0, gt=0)  # seconds per call
    # Tokens the model sees at once, prompt and reply; None: asked of a local server, else learnt
    # from the first reply that says the prompt was too long.
    context: int | None = Field(default=None, ge=256)

    _no_literal_key = model_validator(mode="before")(_refuse_literal_keys)


class PromptConfig(_Section):
    system_message: str = ""
    templates: str | None = Field(default=None, min_length=1)  # a directory whose *.txt override the defaults
    lineage: int = Field(default=8, ge=0, le=100)  # ancestors listed with their score changes
    attempts: int = Field(default=6, ge=0, le=50)  # earlier children of the parent listed
    other_islands: int = Field(default=1, ge=0, le=64)  # other islands' champions shown (0: islands stay isolated)
    artifact_chars: int = Field(default=3000, ge=0)  # per artifact, head and tail kept
    diff_lines: int = Field(default=80, ge=1)  # per inspiration


class LLMConfig(_Section):
    api_base: str = "https://api.openai.com/v1"
    api_key_env: str | None = "OPENAI_API_KEY"  # null: a local server that needs no key
    models: list[ModelConfig] = Field(min_length=1)
    edit_format: Literal["diff", "rewrite", "json"] = "diff"
    # How a json edit's schema is sent: auto tries json_schema (OpenAI, vLLM, llama.cpp, Ollama)
    # and falls back to json_object with a schema (llama-cpp-python's server) when it is refused.
    response_format: Literal["auto", "json_schema", "json_object"] = "auto"
    concurrency: int = Field(default=4, ge=1, le=64)
    retries: int = Field(default=4, ge=0, le=20)
    backoff: float = Field(default=2.0, gt=0)  # seconds before the first retry, doubled for each next one
    max_backoff: float = Field(default=60.0, gt=0)  # the longest wait, Retry-After included
    stop_after_failures: int = Field(default=8, ge=1)  # failed calls in a row that stop the run
    stop_after_refusals: int = Field(default=24, ge=1)  # refused replies in a row that stop it (a warning at half)
    prompt: PromptConfig = PromptConfig()

    _no_literal_key = model_validator(mode="before")(_refuse_literal_keys)

    @model_validator(mode="after")
    def _endpoint_and_variable(self) -> LLMConfig:
        if not re.match(r"^https?://[^\s]+$", self.api_base):
            raise ValueError(f"api_base must be an http(s) URL such as https://api.openai.com/v1, got {self.api_base!r}")
        if re.search(r"[?&](key|api_key|token)=", self.api_base):
            raise ValueError(f"api_base carries a key: {LITERAL_KEY}")
        if self.api_key_env is not None and not ENV_NAME.match(self.api_key_env):
            raise ValueError("api_key_env names the environment variable that holds the key (such as OPENAI_API_KEY), "
                             f"not the key itself: {LITERAL_KEY}")
        if len({m.name for m in self.models}) != len(self.models):
            raise ValueError("models: each model name once (give it a weight instead of listing it twice)")
        return self


class Config(_Section):
    files: list[str] = Field(min_length=1)
    evaluator: EvaluatorConfig
    islands: int = Field(default=5, ge=1, le=64)
    population_size: int = Field(default=30, ge=2)
    iterations: int = Field(default=40, ge=0)
    # One at a time unless asked: evaluations side by side on one machine time each other's load.
    workers: int = Field(default=1, ge=1, le=64)
    # Worker k's hook runs with CUDA_VISIBLE_DEVICES=devices[k % len(devices)]: a GPU per worker.
    devices: list[str] | None = Field(default=None, min_length=1)
    seed: int | None = 0
    selection: SelectionConfig = SelectionConfig()
    migration: MigrationConfig = MigrationConfig()
    features: list[FeatureConfig] = []
    mutation: MutationConfig = MutationConfig()
    champion: ChampionConfig = ChampionConfig()
    llm: LLMConfig | None = None

    @field_validator("devices", mode="before")
    @classmethod
    def _devices_as_text(cls, devices: object) -> object:
        if isinstance(devices, list):
            return [str(d) if isinstance(d, int) and not isinstance(d, bool) else d for d in devices]
        return devices

    @model_validator(mode="after")
    def _model_for_llm_operator(self) -> Config:
        if self.mutation.operator == "llm" and self.llm is None:
            raise ValueError("mutation.operator is 'llm' but no model is configured: add an llm section (docs/models.md)")
        if self.mutation.weights is not None:
            if self.llm is None:
                raise ValueError("mutation.weights mixes the model with the built-in operators: add an llm section "
                                 "(docs/models.md), or choose one built-in operator with mutation.operator")
            if self.mutation.builtin_share:
                raise ValueError("mutation: give weights or builtin_share, not both")
        return self


def load_config(root: Path, overrides: dict[str, Any] | None = None, name: str = CONFIG_NAME) -> Config:
    """Read, merge flags into, and validate the config at `root/name`; check the evolvable files exist."""
    path = root / name
    if not path.is_file():
        raise GitevolveError(f"no {name} in {root}: run `gitevolve init` to write one")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise GitevolveError(f"{name}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise GitevolveError(f"{name}: expected a mapping of settings at the top level")
    config = parse_config({**raw, **(overrides or {})}, name, flags=set(overrides or {}))
    for i, file in enumerate(config.files):
        if Path(file).is_absolute() or ".." in Path(file).parts:
            raise GitevolveError(f"{name}: files[{i}]: {file!r} must be a path inside the repository")
        if not (root / file).is_file():
            raise GitevolveError(f"{name}: files[{i}]: {file!r} does not exist")
    return config


def parse_config(raw: dict[str, Any], name: str = CONFIG_NAME, flags: set[str] = frozenset()) -> Config:
    """The config in `raw`; its first problem as one line, blaming the file, or the command-line
    flag where the bad value came from one of `flags` (top-level keys given as --key)."""
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        problem = e.errors()[0]
        top = str(problem["loc"][0]) if problem["loc"] else ""
        if top in flags:
            raise GitevolveError(f"--{top}: {_first_problem(e).split(': ', 1)[1]}") from None
        raise GitevolveError(f"{name}: {_first_problem(e)}") from None


def _first_problem(error: ValidationError) -> str:
    problem = error.errors()[0]
    key = ".".join(str(part) for part in problem["loc"] if part != "[key]") or "(top level)"  # pydantic marks a bad dict key so
    if problem["type"] == "extra_forbidden":
        return f"{key}: unknown key (see docs/config.md for the known ones)"
    if problem["type"] == "missing":
        return f"{key}: required key is missing"
    message = problem["msg"].removeprefix("Value error, ")
    if problem["type"] == "value_error" or "input" not in problem:
        return f"{key}: {message}"
    return f"{key}: {message} (got {problem['input']!r})"
