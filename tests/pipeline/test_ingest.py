"""lcron.ingest: fingerprints that change exactly with the data, and staging of chosen days."""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.feather as feather
import pytest

from lcron import __version__
from lcron.data.source import Source
from lcron.errors import ConfigError, DataError, OutputExistsError
from lcron.ingest import (MANIFEST_NAME, add_fingerprint_arguments, add_ingest_arguments, ingest, is_synthetic,
                          read_manifest, run_fingerprint, run_ingest, source_fingerprint)

from .conftest import TINY_SYNTHETIC

DAYS = ["2024-01-13", "2024-01-14", "2024-01-15"]


def _day_files(day: str) -> list[str]:
    return [f"all_stage/{day}.feather", f"request_id_dict/{day}.pkl", f"seq_effective_50_dict/{day}.pkl"]


def _hand_fingerprint(root: Path, rels: list[str]) -> str:
    """The documented recipe, computed independently: sha256 of the canonical JSON of sizes + sha256s."""
    files = {rel: {"size": (root / rel).stat().st_size, "sha256": hashlib.sha256((root / rel).read_bytes()).hexdigest()}
             for rel in rels}
    doc = {"kind": "recflow-files", "files": files}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@pytest.fixture()
def src(tiny_recflow, tmp_path) -> Path:
    """A private copy of the tiny RecFlow folder (tests modify it)."""
    return Path(shutil.copytree(tiny_recflow, tmp_path / "src"))


def test_is_synthetic():
    assert is_synthetic("") and is_synthetic(None) and is_synthetic("synthetic") and is_synthetic(" synthetic ")
    assert not is_synthetic("/data/recflow") and not is_synthetic("gs://b/p")


def test_local_fingerprint_is_the_documented_hash_of_the_chosen_files(src):
    rels = _day_files("2024-01-14") + _day_files("2024-01-15") + ["others/id_cnt.pkl",
                                                                  "others/realshow_video_info.feather"]
    assert source_fingerprint(src, "2024-01-14:") == _hand_fingerprint(src, rels)
    # realshow/ is not staged, so it is not part of the fingerprint
    (src / "realshow" / "2024-01-14.feather").write_bytes(b"changed")
    assert source_fingerprint(src, "2024-01-14:") == _hand_fingerprint(src, rels)


def test_local_fingerprint_follows_content_not_timestamps(src):
    before = source_fingerprint(src)
    path = src / "request_id_dict" / "2024-01-14.pkl"
    data = path.read_bytes()
    path.write_bytes(data)  # same bytes, new mtime
    assert source_fingerprint(src) == before
    path.write_bytes(data + b"\0")
    assert source_fingerprint(src) != before
    # a day outside the selection does not matter
    assert source_fingerprint(src, "2024-01-15") == source_fingerprint(src, "2024-01-15:2024-01-15")


def test_synthetic_fingerprint_depends_on_parameters_days_and_generator(monkeypatch):
    a = source_fingerprint("synthetic", synthetic=TINY_SYNTHETIC)
    assert a == source_fingerprint("", synthetic=dict(TINY_SYNTHETIC))
    assert a != source_fingerprint("synthetic", synthetic={**TINY_SYNTHETIC, "seed": 2})
    assert a != source_fingerprint("synthetic", "2024-01-14:", synthetic=TINY_SYNTHETIC)
    import lcron.ingest as ing

    monkeypatch.setattr(ing, "_generator_hash", lambda: "another generator")
    assert a != source_fingerprint("synthetic", synthetic=TINY_SYNTHETIC)
    monkeypatch.undo()
    monkeypatch.setattr(ing, "__version__", __version__ + ".post1")
    assert a != source_fingerprint("synthetic", synthetic=TINY_SYNTHETIC)


def test_synthetic_parameters_are_checked():
    with pytest.raises(ConfigError, match="unknown parameter"):
        source_fingerprint("synthetic", synthetic={"num_dayz": 3})
    with pytest.raises(ConfigError, match="items"):
        source_fingerprint("synthetic", synthetic={"items": 10})


