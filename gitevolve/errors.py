"""The one error type users see.

Raised where a problem is understood, with a message that says what to fix; the CLI turns it
into a single line and exit status 1. Anything else reaching the CLI is a bug and keeps its
traceback.
"""


class GitevolveError(Exception):
    pass


class StaleRef(GitevolveError):
    """A compare-and-swap ref update lost a race: someone else moved the ref first."""
