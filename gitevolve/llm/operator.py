"""The model-driven operator: prompt from git, one model call, the reply applied and checked.

It plugs into the loop like the built-in one (`propose(parent, inspirations, rng)`), and says
how many proposals the loop may ask of it at once (`concurrency`): model calls are slow, so a
batch's calls run together. A configurable share of mutations still goes to the built-in
operators (`mutation.weights`, or `builtin_share`), cheap local tuning between model calls, drawn
from the same seeded stream.

A reply that cannot become a candidate is refused here (so the loop commits nothing), counted
in the ledger under its model with the reason, and that reason is shown in the next prompt for
the same parent.
"""

from __future__ import annotations

import os
import random
import threading
from typing import Callable, Mapping

from gitevolve.config import Config, ModelConfig
from gitevolve.errors import GitevolveError
from gitevolve.llm import edits, structured
from gitevolve.llm.client import CallFailed, Client
from gitevolve.llm.ledger import Ledger
from gitevolve.llm.prompt import Prompts, tokens
from gitevolve.mutate import MutationRejected, Observed, Operator, Program, Proposal
from gitevolve.mutate.search import SearchOperator
from gitevolve.mutate.tunables import TunablesOperator
from gitevolve.store import Store


class ModelOperator:
    name = "llm"
    # A reply that rebuilds a program the island already has is asked again once, with the reason
    # in the prompt: a model call costs money and seconds, where the built-in operator's cost nothing.
    duplicate_attempts = 2

    def __init__(self, config: Config, client: Client, ledger: Ledger, prompts: Prompts,
                 builtins: dict[str, Operator] | None = None, say: Callable[[str], None] | None = None) -> None:
        assert config.llm is not None
        self.client, self.ledger, self.prompts = client, ledger, prompts
        self.edit_format = config.llm.edit_format
        self.say = say  # one line per model call: calls made and refused are never silence
        self.stop_after_refusals = config.llm.stop_after_refusals
        self._refused_in_a_row = 0
        self._overflowing: set[str] = set()  # models already warned that no prompt fits
        self._lock = threading.Lock()
        # The built-in operators' shares, in a fixed order; the rest is the model's.
        self.shares = {name: share for name, share in config.mutation.mix().items() if name != "llm" and share > 0}
        self.builtins = {name: op for name, op in (builtins or {}).items() if name in self.shares}
        self.share = sum(self.shares[name] for name in self.builtins)
        self.concurrency = config.llm.concurrency
        self.tried: dict[int, list[Observed]] = {}  # per island, every scored candidate (observe)

    def propose(self, parent: Program, inspirations: list[Program], rng: random.Random) -> Proposal:
        if self.share > 0:
            drawn = rng.random()
            for name, op in self.builtins.items():
                drawn -= self.shares[name]
                if drawn < 0:
                    try:
                        return op.propose(parent, inspirations, rng)
                    except MutationRejected:
                        break  # nothing the built-in operator can change here: the model's turn
        model = self.client.pick(rng)
        feedback, tried = self.ledger.feedback(parent.candidate.sha), self.tried.get(parent.island, [])
        room = self._room(model)
        messages = self.prompts.messages(parent, inspirations, feedback, tried, room)
        if room is not None and tokens(messages) > room and model.name not in self._overflowing:
            self._overflowing.add(model.name)
            self._tell(f"warning: the smallest prompt gitevolve can make for {model.name} is about {tokens(messages):,} "
                       f"tokens, over the {room:,} its context of {self.client.context(model):,} leaves beside the "
                       f"reply's: replies will be cut off. Serve the model with a longer context (llm.models[].context "
                       f"says it), or evolve a smaller EVOLVE-BLOCK")
        schema = structured.schema(parent.files, [o.settings for o in tried]) if self.edit_format == "json" else None
        try:
            reply = self.client.complete(model, messages, schema)
        except CallFailed as e:
            self.ledger.record(model.name, attempts=e.attempts, replied=False, failure=e.kind)
            self._tell(f"model {model.name}: failed, {e}")
            if e.stop is not None:
                raise GitevolveError(str(e.stop)) from None
            raise
        usage = {"attempts": reply.attempts, "prompt_tokens": reply.prompt_tokens,
                 "completion_tokens": reply.completion_tokens, "seconds": reply.seconds}
        calls = f"model {model.name}: {reply.seconds:.1f} s, {reply.prompt_tokens:,} -> {reply.completion_tokens:,} tokens"
        try:
            edit = edits.apply(reply.text, parent.files, self.edit_format)
        except MutationRejected as e:
            cut = self._cut_off(model, reply)
            reason = str(e) + cut
            self.ledger.record(model.name, **usage, replied=True, failure=reason.split(":")[0],
                               parent=parent.candidate.sha, reason=reason)
            self._tell(f"{calls}, refused: {reason.split(':')[0] + cut if cut else reason[:160]}")
            self._count_refusal(reason)
            raise MutationRejected(reason) from None
        self.ledger.record(model.name, **usage, replied=True, proposed=True)
        with self._lock:
            self._refused_in_a_row = 0
        self._tell(f"{calls}, applied: {edit.summary or 'no summary'}"[:200])
        meta = {"model": model.name, **usage, "finish_reason": reply.finish_reason, "edit_format": self.edit_format,
                "edits": edit.edits, "fuzzy_matches": edit.fuzzy}
        subject = edit.summary or f"Edit by {model.name} (the reply gave no summary)"
        return Proposal(edit.files, subject, edit.rationale, f"llm:{model.name}", meta)


    def _room(self, model: ModelConfig) -> int | None:
        """Tokens the prompt may take: the model's context less the reply's room, when the context is known."""
        context = self.client.context(model)
        if context is None:
            return None
        return max(context - min(model.max_tokens, context // 2), context // 4)

    def _cut_off(self, model: ModelConfig, reply) -> str:
        """Why a reply stopped early, in words that point at the remedy: llama.cpp clamps max_tokens
        to what is left of its context without saying so."""
        if reply.finish_reason != "length":
            return ""
        context = self.client.context(model)
        used = reply.prompt_tokens + reply.completion_tokens
        if context is not None and used >= context - 8:
            return (f" (the reply was cut off at the model's context window: {reply.prompt_tokens:,} prompt tokens left "
                    f"{reply.completion_tokens:,} of the {context:,} for the reply)")
        if reply.completion_tokens >= model.max_tokens:
            return f" (the reply was cut off at max_tokens, {model.max_tokens:,})"
        return (f" (the server cut the reply off at {reply.completion_tokens:,} tokens, under max_tokens "
                f"{model.max_tokens:,}: its context window, most likely; llm.models[].context sets it)")

    def _tell(self, line: str) -> None:
        if self.say is not None:
            self.say(line)

    def _count_refusal(self, reason: str) -> None:
        with self._lock:
            self._refused_in_a_row += 1
            n = self._refused_in_a_row
        limit = self.stop_after_refusals
        if n == max(limit // 2, 1) and n < limit:
            self._tell(f"warning: {n} model replies in a row were refused (the last: {reason[:120]}); the run stops at "
                       f"{limit} (llm.stop_after_refusals). `gitevolve status` counts them by kind.")
        if n >= limit:
            raise GitevolveError(f"{n} model replies in a row were refused (the last: {reason[:160]}): stopping. Try "
                                 f"edit_format: json where the server supports it, or a larger model "
                                 f"(llm.stop_after_refusals sets the limit)")

    def observe(self, island: int, seen: Observed) -> None:
        """Scores fill the prompt's table of the tunables, and teach the built-in operator's search,
        which takes its share of the mutations."""
        self.tried.setdefault(island, []).append(seen)
        for op in self.builtins.values():
            if hasattr(op, "observe"):
                op.observe(island, seen)

    def duplicate(self, parent: Program, proposal: Proposal) -> None:
        """The loop found `proposal`'s program already on the island: tell the next prompt for `parent`."""
        model = proposal.meta.get("model")
        if model:  # a built-in share proposal involved no model
            self.ledger.refused(model, failure="duplicate", parent=parent.candidate.sha,
                                reason=f"duplicate: \"{proposal.subject}\" gives a program this island has already "
                                       f"evaluated; propose a different change")


def builtin_operator(config: Config, name: str | None = None) -> Operator:
    """An operator that needs no model (`name`, else the config's): the search over tunables, or random changes of them."""
    m = config.mutation
    if (name or m.operator) == "tunables":
        return TunablesOperator(m.max_changes, m.crossover)
    return SearchOperator(m.sampler, config.seed, m.startup)


def operator_for(store: Store, config: Config, environ: Mapping[str, str] = os.environ,
                 say: Callable[[str], None] | None = None) -> Operator:
    """The operator a run uses: the model when one is configured (unless `mutation.operator` says a
    built-in one). `say` shows what the client retries, while it does."""
    if config.llm is None or config.mutation.operator in ("search", "tunables"):
        return builtin_operator(config)
    builtins = {name: builtin_operator(config, name) for name, share in config.mutation.mix().items()
                if name != "llm" and share > 0}
    return ModelOperator(config, Client(config.llm, environ, say=say), Ledger(store), Prompts(store, config), builtins, say)


def _builtin_words(config: Config, name: str | None = None) -> str:
    if (name or config.mutation.operator) == "tunables":
        return "the built-in tunables operator (random changes)"
    how = "random search" if config.mutation.sampler == "random" else "Optuna's TPE sampler"
    return f"the search operator ({how} over the declared tunables)"


def describe(operator: Operator, config: Config) -> str:
    """One line for the start of a run: who mutates."""
    if not isinstance(operator, ModelOperator) or config.llm is None:
        reason = "No language model is configured" if config.llm is None else f"mutation.operator is {config.mutation.operator!r}"
        return f"{reason}: mutating with {_builtin_words(config)}."
    total = sum(m.weight for m in config.llm.models)
    models = ", ".join(f"{m.name} ({m.weight / total:.0%})" for m in config.llm.models)
    line = f"Mutating with {models} at {config.llm.api_base} ({config.llm.edit_format} edits)"
    for name in operator.builtins:
        line += f"; {operator.shares[name]:.0%} of mutations by {_builtin_words(config, name)}"
    return line + "."
