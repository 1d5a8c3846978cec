"""gitevolve: evolutionary code search where every candidate is a commit and every score a git note."""

__version__ = "0.1.0"