def test_ingest_stages_only_the_chosen_days(src, tmp_path):
    fp = source_fingerprint(src, "2024-01-14:2024-01-15")
    res = ingest(src, tmp_path / "out", days="2024-01-14:2024-01-15", expected_fingerprint=fp, copy=True,
                 progress=False)
    assert res.days == ["2024-01-14", "2024-01-15"] and res.fingerprint == fp and not res.skipped
    assert res.mode == "copy" and read_manifest(res.path)["mode"] == "copy"
    staged = sorted(str(p.relative_to(res.path)) for p in res.path.rglob("*") if p.is_file())
    expected = sorted(_day_files("2024-01-14") + _day_files("2024-01-15") +
                      ["others/id_cnt.pkl", "others/realshow_video_info.feather", MANIFEST_NAME])
    assert staged == expected
    for rel in expected:
        if rel != MANIFEST_NAME:
            assert (res.path / rel).read_bytes() == (src / rel).read_bytes()
    manifest = read_manifest(res.path)
    assert manifest["fingerprint"] == fp and manifest["days"] == res.days and manifest["source"] == str(src)
    assert manifest["files"]["others/id_cnt.pkl"]["sha256"] == \
        hashlib.sha256((src / "others/id_cnt.pkl").read_bytes()).hexdigest()
    # the staged folder is itself a RecFlow source with the same fingerprint
    assert source_fingerprint(res.path) == fp


def test_ingest_reuses_refuses_and_overwrites(src, tmp_path):
    out = tmp_path / "out"
    first = ingest(src, out, days="2024-01-15", copy=True, progress=False)
    again = ingest(src, out, days="2024-01-15", copy=True, progress=False)
    assert again.skipped and again.fingerprint == first.fingerprint
    with pytest.raises(OutputExistsError, match="already holds staged data"):
        ingest(src, out, days="2024-01-14", copy=True, progress=False)
    with pytest.raises(OutputExistsError, match="already holds staged data"):  # same days, but a reference
        ingest(src, out, days="2024-01-15", progress=False)
    other = ingest(src, out, days="2024-01-14", copy=True, overwrite=True, progress=False)
    assert other.days == ["2024-01-14"] and not (out / "all_stage" / "2024-01-15.feather").exists()
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    for overwrite in (False, True):  # a folder ingest did not make is never cleared, even with overwrite
        with pytest.raises(OutputExistsError, match=r"junk is not empty and is not an lcron ingest output "
                                                     r"\(ingest.json\) \(it holds notes.txt\).*even with --overwrite"):
            ingest(src, junk, overwrite=overwrite, progress=False)
        assert [p.name for p in junk.iterdir()] == ["notes.txt"] and (junk / "notes.txt").read_text() == "mine"


def test_ingest_overwrite_never_deletes_a_recflow_source(src, tmp_path):
    """--out pointed at a RecFlow source (the layout ingest itself writes, but no ingest.json
    or pending record) is refused with --overwrite and keeps every file (the old code deleted it)."""
    import shutil

    victim = tmp_path / "recflow-copy"
    shutil.copytree(src, victim)
    before = {p.relative_to(victim): p.read_bytes() for p in victim.rglob("*") if p.is_file()}
    with pytest.raises(OutputExistsError, match="is not an lcron ingest output"):
        ingest(src, victim, days="2024-01-14", overwrite=True, progress=False)
    assert {p.relative_to(victim): p.read_bytes() for p in victim.rglob("*") if p.is_file()} == before


def test_an_interrupted_staging_is_cleared_by_overwrite(src, tmp_path, monkeypatch):
    """A staging that died mid-copy carries ingest's pending record: --overwrite may clear it."""
    import lcron.ingest as ing

    out = tmp_path / "out"
    real = ing._copy
    calls = []

    def dies(a, b):
        calls.append(b)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(b))
        return real(a, b)

    monkeypatch.setattr(ing, "_copy", dies)
    with pytest.raises(OSError):
        ingest(src, out, copy=True, progress=False)
    monkeypatch.undo()
    assert (out / "_pending-ingest.json").is_file() and not (out / MANIFEST_NAME).exists()
    with pytest.raises(OutputExistsError, match="files that are not a complete ingest output"):
        ingest(src, out, copy=True, progress=False)
    res = ingest(src, out, copy=True, overwrite=True, progress=False)
    assert (out / MANIFEST_NAME).is_file() and not (out / "_pending-ingest.json").exists() and res.days


@pytest.mark.parametrize("copy", [False, True])
def test_ingest_refuses_data_changed_after_fingerprinting(src, tmp_path, copy):
    fp = source_fingerprint(src)
    path = src / "seq_effective_50_dict" / "2024-01-13.pkl"
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(DataError, match="changed after it was fingerprinted"):
        ingest(src, tmp_path / "out", expected_fingerprint=fp, copy=copy, progress=False)
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()


