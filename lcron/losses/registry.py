"""The method registry: ``@register(name)``, ``build_loss``, ``parse_options``, ``METHODS``.

Adding a method is one new file in ``lcron/losses/`` with a :class:`CascadeLoss` subclass
decorated ``@register("name")``: the package imports every module in its folder, so the
trainer, the CLI and the pipeline see the new name without any other edit. A method's
options are the keyword-only parameters of its constructor (with defaults); the registry
reads them from the signature, so ``build_loss`` accepts them as Python values or as
strings from a command line and rejects unknown ones.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from lcron.errors import ConfigError
from lcron.settings import Setting, SettingError, get_setting

from .base import CascadeLoss
from .options import Parser, infer_parser

__all__ = ["register", "unregister", "build_loss", "parse_options", "method_options", "methods", "get_method",
           "OptionSpec", "discover"]

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class OptionSpec:
    """One option of a method: its default (from the constructor) and its parser."""

    name: str
    default: Any
    parse: Parser

    def describe(self) -> str:
        return f"{self.name} (default {self.default!r})"


_REGISTRY: dict[str, type[CascadeLoss]] = {}
_OPTIONS: dict[str, dict[str, OptionSpec]] = {}

L = TypeVar("L", bound=type)


def _option_specs(cls: type[CascadeLoss], method: str) -> dict[str, OptionSpec]:
    try:
        sig = inspect.signature(cls.__init__, eval_str=True)
    except (NameError, TypeError) as exc:
        raise ConfigError(f"method {method!r}: cannot read the options of {cls.__name__}.__init__: {exc}") from None
    params = list(sig.parameters.values())[1:]  # drop self
    if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        raise ConfigError(f"method {method!r}: {cls.__name__}.__init__ must take the setting as its first argument")
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
        specs[p.name] = OptionSpec(p.name, p.default, parser)
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
    return parsed


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
