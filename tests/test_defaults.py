"""Defaults live in lcron.defaults: the library, the command line and the pipeline read them there."""

from __future__ import annotations

import dataclasses
import inspect
import sys
from pathlib import Path

from lcron import cli
from lcron.data.synthetic import SyntheticConfig, generate
from lcron.defaults import PREPROCESS, SYNTHETIC, TRAIN
from lcron.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def _parse(*argv: str):
    return cli.build_parser(only=argv[0]).parse_args(list(argv))


def test_synthetic_defaults_everywhere():
    fields = dataclasses.asdict(SYNTHETIC)
    config = SyntheticConfig()
    assert {k: getattr(config, k) for k in fields} == fields
    sig = inspect.signature(generate).parameters
    assert {k: sig[k].default for k in fields} == fields
    args = _parse("generate", "--out", "x")
    assert (args.num_days, args.start_date, args.requests_per_day, args.users, args.items, args.seed) == tuple(
        fields.values())
    args = _parse("ingest", "--out", "x")
    assert (args.synthetic_days, args.synthetic_requests_per_day, args.synthetic_users, args.synthetic_items,
            args.synthetic_seed) == (SYNTHETIC.num_days, SYNTHETIC.requests_per_day, SYNTHETIC.users,
                                     SYNTHETIC.items, SYNTHETIC.seed)


def test_training_and_preprocessing_defaults_everywhere():
    cfg = TrainConfig()
    assert (cfg.method, cfg.batch_size, cfg.lr, cfg.dim, cfg.seeds) == (TRAIN.method, TRAIN.batch_size, TRAIN.lr,
                                                                      TRAIN.dim, TRAIN.seeds)
    args = _parse("train", "--shards", "s", "--out", "o", "--method", "bce")
    assert (args.batch_size, args.lr, args.seeds) == (TRAIN.batch_size, TRAIN.lr, TRAIN.seeds)
    args = _parse("preprocess", "--source", "s", "--out", "o", "--stages", "2")
    assert (args.tz_offset_hours, args.max_missing_fraction) == (PREPROCESS.tz_offset_hours,
                                                                 PREPROCESS.max_missing_fraction)


def test_pipeline_parameters_default_to_the_same_values():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from pipelines.cascade_pipeline import cascade_pipeline

    inputs = cascade_pipeline.component_spec.inputs
    expected = {
        "synthetic_days": SYNTHETIC.num_days, "synthetic_start_date": SYNTHETIC.start_date,
        "synthetic_requests_per_day": SYNTHETIC.requests_per_day, "synthetic_users": SYNTHETIC.users,
        "synthetic_items": SYNTHETIC.items, "synthetic_seed": SYNTHETIC.seed,
        "tz_offset_hours": PREPROCESS.tz_offset_hours, "max_missing_fraction": PREPROCESS.max_missing_fraction,
        "method": TRAIN.method, "batch_size": TRAIN.batch_size, "lr": TRAIN.lr, "dim": TRAIN.dim,
        "seeds": list(TRAIN.pipeline_seeds),
    }
    assert {k: inputs[k].default for k in expected} == expected