def test_missing_files_and_columns_are_named(src, tmp_path):
    (src / "request_id_dict" / "2024-01-14.pkl").unlink()
    (src / "seq_effective_50_dict" / "2024-01-14.pkl").unlink()
    with pytest.raises(DataError, match=r"2 required file\(s\) missing: .*request_id_dict/2024-01-14.pkl.*"
                                        r"seq_effective_50_dict/2024-01-14.pkl"):
        source_fingerprint(src)
    with pytest.raises(DataError, match="outside the available range"):
        source_fingerprint(src, "2024-02-01")
    table = feather.read_table(src / "all_stage" / "2024-01-15.feather")
    feather.write_feather(table.drop_columns(["rank_index"]), src / "all_stage" / "2024-01-15.feather")
    with pytest.raises(DataError, match=r"all_stage/2024-01-15.feather: required column\(s\) missing: rank_index"):
        ingest(src, tmp_path / "out", days="2024-01-15", progress=False)


def test_ingest_synthetic_matches_its_fingerprint(tmp_path):
    syn = {**TINY_SYNTHETIC, "num_days": 2}
    fp = source_fingerprint("synthetic", "2024-01-14", synthetic=syn)
    res = ingest("synthetic", tmp_path / "raw", days="2024-01-14", synthetic=syn, expected_fingerprint=fp,
                 progress=False)
    assert res.fingerprint == fp and res.days == ["2024-01-14"] and res.source == "synthetic"
    manifest = read_manifest(res.path)
    assert manifest["synthetic"]["seed"] == 1 and manifest["synthetic"]["requests_per_day"] == 80
    assert not (res.path / "all_stage" / "2024-01-13.feather").exists()
    assert ingest("synthetic", tmp_path / "raw", days="2024-01-14", synthetic=syn, progress=False).skipped
    with pytest.raises(DataError, match="changed after it was fingerprinted"):
        ingest("synthetic", tmp_path / "raw2", synthetic=syn, expected_fingerprint=fp, progress=False)


class MemorySource(Source):
    """An object-store-like source: metadata fingerprints (size, generation, md5), bytes on demand."""

    def __init__(self, root: Path, tmp: Path) -> None:
        self.uri = "gs://bucket/recflow"
        self.files = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        self.generation = {rel: 1 for rel in self.files}
        self.reported: dict[str, bytes] = {}  # what the metadata claims, if it differs from the bytes
        self.tmp = tmp

    def exists(self, rel):
        return rel in self.files

    def size(self, rel):
        return len(self.files[rel])

    def read_bytes(self, rel):
        return self.files[rel]

    def local_path(self, rel):
        p = self.tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(self.files[rel])
        return p

    def fingerprint(self, rel):
        data = self.reported.get(rel, self.files[rel])
        return {"size": len(data), "generation": self.generation[rel],
                "md5": base64.b64encode(hashlib.md5(data).digest()).decode()}

    def list_names(self, folder):
        return sorted(r.split("/", 1)[1] for r in self.files if r.startswith(folder + "/") and r.count("/") == 1)


def test_object_store_sources_use_metadata_and_check_the_copy(src, tmp_path, monkeypatch):
    import lcron.data.source as source_module

    mem = MemorySource(src, tmp_path / "cache")
    monkeypatch.setattr(source_module, "open_source", lambda uri: mem)
    fp = source_fingerprint(mem.uri, "2024-01-13")
    assert source_fingerprint(mem.uri, "2024-01-13") == fp
    mem.generation["all_stage/2024-01-13.feather"] = 2  # a rewrite with the same bytes is a new generation
    fp2 = source_fingerprint(mem.uri, "2024-01-13")
    assert fp2 != fp
    res = ingest(mem.uri, tmp_path / "out", days="2024-01-13", expected_fingerprint=fp2, copy=True, progress=False)
    assert res.fingerprint == fp2
    assert (res.path / "others" / "id_cnt.pkl").read_bytes() == (src / "others" / "id_cnt.pkl").read_bytes()
    # metadata that does not match the downloaded bytes (the object changed mid-copy) is refused
    mem.reported["request_id_dict/2024-01-13.pkl"] = b"x" * len(mem.files["request_id_dict/2024-01-13.pkl"])
    with pytest.raises(DataError, match="md5 of the copied bytes"):
        ingest(mem.uri, tmp_path / "out2", days="2024-01-13", copy=True, progress=False)


