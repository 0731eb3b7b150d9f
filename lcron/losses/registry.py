"""The method registry: ``@register(name)``, ``build_loss``, ``parse_options``, ``METHODS``.

Adding a method is one new file in ``lcron/losses/`` with a :class:`CascadeLoss` subclass
decorated ``@register("name")``: the package imports every module in its folder, so the
trainer, the CLI and the pipeline see the new name without any other edit. A method's
options are the keyword-only parameters of its constructor (with defaults); the registry
reads them from the signature, so ``build_loss`` accepts them as Python values or as
strings from a command line and rejects unknown ones. Checks declared in the class's
``OPTION_CHECKS`` run on every parsed value; :func:`describe_methods` lists every method
with its options and checks (``lcron methods`` and the method list of ``lcron train --help``),
:func:`method_info` is the same as data (``lcron methods --json``).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from lcron.errors import ConfigError
from lcron.settings import Setting, SettingError, get_setting

from .base import CascadeLoss
from .options import Parser, describe_check, describe_parser, infer_parser

__all__ = ["register", "unregister", "build_loss", "parse_options", "method_options", "methods", "get_method",
           "OptionSpec", "discover", "describe_methods", "method_info", "LISTING_HEADING"]

#: The line above a :func:`describe_methods` listing (``lcron methods``, ``lcron train --help``).
LISTING_HEADING = ("registered methods (lcron train --method NAME) and their options (--loss-option KEY=VALUE), "
                   "each as KEY=DEFAULT: the values it takes; the checks on them:")

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class OptionSpec:
    """One option of a method: its default (from the constructor), its parser and the checks
    declared in the class's ``OPTION_CHECKS`` (run on every parsed value but ``None``)."""

    name: str
    default: Any
    parse: Parser
    checks: tuple = ()

    def describe(self) -> str:
        return f"{self.name} (default {self.default!r})"

    def help_text(self) -> str:
        """``name=DEFAULT: what it takes[; checks]`` as ``lcron methods`` lists it."""
        text = f"{self.name}={_cli_value(self.default)}: {describe_parser(self.parse)}"
        if self.checks:
            text += "; " + ", ".join(describe_check(c) for c in self.checks)
        return text

    def as_dict(self) -> dict[str, Any]:
        """The option as plain data for ``lcron methods --json``: the default as written on a
        command line (``--loss-option name=DEFAULT`` takes it back), what it takes, its checks."""
        return {"name": self.name, "default": _cli_value(self.default), "takes": describe_parser(self.parse),
                "checks": [describe_check(c) for c in self.checks]}


_REGISTRY: dict[str, type[CascadeLoss]] = {}
_OPTIONS: dict[str, dict[str, OptionSpec]] = {}

L = TypeVar("L", bound=type)


def _cli_value(value: Any) -> str:
    """A default as it would be written on the command line (true, none, 30,20)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return ",".join(_cli_value(v) for v in value)
    return str(value)


def _declared_checks(cls: type[CascadeLoss], method: str, names: Iterable[str]) -> dict[str, tuple]:
    declared = dict(getattr(cls, "OPTION_CHECKS", None) or {})
    names = list(names)
    for table, what in ((declared, "OPTION_CHECKS"), (cls.OPTION_PARSERS, "OPTION_PARSERS")):
        unknown = sorted(set(table) - set(names))
        if unknown:
            raise ConfigError(f"method {method!r}: {cls.__name__}.{what} names {unknown}, which are not options of "
                              f"{cls.__name__}.__init__ (its options: {', '.join(names) or 'none'})")
    checks: dict[str, tuple] = {}
    for name, value in declared.items():
        items = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        for check in items:
            if not callable(check):
                raise ConfigError(f"method {method!r}: {cls.__name__}.OPTION_CHECKS[{name!r}] holds {check!r}; a "
                                  "check is called check(method, option, value) (see lcron.losses.options.Check)")
        checks[name] = items
    return checks


def _run_checks(method: str, spec: OptionSpec, value: Any) -> Any:
    if value is None:  # None means "the method's default", never checked
        return value
    for check in spec.checks:
        try:
            value = check(method, spec.name, value)
        except ConfigError:  # a Check's own message names the method and option already
            raise
        except ValueError as exc:
            raise ConfigError(f"method {method!r}: option {spec.name}={value!r}: {exc}") from None
    return value


def _option_specs(cls: type[CascadeLoss], method: str) -> dict[str, OptionSpec]:
    try:
        sig = inspect.signature(cls.__init__, eval_str=True)
    except (NameError, TypeError) as exc:
        raise ConfigError(f"method {method!r}: cannot read the options of {cls.__name__}.__init__: {exc}") from None
    params = list(sig.parameters.values())[1:]  # drop self
    if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        raise ConfigError(f"method {method!r}: {cls.__name__}.__init__ must take the setting as its first argument")
    checks = _declared_checks(cls, method, (p.name for p in params[1:]))
    specs: dict[str, OptionSpec] = {}
    for p in params[1:]:
        if p.kind is not p.KEYWORD_ONLY:
            raise ConfigError(
                f"method {method!r}: option {p.name!r} of {cls.__name__}.__init__ must be keyword-only (after '*')"
            )
        if p.default is p.empty:
            raise ConfigError(f"method {method!r}: option {p.name!r} needs a default value")
        parser = cls.OPTION_PARSERS.get(p.name) or infer_parser(p.annotation)
        if parser is None:
            raise ConfigError(
                f"method {method!r}: option {p.name!r} has annotation {p.annotation!r}; use bool/int/float/str "
                f"(optionally '| None') or add a parser to {cls.__name__}.OPTION_PARSERS"
            )
        spec = OptionSpec(p.name, p.default, parser, checks.get(p.name, ()))
        try:
            _run_checks(method, spec, p.default)
        except ConfigError as exc:
            raise ConfigError(f"method {method!r}: the default of option {p.name!r} fails its own check: {exc}") from None
        specs[p.name] = spec
    return specs


def register(name: str) -> Callable[[L], L]:
    """Class decorator: make a :class:`CascadeLoss` subclass available as method ``name``.

    Registering a different class under a taken name is an error (re-registering the same
    class, e.g. after a module reload, replaces it).
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"method name {name!r} must be lower-case letters, digits and '_' (starting with a letter)")

    def decorate(cls: L) -> L:
        if not (isinstance(cls, type) and issubclass(cls, CascadeLoss)):
            raise ConfigError(f"@register({name!r}) must decorate a subclass of lcron.losses.CascadeLoss, got {cls!r}")
        old = _REGISTRY.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ConfigError(f"method {name!r} is already registered by {old.__module__}.{old.__qualname__}")
        specs = _option_specs(cls, name)
        cls.method_name = name
        _REGISTRY[name] = cls
        _OPTIONS[name] = specs
        return cls

    return decorate


