"""The `gitevolve` command: wires arguments to the modules that do the work.

Errors the user can fix arrive here as `GitevolveError` and leave as one line on stderr
with exit status 1; Ctrl-C leaves with 130 after the run has said what it kept.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from tabulate import tabulate

from gitevolve import __version__, loop, report, worktrees
from gitevolve.commands import init as init_command
from gitevolve.commands import promote as promote_command
from gitevolve.commands import runs as runs_command
from gitevolve.config import CONFIG_NAME, load_config
from gitevolve.errors import GitevolveError
from gitevolve.llm import operator as llm_operator
from gitevolve.llm import preview
from gitevolve.progress import for_console
from gitevolve.store import Store

app = typer.Typer(
    help="Evolve programs with git: every candidate a commit, every score a git note, every island a branch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(soft_wrap=True)  # piped output is not cut at 80 columns: scripts and logs read whole lines

RunOption = typer.Option("default", "--run", help="Name of the run (several runs can share a repository).")


@app.command()
def init(
    example: Optional[str] = typer.Option(None, help="Copy a bundled example (gqa-mlx, ...) with its hook and settings, and commit it as the run's base."),
    file: list[str] = typer.Option([], "--file", help="An evolvable file, for the written .gitevolve.yml (repeatable)."),
    evaluator: Optional[str] = typer.Option(None, help="The evaluator hook command, for the written .gitevolve.yml."),
) -> None:
    """Write a .gitevolve.yml to edit, or add an example (--example) and commit it."""
    store = Store(Path.cwd())
    if example:
        paths, sha = init_command.add_example(store, example)
        if sha is None:
            console.print(f"The {example} example is already committed here, unchanged: nothing to do. Next: gitevolve run",
                          highlight=False)
            return
        console.print(f"Added the {example} example ({', '.join(paths)}) and committed it as {sha[:10]}: "
                      f"this is the run's base. Next: gitevolve run", highlight=False)
    else:
        path = init_command.write_template(store, file, evaluator)
        console.print(f"Wrote {path.name}: set `files` and `evaluator.command`, commit it, then run `gitevolve run`. "
                      f"Examples: {', '.join(init_command.available_examples())}", highlight=False)


@app.command()
def run(
    islands: Optional[int] = typer.Option(None, help="Number of islands; existing islands are kept. "
                                          "(default: islands in .gitevolve.yml, else 5)"),
    iterations: Optional[int] = typer.Option(None, help="New candidates to make in this invocation. "
                                             "(default: iterations in .gitevolve.yml, else 40; none with --time alone)"),
    workers: Optional[int] = typer.Option(None, help="Evaluations in parallel, each in its own worktree. "
                                          "(default: workers in .gitevolve.yml, else 1)"),
    seed: Optional[int] = typer.Option(None, help="Seed for reproducible selection and built-in mutations. "
                                       "(default: seed in .gitevolve.yml, else 0)"),
    from_rev: Optional[str] = typer.Option(None, "--from", help="Start a new run, or the new islands, from this commit or ref."),
    time_budget: Optional[str] = typer.Option(None, "--time", help="Start no new candidate after this long (90s, 10m, 1.5h), and stop "
                                              "evaluations still running 10% later (they stay pending for the next run); "
                                              "without --iterations, go on until then."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Evaluate a starting commit that failed again "
                                      "(after fixing the hook or installing what it needed).", metavar=""),
    run_name: str = RunOption,
) -> None:
    """Evolve. Never touches the checkout, the index or the current branch; kill it at any moment, run it again to go on."""
    seconds = None if time_budget is None else duration(time_budget, "--time")
    store = Store(Path.cwd(), run_name)
    overrides: dict[str, Any] = {k: v for k, v in
                                 {"islands": islands, "iterations": iterations, "workers": workers, "seed": seed}.items()
                                 if v is not None}
    config = load_config(store.root, overrides)
    progress = for_console(console)
    operator = llm_operator.operator_for(store, config, say=progress.say)
    loop.refuse_uncommitted_config(store, CONFIG_NAME)
    progress.say(llm_operator.describe(operator, config))
    try:
        # With a time budget alone, the budget decides; with --iterations too, whichever comes first.
        count = None if seconds is not None and iterations is None else config.iterations
        stats = loop.run(store, config, operator, progress, islands=config.islands, iterations=count, from_rev=from_rev,
                         seconds=seconds, retry_failed=retry_failed)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    store.tidy()
    worktrees.remove_all(store)  # checkouts of the whole project per worker: made again on the next run
    board = report.leaderboard(store, report.population_of(store))
    best = max((r for r in board["islands"] if r["score"] is not None), key=lambda r: r["score"], default=None)
    skipped = ", ".join(f"{n} {kind}" for kind, n in sorted(stats.rejected.items()))
    taken = f", {stats.duplicates} took the result of the same program evaluated before" if stats.duplicates else ""
    taken += f", {stats.remeasured} re-measured challengers and champions head to head" if stats.remeasured else ""
    cut = f", {stats.cut} stopped at a stage's bar" if stats.cut else ""
    console.print(f"Done: {stats.evaluated} evaluated{taken} ({stats.failed} failed{cut}, {stats.migrations} migrations)"
                  + (f"; no candidate from: {skipped}" if skipped else "") + ".", highlight=False, soft_wrap=True)
    if best:
        versus = (report.gain_words(best["score"], board["base_score"], board["score_is"])
                  or f"base scored {report.format_score(board['base_score'])}")
        console.print(f"Best: {report.format_score(best['score'])} on {best['branch']} ({best['champion'][:10]}), {versus}"
                      + f". Next: `gitevolve promote{store.refs.flag}` measures it again beside the base and makes "
                        f"a pull-request branch; `gitevolve status{store.refs.flag}` shows every island.", highlight=False, soft_wrap=True)
    if stats.done and not stats.made:
        raise GitevolveError(f"no candidate was made: all {stats.done} mutations failed ({skipped}); `gitevolve status{store.refs.flag}` "
                             f"shows why (with a model: its refused replies, by reason)")


@app.command()
def runs() -> None:
    """List the runs in this repository: their base, islands and candidates."""
    store = Store(Path.cwd())
    rows = runs_command.summaries(store)
    if not rows:
        console.print("No run in this repository yet: start one with `gitevolve run`.", highlight=False)
        return
    typer.echo(tabulate([[r.name, r.base[:10], r.islands, r.candidates] for r in rows],
                        headers=["run", "base", "islands", "candidates"]))


@app.command()
def forget(
    name: str = typer.Argument(..., help="The run to drop (`gitevolve runs` lists them)."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask first.", metavar=""),
) -> None:
    """Drop a run: its refs, island branches and notes. The commits stay in git until it prunes them."""
    store = Store(Path.cwd(), name)
    if not yes and not typer.confirm(f"Forget run {name!r}: its island branches, pinned candidates and scores?"):
        raise typer.Exit(1)
    gone = runs_command.forget(store)
    console.print(f"Forgot run {gone.run!r} ({gone.refs} refs). Until git prunes the commits, these bring back its "
                  f"branches, base and scores:", highlight=False, soft_wrap=True)
    for ref, sha in gone.kept.items():
        typer.echo(f"  git update-ref {ref} {sha}")


def run_of(rev: str | None, run_name: str) -> str:
    """The run a revision names by its branch (gitevolve/NAME/island-2~3), where --run was left at its default."""
    m = re.match(r"^(?:refs/heads/)?gitevolve/([^/]+)/(?:island-\d+|promoted)\b", rev or "")
    return m.group(1) if m and run_name == "default" else run_name


def duration(text: str, flag: str) -> float:
    """Seconds in `text` such as 90s, 10m, 1.5h (a bare number is seconds)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise GitevolveError(f"{flag}: expected a duration such as 90s, 10m or 1.5h, got {text!r}")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


