"""Loading an exported cascade runs nothing from the folder (docs/reliability.md, hostile files).

An attacker who controls the whole folder (every file and cascade.json's sizes and hashes)
could otherwise run code through torch.export.load: pickled weights or constants
(``use_pickle``), custom/opaque object constants, legacy ``.pt`` weight files, sample inputs
that torch re-reads with a full unpickle, symbolic shape strings (``sympy.sympify`` = eval),
guards (exec'd by ``ExportedProgram.module()``), graph names (FX code generation) and node
targets (any ``torch.*`` attribute). Each case below is built from a real export, with the
file's size and sha256 in cascade.json updated to match, and each payload would create a
marker file if anything ran. Also here: the sha256 of every file (a same-size byte flip is
refused by name before anything is opened) and ``lcron export --overwrite`` onto a folder
that is not an lcron export (refused; the folder survives byte for byte).
"""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
import pickle
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from lcron import cli
from lcron.data.shards import ShardSet
from lcron.run_folder import load_cascade
from lcron.batches import gather
from lcron.serving import loader
from lcron.serving.export import export_cascade, load_exported
from lcron.serving.loader import ExportError

ROOT = Path(__file__).resolve().parents[2]
REQUEST = ("context", "user", "seq", "seq_mask")
STAGE = "stage-1-prerank.pt2"
R = "archive/"  # the folder torch.export.save puts every entry of a .pt2 in


class _Touch:
    """A pickle that creates ``marker`` when it is unpickled (stands for any code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _code(marker: Path) -> str:
    """Python source that creates ``marker`` (for the strings torch evaluates)."""
    return f"__import__('pathlib').Path('{marker}').touch()"


@pytest.fixture(scope="module")
def exported_3(run_3: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_cascade(run_3, tmp_path_factory.mktemp("security_export") / "cascade-3")


def _request(run: Path, n: int | None = 6) -> tuple[dict[str, np.ndarray], np.ndarray]:
    shards = ShardSet(json.loads((run / "run.json").read_text())["shards"])
    arrays = shards.load_day(shards.days[-1])
    return {k: np.asarray(arrays[k][:n]) for k in REQUEST}, np.asarray(arrays["items"][:n])


def _copy(folder: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(folder, dest)
    return dest


def _relist(folder: Path) -> None:
    """What an attacker does after changing files: cascade.json's sizes and hashes made to match."""
    meta_path = folder / "cascade.json"
    meta = json.loads(meta_path.read_text())
    for name in meta["file_bytes"]:
        data = (folder / name).read_bytes()
        meta["file_bytes"][name] = len(data)
        if "file_sha256" in meta:
            meta["file_sha256"][name] = hashlib.sha256(data).hexdigest()
    meta_path.write_text(json.dumps(meta))


def _rewrite(pt2: Path, edit: Callable[[dict[str, bytes]], None], compression: int = zipfile.ZIP_STORED) -> None:
    """Rewrite the entries of a .pt2 (a zip) with ``edit``, then relist the folder."""
    with zipfile.ZipFile(pt2) as zf:
        entries = {info.filename: zf.read(info.filename) for info in zf.infolist()}
    edit(entries)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    pt2.write_bytes(buf.getvalue())
    _relist(pt2.parent)


def _refusal(folder: Path, marker: Path, run: Path) -> str:
    """The ExportError message of loading ``folder``, after checking that nothing ran (had it
    loaded, it also serves a request: some payloads run only then)."""
    try:
        load_exported(folder).score(_request(run)[0], 30)
    except ExportError as exc:
        message = str(exc)
    except Exception as exc:  # noqa: BLE001 - reported below, after the marker
        message = f"{type(exc).__name__}: {exc}"
    else:
        message = "(loaded and served)"
    assert not marker.exists(), f"code from the folder ran ({message[:300]})"
    return message


def _edit_json(name: str, fn: Callable[[Any], None]) -> Callable[[dict[str, bytes]], None]:
    def edit(entries: dict[str, bytes]) -> None:
        doc = json.loads(entries[R + name])
        fn(doc)
        entries[R + name] = json.dumps(doc).encode()
    return edit


# ------------------------------------------------------------------ (a) a pickled tensor payload
def _pickled_payload(kind: str, marker: Path) -> Callable[[dict[str, bytes]], None]:
    folder = "weights" if kind == "weight" else "constants"
    config = f"{R}data/{folder}/model_{folder}_config.json"

    def edit(entries: dict[str, bytes]) -> None:
        doc = json.loads(entries[config])
        entry = next(iter(doc["config"].values()))
        entry["use_pickle"] = True
        entries[config] = json.dumps(doc).encode()
        entries[f"{R}data/{folder}/{entry['path_name']}"] = pickle.dumps(_Touch(marker))
    return edit


