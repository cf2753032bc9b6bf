"""Errors shared by every stage's command line."""


class UsageError(Exception):
    """A problem the user can fix; ``spr`` prints it as one line, without a traceback, and
    exits with 2. Defined apart from :mod:`spr.cli` so that ``python -m spr.cli`` (which runs
    that module as ``__main__``) and the stages' command modules share one class."""