@app.command()
def status(
    json_output: bool = typer.Option(False, "--json", help="Print the leaderboard as JSON, for scripts.", metavar=""),
    top: int = typer.Option(5, help="Also list the best N candidates overall (0: none)."),
    run_name: str = RunOption,
) -> None:
    """Leaderboard across islands: each island's champion, its score and candidate counts."""
    store = Store(Path.cwd(), run_name)
    board = report.leaderboard(store, report.population_of(store), top)
    typer.echo(report.as_json(board) if json_output else report.render_leaderboard(board))


@app.command()
def show(
    rev: str = typer.Argument(..., help="The candidate: a commit, a branch such as gitevolve/island-2, HEAD~2 ..."),
    json_output: bool = typer.Option(False, "--json", help="Print only the note, as JSON.", metavar=""),
    run_name: str = RunOption,
) -> None:
    """One candidate: status, score, metrics, artifacts, and its diff against its parent."""
    run_name = run_of(rev, run_name)
    store = Store(Path.cwd(), run_name)
    note, patch = report.show(store, rev)
    typer.echo(report.as_json(note) if json_output else report.render_show(note, patch, run_name))


@app.command()
def prompt(
    rev: str = typer.Argument(..., help="The parent: a commit, a branch such as gitevolve/island-2, HEAD~2 ..."),
    json_output: bool = typer.Option(False, "--json", help="Print the messages as the JSON list sent to the endpoint.", metavar=""),
    run_name: str = RunOption,
) -> None:
    """The exact prompt a run would send to the model for this parent (nothing is sent)."""
    store = Store(Path.cwd(), run_name)
    messages = preview.messages(store, load_config(store.root), rev)
    typer.echo(report.as_json(messages) if json_output else preview.render(messages))


