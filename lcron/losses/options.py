"""Parsing of loss options given as Python values or as strings from a command line.

A method's options are the keyword-only parameters of its constructor; their defaults are
the spec's defaults. The registry infers a parser from each parameter's annotation
(``bool``, ``int``, ``float``, ``str``, optionally ``| None``) or takes one from the class's
``OPTION_PARSERS``. Parsers accept the typed value or its string form ("true", "50",
"1e-3", "30,20") and raise ``ValueError`` with a readable message; the registry turns that
into a :class:`~lcron.errors.ConfigError` naming the method and option.

Checks on a parsed value (:func:`positive`, :func:`in_range`) are :class:`Check` objects,
called ``check(method, option, value)``: a constructor may call one itself, and a class
may declare them in ``OPTION_CHECKS`` (option -> check or tuple of checks), which the
registry runs on every value that :func:`~lcron.losses.registry.parse_options` passes and
lists in ``lcron methods`` (and ``lcron train --help``). :func:`describe_parser` is the
one-line text of a parser for that listing.
"""

from __future__ import annotations

import math

import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lcron.errors import ConfigError
from lcron.settings import Setting

Parser = Callable[[Any], Any]

_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}
_NONE = {"none", "null", "default", ""}


def parse_bool(value: Any) -> bool:
    """``True``/``False``, 0/1, or one of true/false/yes/no/on/off/1/0 (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"expected a boolean (true/false), got {value!r}")


def parse_int(value: Any) -> int:
    """An integer, an integral float, or its decimal string."""
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError(f"expected an integer, got {value!r}")


def parse_float(value: Any) -> float:
    """A real number or its string ("50", "1e-3")."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise ValueError(f"expected a number, got {value!r}")


def parse_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise ValueError(f"expected a string, got {value!r}")


def optional(parser: Parser) -> Parser:
    """Wrap ``parser`` so that ``None`` (or "none"/"default"/"") means "use the default"."""

    def parse(value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            return None
        return parser(value)

    parse.__doc__ = f"None, or {parser.__doc__ or parser.__name__}"
    parse.optional_of = parser  # type: ignore[attr-defined]  (read by describe_parser)
    return parse


def parse_stage_ints(value: Any) -> int | tuple[int, ...] | str | None:
    """A per-stage integer option: one int for every stage, a list ("30,20" or [30, 20])
    first stage first, or the word "quotas" (the setting's quotas). None = default."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _NONE:
            return None
        if text == "quotas":
            return "quotas"
        items = [t for t in text.replace(";", ",").split(",") if t.strip()]
        if len(items) == 1 and "," not in text:
            return parse_int(items[0])
        return tuple(parse_int(t) for t in items)
    if isinstance(value, Sequence):
        return tuple(parse_int(v) for v in value)
    return parse_int(value)


def resolve_stage_ints(value: int | Sequence[int] | str, setting: Setting, *, method: str, option: str) -> tuple[int, ...]:
    """Turn a parsed per-stage option into one positive int per stage of ``setting``."""
    s = setting.num_stages
    if isinstance(value, str):
        if value.strip().lower() != "quotas":
            value = parse_stage_ints(value)
        else:
            return tuple(setting.quotas)
    if isinstance(value, int) and not isinstance(value, bool):
        values: tuple[int, ...] = (value,) * s
    elif isinstance(value, Sequence):
        values = tuple(parse_int(v) for v in value)
    else:
        raise ConfigError(f"{method}: option {option}={value!r}: expected an int, a list of {s} ints or 'quotas'")
    if len(values) != s:
        raise ConfigError(
            f"{method}: option {option}={list(values)} has {len(values)} entries; setting "
            f"{setting.name!r} has {s} stages {list(setting.stage_names)} (give {s} values or one)"
        )
    if any(v < 1 for v in values):
        raise ConfigError(f"{method}: option {option}={list(values)}: every entry must be a positive integer")
    return values


_BASIC: dict[Any, Parser] = {bool: parse_bool, int: parse_int, float: parse_float, str: parse_str}


def infer_parser(annotation: Any) -> Parser | None:
    """A parser for a constructor annotation: bool/int/float/str, optionally ``| None``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and rest[0] in _BASIC and len(rest) < len(args):
            return optional(_BASIC[rest[0]])
        return None
    return _BASIC.get(annotation)


@dataclass(frozen=True)
class Check:
    """A check of one option's parsed value: ``check(method, option, value)`` returns ``value``
    or raises :class:`ConfigError` ``"<method>: option <option>=<value> <message>"``.

    ``text`` is how ``lcron methods`` shows it (``"> 0"``). Call one in a constructor,
    or declare it in the class's ``OPTION_CHECKS`` so the registry runs and lists it.
    """

    text: str
    test: Callable[[Any], bool]
    message: str

    def __call__(self, method: str, option: str, value: Any) -> Any:
        if not self.test(value):
            raise ConfigError(f"{method}: option {option}={value!r} {self.message}")
        return value


#: ``value > 0`` or a ConfigError naming the option: ``self.tau = positive("lcron", "tau", tau)``.
positive = Check("> 0", lambda value: value > 0 and math.isfinite(value), "must be positive (and finite)")


def in_range(low: float, high: float) -> Check:
    """A check ``low <= value <= high`` (both ends included), e.g. ``in_range(0, 1)``."""
    return Check(f"in [{low}, {high}]", lambda value: low <= value <= high, f"must be in [{low}, {high}]")


_PARSER_TEXT: dict[Any, str] = {
    parse_bool: "true/false",
    parse_int: "an integer",
    parse_float: "a number",
    parse_str: "a string",
    parse_stage_ints: "an integer for every stage, a list first stage first (30,20), or 'quotas'",
}


def describe_parser(parser: Parser) -> str:
    """What values a parser takes, in a few words (for ``lcron methods``)."""
    inner = getattr(parser, "optional_of", None)
    if inner is not None:
        return f"{describe_parser(inner)}, or none (the method's default)"
    text = _PARSER_TEXT.get(parser)
    if text is not None:
        return text
    doc = (getattr(parser, "__doc__", None) or "").strip()
    return " ".join(doc.split("\n\n")[0].split()) if doc else getattr(parser, "__name__", repr(parser))


def describe_check(check: Any) -> str:
    """The help text of a declared check: its ``text``, else its docstring's first line or name."""
    text = getattr(check, "text", None)
    if isinstance(text, str) and text:
        return text
    doc = (getattr(check, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else getattr(check, "__name__", repr(check))