@pytest.mark.parametrize("kind", ["weight", "constant"])
def test_a_pickled_weight_or_constant_is_refused_and_nothing_runs(run_2, exported_2, tmp_path, kind):
    folder = _copy(exported_2, tmp_path)
    marker = tmp_path / "ran"
    _rewrite(folder / STAGE, _pickled_payload(kind, marker))
    assert re.fullmatch(rf"{folder}/{STAGE}: refusing to load: {kind} '[\w.]+' is stored as a pickle \(use_pickle\); "
                        r"an exported cascade holds only raw tensors, nothing from the file was executed",
                        _refusal(folder, marker, run_2))


def test_the_folders_own_loader_refuses_it_without_lcron(exported_2, tmp_path):
    """The stand-alone loader.py of the folder (lcron blocked from import) refuses it too."""
    folder = _copy(exported_2, tmp_path)
    marker = tmp_path / "ran"
    _rewrite(folder / STAGE, _pickled_payload("weight", marker))
    code = (
        "import sys, importlib.abc, importlib.util\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'lcron' or name.startswith('lcron.'):\n"
        "            raise ImportError('lcron is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "spec = importlib.util.spec_from_file_location('cascade_loader', sys.argv[1] + '/loader.py')\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules['cascade_loader'] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "try:\n"
        "    mod.load_exported(sys.argv[1])\n"
        "except mod.ExportError as exc:\n"
        "    print('REFUSED', type(exc).__mro__[1].__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=180,
                         cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "REFUSED ValueError" in out.stdout and f"{STAGE}: refusing to load: weight" in out.stdout
    assert not marker.exists()


# ------------------------------------------------------------------ (b) every other carrier of code
def _legacy(kind: str) -> Callable[[Path], Callable]:
    def make(marker: Path):
        def edit(entries: dict[str, bytes]) -> None:
            entries[f"{R}data/{kind}/model.pt"] = pickle.dumps(_Touch(marker))
        return edit
    return make


def _object_constant(prefix: str) -> Callable[[Path], Callable]:
    def make(marker: Path):
        config = f"{R}data/constants/model_constants_config.json"

        def edit(entries: dict[str, bytes]) -> None:
            doc = json.loads(entries[config])
            entry = next(iter(doc["config"].values()))
            entry["path_name"], entry["use_pickle"] = f"{prefix}0", True
            entries[config] = json.dumps(doc).encode()
            entries[f"{R}data/constants/{prefix}0"] = pickle.dumps(_Touch(marker))
        return edit
    return make


def _sample_inputs(marker: Path):
    def edit(entries: dict[str, bytes]) -> None:
        buf = io.BytesIO()
        torch.save(((_Touch(marker),), {}), buf)  # a torch.save zip whose pickle names a callable
        entries[f"{R}data/sample_inputs/model.pt"] = buf.getvalue()
    return edit


def _node(target: str, argument: dict):
    def make(marker: Path):
        def fn(doc: dict) -> None:
            graph = doc["graph_module"]["graph"]
            graph["tensor_values"]["pwn"] = dict(next(iter(graph["tensor_values"].values())))
            arg = json.loads(json.dumps(argument).replace("MARKER", str(marker)))
            graph["nodes"].insert(0, {"target": target, "inputs": arg, "outputs": [{"as_tensor": {"name": "pwn"}}],
                                      "metadata": {}, "name": "pwn", "is_hop_single_tensor_return": None})
        return _edit_json("models/model.json", fn)
    return make


def _sym_expr(marker: Path):
    def fn(doc: dict) -> None:
        for meta in doc["graph_module"]["graph"]["tensor_values"].values():
            for size in meta["sizes"]:
                if "as_expr" in size:
                    size["as_expr"]["expr_str"] = _code(marker)
                    return
        raise AssertionError("no symbolic size in the graph")
    return _edit_json("models/model.json", fn)


def _guard(marker: Path):
    return _edit_json("models/model.json", lambda doc: doc["guards_code"].append(f"{_code(marker)} is None"))


def _placeholder_name(marker: Path):
    """Rename the last user input so that FX's generated forward() gets a default argument."""
    evil = f"items={_code(marker)}"

    def fn(doc: dict) -> None:
        stack = [doc]
        while stack:
            o = stack.pop()
            if isinstance(o, dict):
                for k, v in o.items():
                    if k == "name" and v == "items":
                        o[k] = evil
                    else:
                        stack.append(v)
            elif isinstance(o, list):
                stack.extend(o)
        values = doc["graph_module"]["graph"]["tensor_values"]
        values[evil] = values.pop("items")
    return _edit_json("models/model.json", fn)


def _string_input(marker: Path):
    """A string graph input: torch puts its value between quotes into guard code it execs."""
    def fn(doc: dict) -> None:
        inputs = doc["graph_module"]["graph"]["inputs"]
        i = next(i for i, a in enumerate(inputs) if a.get("as_tensor", {}).get("name") == "context")
        inputs[i] = {"as_string": f"' or {_code(marker)} or '"}
    return _edit_json("models/model.json", fn)


_SYSTEM_ARG = [{"name": "command", "arg": {"as_string": "touch MARKER"}, "kind": 1}]
_SAVE_ARG = [{"name": "item", "arg": {"as_tensor": {"name": "user"}}, "kind": 1},
             {"name": "filename", "arg": {"as_string": "MARKER"}, "kind": 1}]
CARRIERS = {
    "legacy_weights_pt": (_legacy("weights"), r"data/weights/model\.pt is a legacy pickled weights file, which torch "
                                              r"would unpickle"),
    "legacy_constants_pt": (_legacy("constants"), r"data/constants/model\.pt is a legacy pickled constants file"),
    "custom_obj_constant": (_object_constant("custom_obj_"), r"data/constants/custom_obj_0 is a custom object, which "
                                                             r"torch would unpickle; an exported cascade holds only "
                                                             r"raw tensors"),
    "opaque_obj_constant": (_object_constant("opaque_obj_"), r"data/constants/opaque_obj_0 is a custom object"),
    "sample_inputs_pickle": (_sample_inputs, r"data/sample_inputs/model\.pt \(the sample inputs\) holds more than "
                                             r"tensors: a weights-only load fails \(.*\), and torch would then "
                                             r"unpickle it in full"),
    "node_torch_save": (_node("torch.save", _SAVE_ARG), r"a graph node calls 'torch\.save', which is not an "
                                                        r"aten/prims tensor operator"),
    "node_os_system": (_node("torch.os.system", _SYSTEM_ARG), r"a graph node calls 'torch\.os\.system'"),
    "node_aten_save": (_node("torch.ops.aten.save.default", _SAVE_ARG),
                       r"a graph node calls torch\.ops\.aten\.save\.default, an operator that reaches files or the "
                       r"process"),
    "sympy_expression": (_sym_expr, r"symbolic expression \"__import__\('pathlib'\).*\" has \"__import__"),
    "guard_code": (_guard, r"guard \"__import__.*\" is not a plain comparison of input sizes"),
    "graph_name": (_placeholder_name, r"name \"items=__import__.*\" is not an identifier"),
    "string_graph_input": (_string_input, r"a graph input is as_string, not a tensor \(torch writes a constant input "
                                          r"into the guard code it runs\); an exported cascade's inputs are tensors "
                                          r"only"),
}


@pytest.mark.parametrize("case", list(CARRIERS))
def test_other_carriers_of_code_are_refused_and_nothing_runs(run_2, exported_2, tmp_path, case):
    build, reason = CARRIERS[case]
    folder = _copy(exported_2, tmp_path)
    marker = tmp_path / "ran"
    _rewrite(folder / STAGE, build(marker))
    message = _refusal(folder, marker, run_2)
    assert re.fullmatch(rf"{folder}/{STAGE}: refusing to load: {reason}.*, nothing from the file was executed",
                        message), message


def test_archive_resource_bounds(exported_2, tmp_path):
    """Compressed entries (a zip bomb's tool), too many entries, a file over the cap of a
    program, an unexpected entry, a duplicate entry."""
    folder = _copy(exported_2, tmp_path)
    _rewrite(folder / STAGE, lambda e: None, compression=zipfile.ZIP_DEFLATED)
    with pytest.raises(ExportError, match=r"refusing to load: the archive: entry '.*' is compressed or encrypted"):
        load_exported(folder)

    data = (exported_2 / STAGE).read_bytes()
    with pytest.raises(ExportError, match=rf"{STAGE}: refusing to load: {len(data)} bytes, more than the 1000 bytes "
                                          r"that a program of an exported cascade may have \(its embedding table is a "
                                          r"file of its own\)"):
        loader.check_program_archive(exported_2 / STAGE, data, 1000)

    def many(entries: dict[str, bytes]) -> None:
        entries.update({f"{R}data/weights/weight_{i}": b"" for i in range(100, 100 + loader.MAX_PT2_ENTRIES)})
    shutil.copy(exported_2 / STAGE, folder / STAGE)
    _rewrite(folder / STAGE, many)
    with pytest.raises(ExportError, match=rf"the archive has \d+ entries, more than {loader.MAX_PT2_ENTRIES}"):
        load_exported(folder)

    shutil.copy(exported_2 / STAGE, folder / STAGE)
    _rewrite(folder / STAGE, lambda e: e.update({f"{R}extra/notes.txt": b"hello"}))
    with pytest.raises(ExportError, match=r"unexpected entry 'extra/notes.txt'"):
        load_exported(folder)

    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
        with pytest.warns(UserWarning, match="Duplicate name"):
            dst.writestr(f"{R}models/model.json", b"{}")
    with pytest.raises(ExportError, match=r"entry 'models/model.json' is in the archive twice"):
        loader.check_program_archive(folder / STAGE, buf.getvalue(), 1 << 30)


def test_check_sym_expr_accepts_shape_expressions_and_nothing_else():
    for ok in ("Mul(Integer(128), Symbol('s77', positive=True, integer=True))", "s0*8 + 3", "FloorDiv(s12, 2)",
               "Max(Integer(2), Symbol('u3', integer=True))", "Eq(s0, s1)"):
        loader.check_sym_expr(ok)
    for bad in ("__import__('os').system('id')", "s0.__class__", "Symbol('x'+'y')", "s0**99999999", "lambda: 1",
                "PowByNatural(Integer(10), Integer(10000000000))", "s0[0]", "preview(s0)", "S.Zero", "s_0",
                "((" * 40 + "s0" + "))" * 40):
        with pytest.raises(loader._Refused):
            loader.check_sym_expr(bad)


# ------------------------------------------------------------------ (c) content hashes
@pytest.mark.parametrize("name", [STAGE, "corpus.faiss", "embedding-1-prerank.npy"])
def test_a_same_size_byte_flip_is_refused_before_anything_is_opened(exported_2, tmp_path, monkeypatch, name):
    folder = _copy(exported_2, tmp_path)
    data = bytearray((folder / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / name).write_bytes(bytes(data))  # same size: only the hash can tell
    opened = []
    import faiss

    for module, attr in ((torch.export, "load"), (faiss, "read_index"), (np, "load"),
                         (loader, "check_program_archive")):
        monkeypatch.setattr(module, attr, lambda *a, _n=attr, **k: opened.append(_n))
    with pytest.raises(ExportError, match=rf"copy: {name.replace('.', r'[.]')} has been changed since it was "
                                          rf"exported \(sha256 [0-9a-f]{{64}} != [0-9a-f]{{64}} recorded in "
                                          rf"cascade.json\); copy the whole folder again or re-run lcron export"):
        load_exported(folder)
    assert opened == []


def test_exports_without_hashes_still_load_by_size(run_2, exported_2, tmp_path):
    folder = _copy(exported_2, tmp_path)
    meta = json.loads((folder / "cascade.json").read_text())
    del meta["file_sha256"]
    (folder / "cascade.json").write_text(json.dumps(meta))
    req, _ = _request(run_2)
    assert load_exported(folder).score(req, 30).video_ids.shape == (6, 20)
    meta["file_bytes"]["corpus.faiss"] += 1  # sizes are still checked
    (folder / "cascade.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError, match=r"corpus.faiss has \d+ bytes, \d+ when it was exported"):
        load_exported(folder)


def test_cascade_json_names_only_files_of_its_folder(exported_2, tmp_path):
    folder = _copy(exported_2, tmp_path)
    meta = json.loads((folder / "cascade.json").read_text())
    outside = tmp_path / "elsewhere.pt2"
    shutil.copy(folder / STAGE, outside)
    meta["files"]["stages"] = ["../elsewhere.pt2"]
    (folder / "cascade.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError, match=r"'\.\./elsewhere\.pt2' is not the name of a file in the folder"):
        load_exported(folder)
    meta["files"]["stages"] = ["stray.pt2"]  # in the folder, but not listed with a size and hash
    shutil.copy(outside, folder / "stray.pt2")
    (folder / "cascade.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError, match=r"names stray.pt2 among its files but lists no size for it"):
        load_exported(folder)


# ------------------------------------------------------------------ (d) export --overwrite
def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("foreign", ["recflow_source", "other_cascade_json"])
def test_export_overwrite_never_deletes_a_folder_that_is_not_an_export(run_2, tmp_path, capsys, foreign):
    out = tmp_path / "data"
    (out / "all_stage").mkdir(parents=True)
    (out / "all_stage" / "2024-01-15.feather").write_bytes(b"ARROW1" + bytes(range(256)))
    (out / "others").mkdir()
    (out / "others" / "id_cnt.pkl").write_bytes(pickle.dumps({"user_id": 3}))
    (out / "notes.txt").write_text("keep me\n")
    if foreign == "other_cascade_json":
        (out / "cascade.json").write_text(json.dumps({"format": "someone-elses-cascade", "format_version": 1}))
    before = _tree(out)
    code = cli.main(["export", "--model", str(run_2), "--out", str(out), "--overwrite"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("lcron: warning: ")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0] == (f"lcron export: error: {out} exists and is not an lcron export (a folder without a "
                        f"cascade.json of format 'lcron-exported-cascade'); it will not be deleted, not even with "
                        f"--overwrite; choose another --out")
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if "staging" in p.name) == []


def test_export_overwrite_replaces_an_earlier_export(run_2, tmp_path, capsys):
    out = tmp_path / "served"
    assert cli.main(["export", "--model", str(run_2), "--out", str(out)]) == 0
    (out / "left-over.txt").write_text("from the earlier export\n")
    capsys.readouterr()
    assert cli.main(["export", "--model", str(run_2), "--out", str(out), "--index", "hnsw"]) == 2
    assert "an earlier lcron export); choose another --out or pass --overwrite" in capsys.readouterr().err
    assert cli.main(["export", "--model", str(run_2), "--out", str(out), "--index", "hnsw", "--overwrite"]) == 0
    assert not (out / "left-over.txt").exists()
    assert json.loads((out / "cascade.json").read_text())["index"]["kind"] == "hnsw"
    req, _ = _request(run_2)
    assert load_exported(out).score(req, 30).video_ids.shape == (6, 20)


# ------------------------------------------------------------------ (e) a clean export
@pytest.mark.parametrize("stages", [2, 3])
def test_a_clean_export_is_hashed_loads_and_scores_like_the_plain_torch_load(run_2, run_3, exported_2, exported_3,
                                                                             stages):
    run, folder = (run_2, exported_2) if stages == 2 else (run_3, exported_3)
    meta = json.loads((folder / "cascade.json").read_text())
    files = sorted(p.name for p in folder.iterdir() if p.name != "cascade.json")
    assert sorted(meta["file_sha256"]) == sorted(meta["file_bytes"]) == files
    for name in files:
        assert meta["file_sha256"][name] == hashlib.sha256((folder / name).read_bytes()).hexdigest()
    served = load_exported(folder)
    req, items = _request(run, None)
    got = served.stage_scores(req, items)
    # the same programs through a plain torch.export.load of the files: bit for bit the same scores
    plain = [torch.export.load(str(folder / f)).module() for f in [meta["files"]["user_tower"],
                                                                     meta["files"]["item_tower"],
                                                                     *meta["files"]["stages"]]]
    # each program's first input is its embedding table, a plain .npy of the folder
    tables = [torch.from_numpy(np.load(folder / f, allow_pickle=False)) for f in meta["files"]["tables"]]
    of = meta["program_tables"]
    user_t, item_t, stage_t = tables[of["user_tower"]], tables[of["item_tower"]], [tables[t] for t in of["stages"]]
    r = {k: torch.from_numpy(np.array(v)).long() for k, v in req.items()}
    r["seq_mask"] = r["seq_mask"].float()
    it = torch.from_numpy(np.array(items)).long()
    with torch.inference_mode():
        u = plain[0](user_t, r["context"], r["user"], r["seq"], r["seq_mask"])
        v = plain[1](item_t, it.reshape(-1, it.shape[-1])).reshape(*it.shape[:-1], -1)
        want = [torch.bmm(v, u.unsqueeze(-1)).squeeze(-1)] + [
            p(t, r["context"], r["user"], r["seq"], r["seq_mask"], it) for p, t in zip(plain[2:], stage_t)]
    assert len(got) == len(want) == stages
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w.float().numpy())
    # and like the training-time models (as test_serving_export checks)
    cascade, _ = load_cascade(run / "seed-1" / "model.pt")
    shards = ShardSet(json.loads((run / "run.json").read_text())["shards"])
    batch = gather(shards.load_day(shards.days[-1]), slice(0, None), REQUEST + ("items",))
    with torch.inference_mode():
        eager = [z.numpy() for z in cascade(batch)]
    for g, w in zip(got, eager):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)
