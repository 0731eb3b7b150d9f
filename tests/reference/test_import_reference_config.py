"""``lcron import-reference``'s choices are one ImportReferenceConfig: its options are built from
the fields, the library's keywords carry the same defaults, and a bad value is refused when the
configuration is made, before anything is read or written."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pytest

from lcron import cli
from lcron.errors import ConfigError
from lcron.reference.importer import ImportReferenceConfig, add_import_reference_arguments, import_reference
from lcron.step_config import from_args


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_import_reference_arguments(parser)
    return parser


def test_command_line_round_trips_into_the_configuration():
    args = _parser().parse_args(["--stage", "retrieval=a.pt", "--stage", "ranking=b.pt", "--out", "o", "--stages", "2",
                                 "--reference-quirks", "--method", "pub", "--seed", "3", "--batch-size", "512"])
    assert from_args(ImportReferenceConfig, args) == ImportReferenceConfig(
        stages=2, reference_quirks=True, method="pub", seed=3, batch_size=512)
    assert (args.stage, args.out, args.shards, args.overwrite) == (["retrieval=a.pt", "ranking=b.pt"], "o", None, False)
    defaults = _parser().parse_args(["--stage", "retrieval=a.pt", "--out", "o"])
    assert from_args(ImportReferenceConfig, defaults) == ImportReferenceConfig()


def test_the_spellings_and_help_are_kept():
    text = _parser().format_help()
    for piece in ("--stages {2,3}", "--reference-quirks", "--method METHOD", "--seed SEED", "--batch-size BATCH_SIZE",
                  "(default 'reference')", "(default 1)", "default 1024)"):
        assert piece in text, piece
    with pytest.raises(SystemExit):
        _parser().parse_args(["--stage", "a=b", "--out", "o", "--stages", "4"])


def test_library_keywords_are_the_configuration_with_its_defaults():
    params = inspect.signature(import_reference).parameters
    for f in dataclasses.fields(ImportReferenceConfig):
        assert f.name in params and params[f.name].default == f.default, f.name
        assert params[f.name].kind is inspect.Parameter.KEYWORD_ONLY, f.name


def test_a_bad_batch_size_is_refused_when_the_configuration_is_made(tmp_path):
    with pytest.raises(ConfigError, match="batch size must be an integer >= 1, got 0"):
        ImportReferenceConfig(batch_size=0)
    # the library checks before it reads a file or writes the run folder
    with pytest.raises(ConfigError, match="batch size must be an integer >= 1, got 0"):
        import_reference({"retrieval": tmp_path / "missing.pt"}, tmp_path / "run", stages=2, batch_size=0)
    assert not (tmp_path / "run").exists()


def test_the_command_refuses_a_bad_batch_size(tmp_path, capsys):
    code = cli.main(["import-reference", "--stage", f"retrieval={tmp_path / 'missing.pt'}", "--out",
                     str(tmp_path / "run"), "--stages", "2", "--batch-size", "0", "-q"])
    assert code == 2 and "batch size must be an integer >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