def unregister(name: str) -> None:
    """Remove a registered method (for tests and interactive experiments)."""
    _REGISTRY.pop(name, None)
    _OPTIONS.pop(name, None)


def methods() -> tuple[str, ...]:
    """The registered method names, in registration order."""
    return tuple(_REGISTRY)


def get_method(name: str) -> type[CascadeLoss]:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown method {name!r}; known methods: {', '.join(methods())}") from None


def method_options(name: str) -> dict[str, OptionSpec]:
    """The options of method ``name``: name -> :class:`OptionSpec` (default and parser)."""
    get_method(name)
    return dict(_OPTIONS[name])


def parse_options(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Check option names against ``method`` and parse values (strings from a CLI allowed).

    ``parse_options("lcron", {"k": "30,20", "hard_labels": "true"})`` returns
    ``{"k": (30, 20), "hard_labels": True}``. Unknown names and unparsable values raise
    :class:`ConfigError` naming the method's options.
    """
    specs = method_options(method)
    unknown = sorted(set(options) - set(specs))
    if unknown:
        listed = ", ".join(s.describe() for s in specs.values()) or "none"
        raise ConfigError(f"method {method!r} has no option(s) {unknown}; its options: {listed}")
    parsed: dict[str, Any] = {}
    for key, value in options.items():
        try:
            parsed[key] = specs[key].parse(value)
        except ValueError as exc:
            raise ConfigError(f"method {method!r}: option {key}={value!r}: {exc}") from None
        _run_checks(method, specs[key], parsed[key])
    return parsed


def _summary(cls: type[CascadeLoss]) -> str:
    """The first paragraph of the class's own docstring (else of its module's), on one line."""
    doc = cls.__dict__.get("__doc__") or getattr(inspect.getmodule(cls), "__doc__", None) or ""
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())


def method_info(name: str) -> dict[str, Any]:
    """Method ``name`` as plain data (what :func:`describe_methods` prints): its name, the
    one-line summary from its class's docstring, its class and its options
    (:meth:`OptionSpec.as_dict`). JSON-ready, for scripts that list the methods."""
    cls = get_method(name)
    return {"name": name, "summary": _summary(cls), "class": f"{cls.__module__}.{cls.__qualname__}",
            "options": [spec.as_dict() for spec in _OPTIONS[name].values()]}


def describe_methods(width: int = 79, only: Iterable[str] | None = None) -> str:
    """Every registered method with a one-line description (the first paragraph of its class's
    docstring) and its options as ``name=DEFAULT: what it takes; checks``, wrapped to ``width``
    columns (``only``: these methods, in this order). Generated from the registry: a method
    registered later is listed too."""
    width = max(int(width), 40)
    lines: list[str] = []
    for name in methods() if only is None else tuple(only):
        cls = get_method(name)
        head = f"  {name} - {_summary(cls) or '(no description: give the class a docstring)'}"
        lines += textwrap.wrap(head, width, subsequent_indent=" " * (len(name) + 5)) or [head]
        specs = _OPTIONS[name].values()
        if not specs:
            lines.append("      no options")
        for spec in specs:
            lines += textwrap.wrap(spec.help_text(), width, initial_indent="      ", subsequent_indent="          ",
                                   break_on_hyphens=False)
    return "\n".join(lines)


def _resolve_setting(stages: int | None, setting: Setting | str | Path | None) -> Setting:
    try:
        resolved = get_setting(setting, stages=stages)
    except SettingError as exc:
        raise ConfigError(str(exc)) from None
    if stages is not None and setting is not None and resolved.num_stages != int(stages):
        raise ConfigError(
            f"stages={stages} contradicts setting {resolved.name!r}, which has {resolved.num_stages} stages"
        )
    return resolved


def build_loss(
    method: str,
    stages: int | None = None,
    *,
    setting: Setting | str | Path | None = None,
    **options: Any,
) -> CascadeLoss:
    """Build the loss module of ``method`` for a setting (``stages=2|3``, a name, a file, a Setting).

    Options are the method's keyword options (see :func:`method_options`), as values or
    strings. The result is an ``nn.Module``; call it as ``loss(logits, labels, mask)``.
    """
    cls = get_method(method)
    parsed = parse_options(method, options)
    resolved = _resolve_setting(stages, setting)
    return cls(resolved, **parsed)


def discover(path: Iterable[str], package: str) -> list[str]:
    """Import every module of a package folder (so their ``@register`` decorators run).

    Modules are imported in name order (modules already imported are not re-run), so the
    registration order - and :data:`METHODS` - is stable. Returns the module names.
    """
    names = sorted(m.name for m in pkgutil.iter_modules(list(path)) if not m.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{package}.{name}")
    return names