def _parse(add, argv):
    """Parse like `lcron` does: the CLI adds -q/--quiet to every subcommand."""
    p = argparse.ArgumentParser()
    p.add_argument("-q", "--quiet", action="store_true")
    add(p)
    return p.parse_args(argv)


def test_cli_commands(src, tmp_path, capsys):
    assert run_fingerprint(_parse(add_fingerprint_arguments, ["--source", str(src), "--days", "2024-01-15"])) == 0
    fp = capsys.readouterr().out.strip()
    assert fp == source_fingerprint(src, "2024-01-15")
    args = _parse(add_ingest_arguments, ["--source", str(src), "--days", "2024-01-15", "--out", str(tmp_path / "o"),
                                         "--expect-fingerprint", fp, "--quiet", "--copy"])
    assert run_ingest(args) == 0
    out = capsys.readouterr().out
    assert f"staged: {tmp_path / 'o'} (1 day(s): 2024-01-15..2024-01-15)" in out and f"fingerprint: {fp}" in out
    args = _parse(add_ingest_arguments, ["--source", str(src), "--days", "2024-01-15", "--out", str(tmp_path / "r"),
                                         "--quiet"])
    assert run_ingest(args) == 0 and run_ingest(args) == 0
    out = capsys.readouterr().out
    assert f"referenced {src.resolve()}: {tmp_path / 'r'} (1 day(s)" in out
    assert f"already referenced {src.resolve()}: {tmp_path / 'r'}" in out
    syn = _parse(add_fingerprint_arguments, ["--synthetic-days", "2", "--synthetic-requests", "80",
                                             "--synthetic-users", "50", "--synthetic-items", "300",
                                             "--synthetic-seed", "1"])
    run_fingerprint(syn)
    assert capsys.readouterr().out.strip() == source_fingerprint(
        "synthetic", synthetic={**TINY_SYNTHETIC, "num_days": 2})