@app.command()
def promote(
    rev: Optional[str] = typer.Argument(None, help="The candidate to promote (default: the run's best)."),
    branch: Optional[str] = typer.Option(None, help="Branch to create (default: gitevolve/promoted, or gitevolve/<run>/promoted)."),
    repeats: int = typer.Option(3, min=0, help="Fresh evaluations of the winner and of the base, alternating, before promoting (0: trust the run's score)."),
    force: bool = typer.Option(False, "--force", help="Move the branch if it exists.", metavar=""),
    on_base: bool = typer.Option(False, "--on-base", help="Build on the run's base even where the evolvable files "
                                 "changed on the current branch since (the pull request would revert that).", metavar=""),
    signoff: bool = typer.Option(False, "--signoff", help="Add your Signed-off-by to the commit (as git commit -s).",
                                 metavar=""),
    run_name: str = RunOption,
) -> None:
    """The winner as one commit on the current branch (or the run's base), re-measured first; prints a pull-request description."""
    run_name = run_of(rev, run_name)
    store = Store(Path.cwd(), run_name)
    config = load_config(store.root)
    population = report.population_of(store)
    candidate = promote_command.winner(population, store, rev)
    if repeats:
        console.print(f"Re-measuring {candidate.sha[:10]} and the base, {repeats} evaluations each ...", highlight=False)
    done = promote_command.promote(store, config, population, candidate, branch=branch, repeats=repeats, force=force,
                                   on_base=on_base, signoff=signoff)
    for warning in done.warnings:
        Console(stderr=True).print(f"gitevolve: warning: {warning}", highlight=False, markup=False, soft_wrap=True)
    console.print(f"Branch {done.branch} ({done.commit[:10]}): the evolved files {done.where}. "
                  f"Push it and open a pull request with this description:\n", highlight=False, soft_wrap=True)
    typer.echo(done.body)


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", is_eager=True, help="Print gitevolve's version and exit.",
                                 callback=lambda shown: _print_version() if shown else None, metavar=""),
) -> None:
    """Evolve programs with git: every candidate a commit, every score a git note, every island a branch."""


def _print_version() -> None:
    typer.echo(f"gitevolve {__version__}")
    raise typer.Exit()


# Typer vendors click (0.2x) or uses it: take the error class from typer's own BadParameter.
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def main() -> None:
    err = Console(stderr=True)
    try:
        code = app(standalone_mode=False)
    except GitevolveError as e:
        err.print(f"gitevolve: {e}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(1)
    except ClickException as e:  # a flag or argument the command does not take: one line, like every error
        ctx = getattr(e, "ctx", None)  # usage errors know their command; other click errors do not
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        err.print(f"gitevolve: {e.format_message()}{hint}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except typer.Abort:
        err.print("gitevolve: aborted", highlight=False)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
