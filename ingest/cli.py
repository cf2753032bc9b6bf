"""Placeholder: subcommands land here."""


def add_commands(sub) -> None:
    pass
