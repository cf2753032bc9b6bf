"""Placeholder: ``spr train`` and ``spr eval`` land here."""


def add_commands(sub) -> None:
    pass
