"""A step's configuration as one frozen dataclass whose fields carry their command-line option.

Why: a knob of a step used to be written three times - the library's default, the
``argparse`` call with its own default and help, and the KFP component's parameter - and
the copies drifted (a default True on the command line and False in the library). A field
made with :func:`option` holds the default, the help text, the flag spelling and the check
of its value in one place; :func:`add_arguments` builds the ``argparse`` options from the
fields, :func:`from_args` builds the configuration back from the parsed namespace, and
:func:`check_options` runs every field's check, so a configuration is validated once, when
it is made, before a step writes anything. tests/test_step_configs.py holds every KFP
component parameter to the field of the same name, type and default.

A field without :func:`option` (or with ``cli=False``) is a library-only knob: it keeps its
default and is not on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from dataclasses import MISSING, Field, dataclass
from types import NoneType, UnionType
from typing import Any, Callable, Iterator

from lcron.errors import ConfigError

__all__ = ["Option", "StepConfig", "option", "option_fields", "add_arguments", "from_args", "check_options", "field_type",
           "field_default", "integer_at_least", "integer_in", "positive_number", "raised"]

_KEY = "lcron.option"

#: A check returns None for a good value or the whole error sentence for a bad one.
Check = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class Option:
    """How a configuration field appears on the command line.

    ``flag``: the option's spelling (default ``--`` + the field name with ``-`` for ``_``);
    ``aliases``: older spellings that still work and are not shown. ``convert`` turns what
    ``argparse`` stored (a string, or the list of an ``append`` option) into the field's value;
    it must also accept the field's own default. ``help`` is the sentence shown by ``--help``
    (or a function making it when the parser is built, for a list filled at run time such as
    the registered methods); ``(default X)`` is added unless the sentence speaks of its default.
    """

    help: str | Callable[[], str]
    flag: str | None = None
    aliases: tuple[str, ...] = ()
    metavar: str | None = None
    choices: tuple[Any, ...] | None = None
    check: Check | None = None
    convert: Callable[[Any], Any] | None = None
    append: bool = False
    required: bool = False
    cli: bool = True


class StepConfig:
    """Base of a step's configuration (a frozen dataclass of :func:`option` fields): it checks
    itself when made (:func:`check_options`), and :meth:`as_kwargs` gives its fields as the
    keywords of the step's library function, which has the same names and defaults."""

    def __post_init__(self) -> None:
        check_options(self)

    def as_kwargs(self) -> dict[str, Any]:
        """The fields as the library function's keywords."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


def option(default: Any = MISSING, help: str = "", *, default_factory: Any = MISSING, **how: Any) -> Any:
    """A dataclass field with its command-line option (see :class:`Option` for ``how``)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_KEY: Option(help, **how)})


def option_fields(cls: type) -> Iterator[tuple[Field, Option]]:
    """Every field of ``cls`` made with :func:`option`, in declaration order."""
    for f in dataclasses.fields(cls):
        opt = f.metadata.get(_KEY)
        if opt is not None:
            yield f, opt


def field_type(cls: type, name: str) -> tuple[type, bool]:
    """The field's value type and whether it may be None: ``int | None`` -> ``(int, True)``,
    ``tuple[int, ...]`` -> ``(tuple, False)``."""
    hint = typing.get_type_hints(cls)[name]
    optional = False
    if isinstance(hint, UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not NoneType]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0] if len(args) == 1 else str
    return (typing.get_origin(hint) or hint), optional


def field_default(f: Field) -> Any:
    """A field's default value (its factory called; None for a required field)."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one option per command-line field of ``cls``: booleans as ``--x/--no-x``, numbers
    and strings typed by the field's annotation, ``append`` fields repeatable."""
    for f, opt in option_fields(cls):
        if not opt.cli:
            continue
        kind, _ = field_type(cls, f.name)
        default = field_default(f)
        text = opt.help() if callable(opt.help) else opt.help
        if "default" not in text and default is not None and not (opt.required or opt.append):
            text = f"{text} (default {_shown(default)})"
        flags = [opt.flag or "--" + f.name.replace("_", "-")]
        kwargs: dict[str, Any] = {"dest": f.name, "help": text}
        if kind is bool:
            kwargs.update(action=argparse.BooleanOptionalAction, default=default)
        elif opt.append:
            kwargs.update(action="append", default=None)
        else:
            kwargs["default"] = None if opt.required else default
            if kind in (int, float) and opt.convert is None:
                kwargs["type"] = kind
        if opt.required:
            kwargs["required"] = True
        for name in ("metavar", "choices"):
            if getattr(opt, name) is not None:
                kwargs[name] = getattr(opt, name)
        parser.add_argument(*flags, **kwargs)
        for alias in opt.aliases:  # an older spelling: same destination, not listed
            parser.add_argument(alias, **{**kwargs, "help": argparse.SUPPRESS, "required": False})


def from_args(cls: type, args: argparse.Namespace, **values: Any) -> Any:
    """The configuration of ``cls`` from a namespace :func:`add_arguments` filled; ``values``
    (fields not on the command line) are passed as they are."""
    for f, opt in option_fields(cls):
        if opt.cli and hasattr(args, f.name):
            value = getattr(args, f.name)
            values[f.name] = opt.convert(value) if opt.convert is not None else value
    return cls(**values)


def check_options(config: Any) -> None:
    """Raise :class:`ConfigError` with the first field's complaint, in declaration order."""
    for f, opt in option_fields(type(config)):
        if opt.check is not None:
            problem = opt.check(getattr(config, f.name))
            if problem:
                raise ConfigError(problem)


# --------------------------------------------------------------------------- checks
def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer_at_least(low: int, what: str, unit: str = "", *, optional: bool = False) -> Check:
    """``what must be an integer >= low[ (unit)], got X``; None passes when ``optional``."""
    suffix = f" ({unit})" if unit else ""

    def check(value: Any) -> str | None:
        if (value is None and optional) or (_integer(value) and value >= low):
            return None
        return f"{what} must be an integer >= {low}{suffix}, got {value!r}"
    return check


def integer_in(low: int, high: int, what: str) -> Check:
    """``what must be an integer in [low, high], got X``."""
    def check(value: Any) -> str | None:
        return None if _integer(value) and low <= value <= high else \
            f"{what} must be an integer in [{low}, {high}], got {value!r}"
    return check


def positive_number(what: str) -> Check:
    """``what must be a positive number, got X`` (finite, > 0)."""
    def check(value: Any) -> str | None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        return None if ok else f"{what} must be a positive number, got {value!r}"
    return check


def raised(validate: Callable[[Any], Any]) -> Check:
    """A check from a function that raises :class:`ConfigError` for a bad value (a parser or
    a library's own check): its message, or None - so the configuration and the library
    refuse with the same sentence."""
    def check(value: Any) -> str | None:
        try:
            validate(value)
        except ConfigError as exc:
            return str(exc)
        return None
    return check