def test_read_manifest_errors(tmp_path):
    with pytest.raises(DataError, match="missing"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"kind": "other"}))
    with pytest.raises(DataError, match="not an ingest manifest"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("[" * 100_000 + "]" * 100_000)  # nested past the parser's depth
    with pytest.raises(DataError, match="ingest manifest .*ingest.json is not valid JSON: RecursionError"):
        read_manifest(tmp_path)


def test_arrow_schema_only_check_accepts_any_integer_width(src, tmp_path):
    path = src / "all_stage" / "2024-01-13.feather"
    table = feather.read_table(path)
    idx = table.schema.get_field_index("rank_index")
    feather.write_feather(table.set_column(idx, "rank_index", table["rank_index"].cast(pa.int16())), path)
    assert ingest(src, tmp_path / "out", days="2024-01-13", progress=False).days == ["2024-01-13"]
    assert ingest(src, tmp_path / "copy", days="2024-01-13", copy=True, progress=False).days == ["2024-01-13"]


# --------------------------------------------------------------------------- reference mode
def _shard_bytes(folder: Path) -> dict[str, bytes]:
    """Every shard file's bytes (the manifests name their sources, so only the arrays)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.npy"))}


def test_reference_mode_copies_nothing_and_preprocesses_the_same_shards(src, tmp_path):
    from lcron.data.shards import preprocess

    fp = source_fingerprint(src, "2024-01-14:2024-01-15")
    res = ingest(src, tmp_path / "ref", days="2024-01-14:2024-01-15", expected_fingerprint=fp, progress=False)
    assert res.mode == "reference" and res.fingerprint == fp and not res.skipped
    assert [p.name for p in res.path.iterdir()] == [MANIFEST_NAME]  # no data in the output
    manifest = read_manifest(res.path)
    assert manifest["mode"] == "reference" and manifest["source"] == str(src.resolve())
    assert manifest["files"]["others/id_cnt.pkl"] == {
        "size": (src / "others/id_cnt.pkl").stat().st_size,
        "sha256": hashlib.sha256((src / "others/id_cnt.pkl").read_bytes()).hexdigest()}
    # the reference is a RecFlow source of the chosen days only, with the source's fingerprint
    assert source_fingerprint(res.path) == fp
    with pytest.raises(DataError, match="outside the available range"):
        source_fingerprint(res.path, "2024-01-13")
    via_ref = preprocess(res.path, tmp_path / "s-ref", 2, progress=False)
    direct = preprocess(src, tmp_path / "s-src", 2, days="2024-01-14:2024-01-15", progress=False)
    assert via_ref.days == direct.days == ["2024-01-14", "2024-01-15"]
    assert _shard_bytes(tmp_path / "s-ref") == _shard_bytes(tmp_path / "s-src") != {}
    assert ingest(src, tmp_path / "ref", days="2024-01-14:2024-01-15", progress=False).skipped


def test_a_source_changed_after_ingest_is_refused_by_name(src, tmp_path):
    from lcron.data.shards import preprocess

    ref = ingest(src, tmp_path / "ref", progress=False).path
    # same size, other bytes: caught when preprocessing fingerprints the day
    path = src / "request_id_dict" / "2024-01-14.pkl"
    data = bytearray(path.read_bytes())
    data[-2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"request_id_dict/2024-01-14.pkl: changed since ingest referenced it"):
        preprocess(ref, tmp_path / "s", 2, progress=False)
    # another size: caught as soon as the reference is opened
    path.write_bytes(bytes(data) + b"\0")
    with pytest.raises(DataError, match=r"referenced source changed since ingest: .*2024-01-14.pkl \(\d+ bytes, "
                                        r"ingest saw \d+ bytes\)"):
        source_fingerprint(ref)
    (src / "others" / "id_cnt.pkl").unlink()
    with pytest.raises(DataError, match=r"id_cnt.pkl \(missing, ingest saw \d+ bytes\)"):
        source_fingerprint(ref)


def test_a_reference_the_step_cannot_follow_names_the_copy_option(src, tmp_path):
    ref = ingest(src, tmp_path / "ref", progress=False).path
    shutil.move(src, tmp_path / "moved")
    with pytest.raises(DataError, match=r"referenced by .*ingest.json: this step cannot read the source.*"
                                        r"ingest_copy=true"):
        source_fingerprint(ref)
    doc = read_manifest(ref)
    (tmp_path / "r2").mkdir()
    (tmp_path / "r2" / MANIFEST_NAME).write_text(json.dumps({**doc, "source": str(ref)}))
    with pytest.raises(DataError, match="which is itself an ingest output"):
        source_fingerprint(tmp_path / "r2")
    (tmp_path / "r3").mkdir()
    (tmp_path / "r3" / MANIFEST_NAME).write_text(json.dumps({**doc, "files": {}}))
    with pytest.raises(DataError, match="needs 'source' and 'files'"):
        source_fingerprint(tmp_path / "r3")


def test_object_store_reference_keeps_metadata_fingerprints(src, tmp_path, monkeypatch):
    """A gs:// / s3:// reference downloads nothing at ingest and checks the objects' metadata later."""
    import lcron.data.source as source_module
    from lcron.data.source import ReferencedSource

    mem = MemorySource(src, tmp_path / "cache")
    mem.fingerprint = lambda rel, keep=False, _f=mem.fingerprint: _f(rel)
    real_open = source_module.open_source
    monkeypatch.setattr(source_module, "open_source", lambda uri: mem if str(uri) == mem.uri else real_open(uri))
    res = ingest(mem.uri, tmp_path / "ref", days="2024-01-13", progress=False)
    assert res.mode == "reference" and [p.name for p in res.path.iterdir()] == [MANIFEST_NAME]
    assert not (tmp_path / "cache" / "all_stage").exists()  # no all_stage download: columns are preprocess's
    manifest = read_manifest(res.path)
    assert manifest["source"] == mem.uri and manifest["files"]["all_stage/2024-01-13.feather"]["generation"] == 1
    ref = source_module.open_source(res.path)
    assert isinstance(ref, ReferencedSource) and ref.list_days() == ["2024-01-13"]
    assert ref.fingerprint("others/id_cnt.pkl") == manifest["files"]["others/id_cnt.pkl"]
    with pytest.raises(DataError, match="not one of the files ingest chose"):
        ref.read_bytes("all_stage/2024-01-14.feather")
    mem.generation["all_stage/2024-01-13.feather"] = 2  # rewritten since ingest
    with pytest.raises(DataError, match="gs://bucket/recflow/all_stage/2024-01-13.feather: changed since ingest"):
        ref.fingerprint("all_stage/2024-01-13.feather")
