"""The embedding tables of an exported cascade: written once, shared by the programs, never copied.

Format version 2 (issue 35): each distinct embedding table is one ``embedding-<s>-<name>.npy``
of the folder; every program takes its table as its first input, so no ``.pt2`` holds a
table and the loader maps each table file once for all the programs that read it.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lcron import cli
from lcron.data.shards import ShardSet
from lcron.models import build_cascade
from lcron.run_folder import load_cascade
from lcron.serving import export, loader
from lcron.serving.export import export_cascade, export_programs, load_exported
from lcron.serving.index import stage_modules
from lcron.serving.loader import ExportError

REQUEST = ("context", "user", "seq", "seq_mask")


@pytest.fixture(scope="module")
def exported_3(run_3: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_cascade(run_3, tmp_path_factory.mktemp("tables_export") / "cascade-3")


class _Touch:
    """A pickle that creates ``marker`` when it is unpickled (stands for any code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _meta(folder: Path) -> dict:
    return json.loads((folder / "cascade.json").read_text())


def _relist(folder: Path) -> None:
    """cascade.json's sizes and hashes made to match the files (what an attacker would do)."""
    meta = _meta(folder)
    for name in meta["file_bytes"]:
        data = (folder / name).read_bytes()
        meta["file_bytes"][name] = len(data)
        meta["file_sha256"][name] = hashlib.sha256(data).hexdigest()
    (folder / "cascade.json").write_text(json.dumps(meta))


def _archive_tensor_shapes(pt2: Path) -> list[list[int]]:
    """The shapes of every weight and constant stored in a .pt2 (from its payload configs)."""
    shapes = []
    with zipfile.ZipFile(pt2) as zf:
        for info in zf.infolist():
            if info.filename.endswith(("model_weights_config.json", "model_constants_config.json")):
                for entry in json.loads(zf.read(info))["config"].values():
                    shapes.append([int(d["as_int"]) for d in entry["tensor_meta"]["sizes"]])
    return shapes


def _mapped_file(address: int) -> str | None:
    """The file mapped at ``address`` in this process (None: anonymous memory)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if lo <= address < hi:
            return parts[5] if len(parts) == 6 else None
    return None


@pytest.mark.parametrize("stages", [2, 3])
def test_each_table_is_written_once_and_no_program_holds_one(stages, run_2, run_3, exported_2, exported_3):
    run, folder = (run_2, exported_2) if stages == 2 else (run_3, exported_3)
    meta = _meta(folder)
    names = meta["stage_names"]
    # the stage models have a table each: one file per stage, the towers both read the first
    assert meta["files"]["tables"] == [f"embedding-{s}-{n}.npy" for s, n in enumerate(names)]
    assert meta["program_tables"] == {"user_tower": 0, "item_tower": 0, "stages": list(range(1, stages))}
    assert sorted(p.name for p in folder.glob("*.npy") if p.name.startswith("embedding-")) == \
        sorted(meta["files"]["tables"])
    cascade, _ = load_cascade(run / "seed-1" / "model.pt")
    rows = sum(meta["embedding_sizes"].values())
    for name, model in zip(meta["files"]["tables"], stage_modules(cascade, cascade.setting)):
        table = np.load(folder / name, allow_pickle=False)
        assert table.dtype == np.float32 and table.shape == (rows, meta["dim"])
        np.testing.assert_array_equal(table, model.embedding.weight.detach().numpy())  # the weights, bit for bit
    programs = [meta["files"]["user_tower"], meta["files"]["item_tower"], *meta["files"]["stages"]]
    for name in programs:
        shapes = _archive_tensor_shapes(folder / name)
        assert shapes and all(rows not in shape for shape in shapes), (name, shapes)
        assert (folder / name).stat().st_size < 1 << 20
        # torch's sample inputs keep a 2-row stand-in for the table, not the table
        with zipfile.ZipFile(folder / name) as zf:
            raw = zf.read(next(n for n in zf.namelist() if n.endswith("data/sample_inputs/model.pt")))
        args, _ = torch.load(io.BytesIO(raw), weights_only=True)
        assert tuple(args[0].shape) == (2, meta["dim"])


def test_a_loaded_export_maps_each_table_once_and_scores_like_the_model(run_2, exported_2):
    served = load_exported(exported_2)
    meta = _meta(exported_2)
    assert len(served.tables) == len(meta["files"]["tables"]) == 2
    assert served.user_tower.table is served.item_tower.table is served.tables[0]
    assert served.stages[0].table is served.tables[1]
    for name, table in zip(meta["files"]["tables"], served.tables):
        # the tensor's memory is the table file itself (a read-only mapping), not a copy
        assert _mapped_file(table.data_ptr()) == str((exported_2 / name).resolve())
    shards = ShardSet(json.loads((run_2 / "run.json").read_text())["shards"])
    arrays = shards.load_day(shards.days[-1])
    req = {k: np.asarray(arrays[k]) for k in REQUEST}
    got = served.stage_scores(req, np.asarray(arrays["items"]))
    cascade, _ = load_cascade(run_2 / "seed-1" / "model.pt")
    batch = {k: torch.from_numpy(np.array(arrays[k])) for k in REQUEST + ("items",)}
    with torch.inference_mode():
        want = [z.numpy() for z in cascade(batch)]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)


def _programs_bytes(sizes: dict[str, int], setting: dict, dim: int) -> tuple[list[int], int]:
    torch.manual_seed(0)
    cascade = build_cascade(setting, sizes, dim=dim).eval()
    out = export_programs(stage_modules(cascade, cascade.setting), export._input_spec(sizes))
    lengths = []
    for prog in [out["user_tower"], out["item_tower"], *out["stages"]]:
        buf = io.BytesIO()
        torch.export.save(prog, buf)
        lengths.append(len(buf.getvalue()))
    return lengths, sum(t.numel() * 4 for t in out["tables"])


def test_program_files_do_not_grow_with_the_vocabulary(run_2):
    _, payload = load_cascade(run_2 / "seed-1" / "model.pt")
    cfg = payload["config"]
    sizes, dim = dict(cfg["embedding_sizes"]), int(cfg["train"]["dim"])
    small, small_tables = _programs_bytes(sizes, cfg["setting"], dim)
    big, big_tables = _programs_bytes({**sizes, "video_id": sizes["video_id"] + 200_000}, cfg["setting"], dim)
    assert big_tables - small_tables == 2 * 200_000 * dim * 4  # both tables grew by 6.4 MB ...
    for a, b in zip(small, big):
        assert abs(a - b) < 1024, (small, big)  # ... the programs by a few bytes (their row offsets' digits)


def test_programs_share_the_models_weights_and_a_shared_embedding_is_one_table(run_2, tmp_path):
    cascade, payload = load_cascade(run_2 / "seed-1" / "model.pt")
    models = stage_modules(cascade, cascade.setting)
    sizes, dim = payload["config"]["embedding_sizes"], int(payload["config"]["train"]["dim"])
    inputs = export._input_spec(sizes)
    out = export_programs(models, inputs)
    # the tables are the models' own weights, not copies
    assert [t.data_ptr() for t in out["tables"]] == [m.embedding.weight.data_ptr() for m in models]
    assert out["table_of"] == {"user_tower": 0, "item_tower": 0, "stages": [1]}
    # so are the programs' dense weights, and no program holds a table
    own = {p.data_ptr() for m in models for p in m.parameters()}
    for prog in [out["user_tower"], out["item_tower"], *out["stages"]]:
        assert prog.state_dict and all(t.data_ptr() in own for t in prog.state_dict.values())
        assert all(t.shape[0] != out["tables"][0].shape[0] for t in prog.state_dict.values())
    # the models are unchanged: still their FeatureEmbedding, not the export stand-in
    assert all(type(m.embedding).__name__ == "FeatureEmbedding" for m in models)
    # two stage models sharing one embedding module: the table is written once, read by both
    models[1].embedding = models[0].embedding
    shared = export_programs(models, inputs)
    assert len(shared["tables"]) == 1 and shared["table_of"] == {"user_tower": 0, "item_tower": 0, "stages": [0]}
    files = {"user_tower": "user_tower.pt2", "item_tower": "item_tower.pt2", "stages": ["stage-1-prerank.pt2"]}
    written = export._write_models(tmp_path / "staging", models, inputs, files, list(cascade.setting.stage_names),
                                   loader.table_shape({"embedding_sizes": sizes, "dim": dim}))
    assert written["tables"] == ["embedding-0-retrieval.npy"]
    assert sorted(p.name for p in (tmp_path / "staging").glob("*.npy")) == ["embedding-0-retrieval.npy"]


def test_a_changed_table_is_refused(exported_2, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(exported_2, folder)
    name = "embedding-1-prerank.npy"
    table = np.load(folder / name, allow_pickle=False)
    # changed since the export (same size): the sha256 names the file
    flipped = table.copy()
    flipped[3, 0] += 1.0
    np.save(folder / name, flipped)
    with pytest.raises(ExportError, match=rf"{name} has been changed since it was exported \(sha256"):
        load_exported(folder)
    # with cascade.json's hashes made to match: another shape or dtype is refused by the loader
    rows, dim = table.shape
    for bad, why in ((table[:-1], rf"\({rows - 1}, {dim}\)"), (table.astype(np.float64), "<f8"),
                     (np.asfortranarray(table), "Fortran order")):
        np.save(folder / name, bad)
        _relist(folder)
        with pytest.raises(ExportError, match=rf"{name}: (embedding table is .*{why}.*; this export's tables are "
                                              rf"float32 \(<f4\) \({rows}, {dim}\) in C order|refusing to load: "
                                              rf"\d+ bytes, more than the \d+ bytes that an embedding table of "
                                              rf"the sizes in cascade.json takes)"):
            load_exported(folder)
    # a pickled object array in its place is refused without unpickling anything
    marker = tmp_path / "ran"
    np.save(folder / name, np.array([_Touch(marker)], dtype=object), allow_pickle=True)
    _relist(folder)
    with pytest.raises(ExportError, match=rf"{name}: not a readable embedding table"):
        load_exported(folder)
    assert not marker.exists()


def test_a_version_1_folder_is_refused_with_a_request_to_export_again(run_2, exported_2, tmp_path):
    folder = tmp_path / "old"
    shutil.copytree(exported_2, folder)
    meta = _meta(folder)
    meta["format_version"] = 1
    (folder / "cascade.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError, match=r"an export of format version 1 \(each program held its own copy of its "
                                          r"embedding table\); this loader reads version 2, .*export the run again "
                                          r"\(lcron export --overwrite\)"):
        load_exported(folder)
    # and lcron export --overwrite replaces it (an old export is still an lcron export)
    assert cli.main(["export", "--model", str(run_2), "--out", str(folder), "--overwrite"]) == 0
    assert _meta(folder)["format_version"] == loader.FORMAT_VERSION == 2
    assert load_exported(folder).corpus_size > 0
