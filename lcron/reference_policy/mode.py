"""The reference-mode flag as recorded in a shard set and a run, and the mismatch checks.

Why one place: the switch is given at every step (preprocess, train, evaluate) and each
step reads the previous step's record. Features, models and evaluation must agree - a
reference-mode model on default shards would read shifted cat1 ids with the reference's
padding row (silently wrong numbers), so every mismatch is a :class:`ConfigError`.
"""

from __future__ import annotations

from typing import Any, Mapping

from lcron.errors import ConfigError

KEY = "reference_quirks"


def mode_name(reference_quirks: bool) -> str:
    """``"reference"`` or ``"default"`` - how reports and comparisons name the mode."""
    return "reference" if reference_quirks else "default"


def recorded(meta: Mapping[str, Any]) -> bool:
    """The flag recorded in dataset.json / run.json / metrics.json (absent = default mode)."""
    return bool(meta.get(KEY, False))


def check_match(requested: bool, found: bool, *, step: str, what: str, fix: str) -> None:
    """Raise a ConfigError naming ``what`` (where the mode was recorded) when the modes differ."""
    if bool(requested) != bool(found):
        raise ConfigError(
            f"{step}: {mode_name(requested)} mode was asked for (--reference-quirks {'given' if requested else 'not given'}), "
            f"but {what} is in {mode_name(found)} mode; {fix}")


# The loss option of the same name (ICC: the reference's cut-offs and pair averaging,
# METHODS.md section 5) predates the run-wide switch. The switch implies it: a
# reference-mode run reproduces the published experiment as a whole, and the published ICC
# had those quirks. An explicit ``--loss-option reference_quirks=false`` still wins.
LOSS_OPTION = "reference_quirks"


def implied_loss_options(method: str, options: Mapping[str, Any], reference_quirks: bool) -> dict[str, Any]:
    """``options`` plus ``reference_quirks=True`` for a method that has that option, in reference mode
    when the user did not set it; otherwise ``options`` unchanged."""
    from lcron.losses import method_options

    out = dict(options)
    if reference_quirks and LOSS_OPTION not in out and LOSS_OPTION in method_options(method):
        out[LOSS_OPTION] = True
    return out


def implied_embedding_optimizer(name: str, reference_quirks: bool) -> str:
    """``dense`` for ``auto`` in reference mode, ``name`` otherwise.

    The published code steps one ``torch.optim.Adam`` over every row of every table, so a
    row absent from the batch keeps moving on its first moment. ``auto`` picks lazy Adam on
    CPU from 1M rows per model (lcron.optim.resolve_embedding_optimizer), which freezes those
    rows - measured to move ICC by -0.018 end-to-end recall (docs/embedding_optimizer.md).
    A reference-mode run is meant to reproduce the published experiment, so it keeps the
    reference's update unless the user names ``lazy`` explicitly (then it is their choice,
    recorded in run.json like any other)."""
    return "dense" if reference_quirks and name == "auto" else name
