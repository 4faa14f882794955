"""Help text that reads like a man page under typer >= 0.2x.

Current typer renders option types as annotations (``--help <bool>``, ``--url <str>``) and a
required argument in braces (``Usage: ... {file}``). The command and group classes here keep
typer's help and change only those renderings, on the parameters of our own commands: a flag
shows no type, an option shows click's metavar (``TEXT``, ``INTEGER``, ``PATH``), and a required
argument shows as ``FILE``. ``plain_help_typer`` builds an app that uses them.
"""

from __future__ import annotations

import re
from typing import Any

from typer.core import TyperCommand, TyperGroup

_REQUIRED_ARGUMENT = re.compile(r"^\{(.+)\}(\.\.\.)?$")
_METAVARS = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "path": "PATH", "bool": ""}


def _metavar(display_type: str) -> str:
    """``<str>`` -> ``TEXT``, ``<list[int]>`` -> ``INTEGER``, ``<a|b>`` -> ``[a|b]``."""
    inner = display_type.strip("<>")
    inner = inner.removeprefix("list[").removesuffix("]")
    return _METAVARS.get(inner, f"[{inner}]" if "|" in inner else inner.upper())


def _plain_metavars(params: list[Any], ctx: Any) -> list[Any]:
    # Duck-typed: typer vendors its own click, so click.Option is not their base class.
    # typer shows an option's metavar, when set, instead of its type annotation.
    for param in params:
        if getattr(param, "param_type_name", "") != "option" or param.metavar is not None:
            continue
        param.metavar = "" if param.is_flag else _metavar(str(param.display_type(ctx)))
    return params


def _plain_usage(pieces: list[str]) -> list[str]:
    return [
        _REQUIRED_ARGUMENT.sub(lambda m: m.group(1).upper() + (m.group(2) or ""), piece)
        for piece in pieces
    ]


class _PlainHelp:
    """The two overrides, for a typer command or group (put first among the bases)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_metavars(super().get_params(ctx), ctx)  # type: ignore[misc]

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return _plain_usage(super().collect_usage_pieces(ctx))  # type: ignore[misc]


class PlainHelpCommand(_PlainHelp, TyperCommand):
    pass


class PlainHelpGroup(_PlainHelp, TyperGroup):
    pass


def plain_help_typer(**kwargs: Any) -> Any:
    """``typer.Typer(**kwargs)`` whose group and commands use the plain help above."""
    import typer

    app = typer.Typer(cls=PlainHelpGroup, **kwargs)
    command = app.command

    def plain_command(*args: Any, **options: Any) -> Any:
        options.setdefault("cls", PlainHelpCommand)
        return command(*args, **options)

    app.command = plain_command  # type: ignore[method-assign]
    return app
