"""Loss-level properties every registered method must have, in both settings.

Parametrized over the registry (``lcron.losses.METHODS``), not over the spec's eight: a
method added as one file in ``lcron/losses/`` is imported with the package, so these tests
are collected for it too. The checks live in ``generic.py`` so that the ninth-method test
can run them for a method registered at test time.
"""

from __future__ import annotations

import pytest

from lcron.losses import METHODS
from lcron.settings import THREE_STAGE, TWO_STAGE, Setting

from . import generic

SETTINGS = pytest.mark.parametrize("setting", [TWO_STAGE, THREE_STAGE], ids=["two_stage", "three_stage"])
EVERY_METHOD = pytest.mark.parametrize("method", METHODS)


@SETTINGS
@EVERY_METHOD
def test_runs_with_padding_which_gets_no_gradient(method, setting):
    generic.check_runs_with_padding(method, setting)


@SETTINGS
@EVERY_METHOD
def test_padding_values_change_nothing(method, setting):
    generic.check_padding_values_do_not_matter(method, setting)


@SETTINGS
@EVERY_METHOD
def test_named_parts_are_the_same_every_batch(method, setting):
    generic.check_parts_are_the_same_every_batch(method, setting)


@SETTINGS
@EVERY_METHOD
def test_input_errors_are_config_or_data_errors(method, setting):
    generic.check_input_errors(method, setting)


@SETTINGS
@EVERY_METHOD
def test_loss_step_never_synchronises_with_the_host(method, setting):
    generic.check_no_host_sync(method, setting)


@SETTINGS
@EVERY_METHOD
def test_gradient_descent_lowers_the_loss(method, setting):
    generic.check_learns(method, setting)


@pytest.mark.parametrize("tiny", ["tiny2", "tiny3"])
@EVERY_METHOD
def test_float32_and_any_label_mask_dtypes_agree_with_float64(method, tiny):
    generic.check_dtypes(method, tiny)


@EVERY_METHOD
def test_user_setting_with_other_quotas_works(method):
    mine = Setting.from_dict({"base": "two_stage", "name": "q25_10", "quotas": [25, 10]})
    generic.check_runs_with_padding(method, mine, seed=3)
