"""``lcron import-reference``: published state dicts -> a run folder whose models give the reference logits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lcron import outputs
from lcron.cli import main
from lcron.errors import ConfigError, DataError, OutputExistsError
from lcron.reference import mapping
from lcron.reference.importer import import_reference, parse_stage_files
from lcron.run_folder import RUN_KIND, load_cascade, run_seeds
from .test_reference_models import CASES, _inputs, _params


def _save_states(case, folder):
    files = {}
    for stage in case["models"]:
        files[stage] = folder / f"{stage}.pt"
        torch.save({"state_dict": _params(case, stage)}, files[stage])
    return files


@pytest.mark.parametrize("reference_quirks", [True, False])
def test_imported_run_gives_the_reference_logits(tmp_path, reference_quirks):
    case = CASES[2]  # three-stage: DSSM, MLP, DIN
    files = _save_states(case, tmp_path)
    run = import_reference(files, tmp_path / "run", stages=3, reference_quirks=reference_quirks)
    assert [p.name for p in run_seeds(run)] == ["seed-1"]
    cfg = json.loads((run / "run.json").read_text())
    assert cfg.get("reference_quirks", False) is reference_quirks and cfg["days"] == []
    cascade, _ = load_cascade(run / "seed-1" / "model.pt")
    batch = mapping.reference_batch(_inputs(case), case["groups"], np.asarray(case["slot_mask"]), reference_quirks)
    with torch.no_grad():
        logits = dict(zip(cascade.setting.stage_names, cascade(batch)))
    want = case["logits" if reference_quirks else "logits_zero_padded_steps"]
    for stage, z in logits.items():
        np.testing.assert_allclose(z.numpy(), np.asarray(want[stage]), rtol=0, atol=1e-6)


def test_cli_and_errors(tmp_path, tiny_shards_2, capsys):
    case = CASES[0]  # two-stage: DSSM, DIN
    files = _save_states(case, tmp_path)
    args = ["import-reference", "--stages", "2", "--out", str(tmp_path / "run"), "--reference-quirks"]
    args += [f"--stage={k}={v}" for k, v in files.items()]
    assert main(args) == 0
    assert "reference mode" in capsys.readouterr().out
    with pytest.raises(OutputExistsError, match=r"holds another run \(differs in reference_quirks"):
        import_reference(files, tmp_path / "run", stages=2)
    with pytest.raises(ConfigError, match="one --stage file per stage"):
        import_reference({"retrieval": files["retrieval"]}, tmp_path / "r2", stages=2)
    with pytest.raises(ConfigError, match="a reference DIN, but stage 'retrieval'"):
        import_reference({"retrieval": files["prerank"], "prerank": files["retrieval"]}, tmp_path / "r3", stages=2)
    with pytest.raises(ConfigError, match="reference mode was asked for"):
        import_reference(files, tmp_path / "r4", shards=tiny_shards_2.root, reference_quirks=True)
    with pytest.raises(DataError, match="vocabularies differ"):
        import_reference(files, tmp_path / "r5", shards=tiny_shards_2.root)
    torch.save({"not": "tensors"}, tmp_path / "bad.pt")
    with pytest.raises(DataError, match="not a state dict"):
        import_reference({"retrieval": tmp_path / "bad.pt", "prerank": files["prerank"]}, tmp_path / "r6", stages=2)
    with pytest.raises(ConfigError, match="STAGE=PATH"):
        parse_stage_files(["retrieval"])


def test_the_output_protocol_same_import_skips_other_is_refused(tmp_path):
    case = CASES[0]  # two-stage: DSSM, DIN
    files = _save_states(case, tmp_path)
    run = tmp_path / "run"
    import_reference(files, run, stages=2, reference_quirks=True)
    assert outputs.is_complete(run, RUN_KIND)
    written = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    # The same files imported the same way: nothing is written.
    import_reference(files, run, stages=2, reference_quirks=True)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == written
    # Another seed, or new contents at the same paths, are other inputs: refused, then replaced.
    with pytest.raises(OutputExistsError, match=r"seeds \[1\] -> \[2\]"):
        import_reference(files, run, stages=2, reference_quirks=True, seed=2)
    torch.save({"state_dict": {k: v + 1 for k, v in _params(case, "prerank").items()}}, files["prerank"])
    with pytest.raises(OutputExistsError, match="differs in imported_sha256"):
        import_reference(files, run, stages=2, reference_quirks=True)
    import_reference(files, run, stages=2, reference_quirks=True, seed=2, overwrite=True)
    assert [p.name for p in run_seeds(run)] == ["seed-2"] and not (run / "seed-1").exists()
    # A folder of something else is never written into, even with --overwrite.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not an lcron run folder"):
        import_reference(files, tmp_path / "mine", stages=2, reference_quirks=True, overwrite=True)
