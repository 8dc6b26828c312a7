"""The machinery that lets our CLIs take the options of the paper's own ``train.py`` and
``inverse_nodist.py``; the option tables are ``training.paper_cli`` (train.py) and
``inverse.paper_cli`` (inverse_nodist.py).

A paper user's command runs as typed: every option of the paper's two CLIs is accepted with
the paper's meaning (mapped onto our options) or refused with one line saying why and what to
use instead. Our option names stay the primary ones: the paper's spellings are hidden options
(absent from ``--help``), and its underscore spellings (``--image_size``, ``--pad_width``,
``--sigma_min``, ...) reach our hyphenated options (:class:`PaperCommand`).

A command that uses an option only the paper has is a *paper command*; then the CLI prints one
line saying what runs, because some shared names mean something else here (README, "From the
paper's code").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import click
from click.core import ParameterSource

PREFIX = "paper_"  # click parameter names of the hidden paper options


def hyphenate(token: str) -> str:
    """'--image_size=256' -> '--image-size=256': underscores of a long option's name only."""
    if not token.startswith("--"):
        return token
    name, eq, value = token.partition("=")
    return name.replace("_", "-") + eq + value


class PaperCommand(click.Command):
    """A click command that also takes the paper's underscore spellings of its long options
    (``--image_size`` for ``--image-size``); values are left as typed."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        end = args.index("--") if "--" in args else len(args)
        return super().parse_args(ctx, [hyphenate(a) for a in args[:end]] + args[end:])


@dataclass(frozen=True)
class PaperOption:
    """One option that only the paper's CLI has: its flag as the paper spells it (the hyphen
    spelling matches too), click type, and ``apply(value, opts, ctx)`` that maps a given value onto
    our options (``opts``: the click values by parameter name) or raises :func:`refuse`."""

    flag: str
    type: Any
    apply: Callable[[Any, dict, click.Context], None]
    is_flag: bool = False

    @property
    def name(self) -> str:
        return PREFIX + self.flag.lstrip("-").replace("-", "_").lower()


def refuse(flag: str, value: Any, why: str) -> None:
    """One-line usage error for a paper option value padis does not take."""
    shown = "" if value is None else f"={int(value) if isinstance(value, bool) else value}"
    raise click.UsageError(f"{flag}{shown} (the paper's option): {why}")


def paper_options(specs: list[PaperOption]):
    """Decorator adding ``specs`` as hidden click options (default None = not given)."""
    def decorate(f):
        for spec in reversed(specs):
            kw = dict(is_flag=True, default=None) if spec.is_flag else dict(type=spec.type, default=None)
            f = click.option(hyphenate(spec.flag), spec.name, hidden=True, **kw)(f)
        return f
    return decorate


def given(ctx: click.Context, name: str) -> bool:
    """Was parameter ``name`` set on the command line (or by environment), not defaulted?"""
    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def apply_paper_options(ctx: click.Context, opts: dict, specs: list[PaperOption]) -> list[str]:
    """Pop the hidden paper options from ``opts`` and apply the given ones; returns their
    flags (empty: not a paper command)."""
    used = []
    for spec in specs:
        value = opts.pop(spec.name)
        if value is not None:
            spec.apply(value, opts, ctx)
            used.append(spec.flag)
    return used


def set_option(opts: dict, ctx: click.Context, key: str, value: Any, paper_flag: str,
               ours: str | None = None) -> None:
    """Set our option ``key`` (flag ``ours``) from a paper option, unless ours was given with
    another value."""
    ours = ours or "--" + key.replace("_", "-")
    if given(ctx, key) and opts[key] != value:
        raise click.UsageError(f"{paper_flag} (the paper's option) sets {ours} to {value}, "
                               f"but {ours} {opts[key]} was given too; give one of them")
    opts[key] = value


def only(flag: str, allowed: Any, why: str) -> Callable[[Any, dict, click.Context], None]:
    """``apply`` for a paper option padis takes only at the value ``allowed`` (no effect there)."""
    def apply(value, opts, ctx):
        if value != allowed:
            refuse(flag, value, why)
    return apply


class HintChoice(click.Choice):
    """A click.Choice whose refused values may carry a reason: ``HintChoice(choices, value=why)``."""

    def __init__(self, choices, **hints: str):
        super().__init__(choices)
        self.hints = hints

    def convert(self, value, param, ctx):
        if value in self.hints:
            self.fail(f"{value!r}: {self.hints[value]}", param, ctx)
        return super().convert(value, param, ctx)
