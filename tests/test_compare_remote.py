"""``lcron compare`` over gs:// and s3:// pipeline roots, against moto's S3 server and a GCS
emulator on loopback: the same tables as the local folders, only the evaluation files
downloaded (never the weights beside them), the URIs in the report, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from lcron import remote
from lcron.compare import compare
from lcron.errors import DataError

from object_stores import gcs_emulator, moto_s3
from test_compare import make_eval, make_serving

BUCKET = "lcron-pipeline"
DECOY = "model.pt"


# --------------------------------------------------------------------------- servers
@pytest.fixture(scope="module")
def s3_server(free_port):
    """moto's S3 server on a free loopback port; AWS_ENDPOINT_URL and test credentials point at it."""
    with moto_s3(free_port(), BUCKET):
        yield


@pytest.fixture(scope="module")
def gcs_server(free_port):
    """A gcp-storage-emulator on a free loopback port; STORAGE_EMULATOR_HOST points at it."""
    with gcs_emulator(free_port(), BUCKET):
        yield


def _upload_s3(files: dict[str, Path]) -> None:
    import boto3

    client = boto3.client("s3")
    for key, path in files.items():
        client.upload_file(str(path), BUCKET, key)


def _upload_gcs(files: dict[str, Path]) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    bucket = storage.Client(project="test", credentials=AnonymousCredentials()).bucket(BUCKET)
    for key, path in files.items():
        bucket.blob(key).upload_from_filename(str(path))


@pytest.fixture(scope="module", params=["s3", "gs"])
def store(request):
    """One backend (its server running): scheme, bucket URI and an upload function."""
    request.getfixturevalue("s3_server" if request.param == "s3" else "gcs_server")
    upload = _upload_s3 if request.param == "s3" else _upload_gcs
    return SimpleNamespace(scheme=request.param, bucket=f"{request.param}://{BUCKET}", upload=upload)


# --------------------------------------------------------------------------- two finished runs
@pytest.fixture(scope="module")
def runs(tiny_shards_2, tmp_path_factory):
    """Two runs trained and evaluated by the library (2 seeds, 1 step per day), a serving
    evaluation of one, their local comparison, and the files of a KFP-style pipeline root:
    <pipeline>/<run id>/<task>/<execution id>/<output>/..., with the model weights in the
    train task's folder and a large decoy model.pt inside an evaluation folder."""
    from lcron.evaluate import evaluate
    from lcron.train import TrainConfig, train

    base = tmp_path_factory.mktemp("compare-remote")
    local = base / "local"
    for method in ("bce", "lcron"):
        train(tiny_shards_2, local / method, TrainConfig(method=method, batch_size=20, seeds=(1, 2), compile=False),
              progress=False, max_steps_per_day=1)
        evaluate(local / method, device="cpu", compile=False, progress=False)
    day = json.loads((local / "bce" / "eval" / "metrics.json").read_text())["days"][0]
    make_serving(local / "serve-bce", local / "bce", {100: [0.30, 0.34], 200: [0.5, 0.6]}, day=day)
    reference = compare([local], base / "cmp-local", bootstrap=200, seed=3, progress=False)

    decoy = base / DECOY
    decoy.write_bytes(np.random.default_rng(0).bytes(3 << 20))
    files: dict[str, Path] = {}
    for i, method in enumerate(("bce", "lcron")):
        run = f"lcron-cascade/run-{i}"
        for f in sorted((local / method).rglob("*")):
            rel = f.relative_to(local / method).as_posix()
            if f.is_file() and not rel.startswith("eval/"):
                files[f"{run}/train/exec-1{i}/model/{rel}"] = f
        for f in sorted((local / method / "eval").iterdir()):
            files[f"{run}/evaluate/exec-2{i}/evaluation/{f.name}"] = f
        files[f"{run}/evaluate/exec-2{i}/evaluation/{DECOY}"] = decoy  # not listed in the marker
    files["lcron-cascade/run-0/serve-eval/exec-30/serving/serving.json"] = local / "serve-bce" / "serving.json"
    other = base / "other-metrics.json"
    other.write_text(json.dumps({"accuracy": 0.9}))
    files["lcron-cascade/run-9/other/exec-40/metrics/metrics.json"] = other  # another tool's file
    return SimpleNamespace(local=local, reference=reference, files=files, decoy=decoy, base=base)


@pytest.fixture
def spy(monkeypatch):
    """Every object key the comparison read or downloaded, and the local copies it wrote."""
    seen = SimpleNamespace(keys=[], dests=[])
    for cls in (remote._S3Store, remote._GCSStore):
        def read(self, key, _orig=cls.read):
            seen.keys.append(key)
            return _orig(self, key)

        def download(self, key, dest, _orig=cls.download):
            seen.keys.append(key)
            seen.dests.append(dest)
            return _orig(self, key, dest)

        monkeypatch.setattr(cls, "read", read)
        monkeypatch.setattr(cls, "download", download)
    return seen


def _upload(store, runs, prefix: str) -> str:
    store.upload({f"{prefix}/{key}": path for key, path in runs.files.items()})
    return f"{store.bucket}/{prefix}"


def _numbers(res: dict) -> dict:
    """The comparison without where its files came from."""
    out = {}
    for name, tab in res["settings"].items():
        rows = [{k: v for k, v in r.items() if k not in ("eval_dir", "serving_file")} for r in tab["rows"]]
        out[name] = {**tab, "rows": rows}
    return out


def _table_lines(md: str) -> list[str]:
    return [ln for ln in md.splitlines() if ln.startswith(("| bce ", "| lcron "))]


# --------------------------------------------------------------------------- the comparison
def test_a_remote_pipeline_root_compares_like_the_local_folders(store, runs, spy, tmp_path, caplog):
    uri = _upload(store, runs, "same")
    with caplog.at_level("INFO", logger="lcron"):
        res = compare([uri + "/"], tmp_path / "cmp", bootstrap=200, seed=3, progress=False)
    assert _numbers(res) == _numbers(runs.reference)
    tab = res["settings"]["two_stage"]
    assert {r["label"] for r in tab["rows"]} == {"bce", "lcron"}
    assert tab["serving_k1"] == [100, 200]
    rows = {r["label"]: r for r in tab["rows"]}
    assert rows["bce"]["eval_dir"] == f"{uri}/lcron-cascade/run-0/evaluate/exec-20/evaluation"
    assert rows["bce"]["serving_file"] == f"{uri}/lcron-cascade/run-0/serve-eval/exec-30/serving/serving.json"
    assert res["inputs"]["paths"] == [uri]

    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert _table_lines(md) == _table_lines((runs.base / "cmp-local" / "compare.md").read_text())
    assert f"{uri}/lcron-cascade/run-1/evaluate/exec-21/evaluation/metrics.json" in md
    assert "lcron-compare-" not in md and "lcron-compare-" not in (tmp_path / "cmp" / "compare.json").read_text()

    # only the evaluation files (and the documents that say what a folder is) came over
    fetched = {k.removeprefix("same/") for k in spy.keys}
    assert not any(k.endswith(DECOY) for k in fetched)
    expected = {f"lcron-cascade/run-{i}/evaluate/exec-2{i}/evaluation/{name}" for i in (0, 1)
                for name in ("metrics.json", "per_request.npz", "quota_sweep.json", "quota_sweep.png",
                             "_complete-evaluation.json")}
    expected |= {"lcron-cascade/run-0/serve-eval/exec-30/serving/serving.json",
                 "lcron-cascade/run-9/other/exec-40/metrics/metrics.json"}
    assert fetched == expected
    assert len(spy.keys) == len(fetched)  # each once
    assert spy.dests and not any(Path(d).exists() for d in spy.dests)  # the temporary copy is gone
    line = next(r.getMessage() for r in caplog.records if "fetched" in r.getMessage())
    listed = sum(p.stat().st_size for p in runs.files.values())
    got = sum((runs.files[k]).stat().st_size for k in fetched)
    assert (f"{uri}/: 2 evaluation(s), 1 serving evaluation(s); fetched {len(expected)} of {len(runs.files)} "
            f"object(s), {remote.size_text(got)} of {remote.size_text(listed)}") in line
    assert got < runs.decoy.stat().st_size / 10


def test_one_run_folder_or_one_metrics_file_by_uri(store, runs, spy, tmp_path):
    uri = _upload(store, runs, "one")
    evaluation = f"{uri}/lcron-cascade/run-1/evaluate/exec-21/evaluation"
    by_folder = compare([evaluation], tmp_path / "a", bootstrap=50, progress=False)["settings"]["two_stage"]
    by_file = compare([f"{evaluation}/metrics.json"], tmp_path / "b", bootstrap=50,
                      progress=False)["settings"]["two_stage"]
    for tab in (by_folder, by_file):
        assert [(r["label"], r["eval_dir"]) for r in tab["rows"]] == [("lcron", evaluation)]
        local = next(r for r in runs.reference["settings"]["two_stage"]["rows"] if r["label"] == "lcron")
        assert tab["rows"][0]["values"] == {k: v for k, v in local["values"].items() if not k.startswith("serving/")}
    assert not any(k.endswith(DECOY) for k in spy.keys)


def test_an_unfinished_remote_evaluation_is_left_out_by_its_uri(store, runs, tmp_path, caplog):
    from lcron import outputs

    busy = tmp_path / "busy"
    shutil.copytree(runs.local / "lcron" / "eval", busy)
    outputs.begin(busy, "evaluation", "lcron evaluate --model X")  # a re-evaluation under way
    files = {k: p for k, p in runs.files.items() if "run-1/" not in k}
    files.update({f"lcron-cascade/run-1/evaluate/exec-21/evaluation/{p.name}": p for p in busy.iterdir()})
    store.upload({f"busy/{k}": p for k, p in files.items()})
    uri = f"{store.bucket}/busy"
    res = compare([uri], tmp_path / "cmp", bootstrap=50, progress=False)
    assert [r["label"] for r in res["settings"]["two_stage"]["rows"]] == ["bce"]
    note = f"left out: evaluation {uri}/lcron-cascade/run-1/evaluate/exec-21/evaluation is incomplete"
    assert note in caplog.text and note in (tmp_path / "cmp" / "compare.md").read_text()


def test_evaluations_from_before_completion_markers(store, spy, tmp_path):
    """No marker: metrics.json (here without a file list) and per_request.npz are fetched."""
    ids = np.arange(30)
    rng = np.random.default_rng(7)
    for run, method in (("r1", "bce"), ("r2", "arf")):
        ev = make_eval(tmp_path / "legacy", run, method, rng.random((2, 30)).round(1), ids)
        (ev / "notes.bin").write_bytes(b"x" * 4096)  # not an evaluation file
    local = compare([tmp_path / "legacy"], tmp_path / "cmp-local", bootstrap=100, progress=False)
    store.upload({f"legacy/{p.relative_to(tmp_path / 'legacy').as_posix()}": p
                  for p in sorted((tmp_path / "legacy").rglob("*")) if p.is_file()})
    res = compare([f"{store.bucket}/legacy"], tmp_path / "cmp", bootstrap=100, progress=False)
    assert _numbers(res) == _numbers(local)
    assert sorted(k.rpartition("/")[2] for k in spy.keys) == ["metrics.json", "metrics.json", "per_request.npz",
                                                             "per_request.npz"]


# --------------------------------------------------------------------------- errors
def test_errors_name_the_uri(store, runs, tmp_path):
    _upload(store, runs, "errs")
    empty = f"{store.bucket}/errs/no-such-prefix"
    with pytest.raises(DataError, match=f"^{empty}: nothing found"):
        compare([empty], tmp_path / "a", progress=False)
    missing = f"{store.scheme}://no-such-bucket/root"
    with pytest.raises(DataError, match=f"^{store.scheme}://no-such-bucket.*: bucket no-such-bucket does not exist"):
        compare([missing], tmp_path / "b", progress=False)
    weights = f"{store.bucket}/errs/lcron-cascade/run-0/train"
    with pytest.raises(DataError, match=f"no lcron evaluation .* under {weights} "):
        compare([weights], tmp_path / "c", progress=False)
    assert not (tmp_path / "a" / "compare.json").exists()


def test_no_s3_credentials_names_the_uri_and_the_variables(s3_server, monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    import boto3

    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # it keeps the credentials it found first
    with pytest.raises(DataError, match=f"^s3://{BUCKET}/root: no S3 credentials found; set AWS_ACCESS_KEY_ID"):
        compare([f"s3://{BUCKET}/root"], tmp_path / "out", progress=False)


def test_no_gcs_credentials_names_the_uri(monkeypatch, tmp_path):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(DataError, match=f"^gs://{BUCKET}/root: cannot create a Google Cloud Storage client .*"
                                        "missing.json was not found.*set up application default credentials"):
        compare([f"gs://{BUCKET}/root"], tmp_path / "out", progress=False)


def test_cli_compare_s3_shows_download_progress(s3_server, runs, tmp_path, capsys):
    from lcron.cli import main

    _upload_s3({f"cli/{k}": p for k, p in runs.files.items()})
    assert main(["compare", f"s3://{BUCKET}/cli", "--out", str(tmp_path / "out"), "--bootstrap", "50"]) == 0
    err = capsys.readouterr().err
    assert f"download s3://{BUCKET}/cli: 6/6 file" in err and "KiB" in err
    assert f"s3://{BUCKET}/cli: 2 evaluation(s), 1 serving evaluation(s); fetched 12 of" in err
    assert main(["compare", f"s3://{BUCKET}/nothing", "--out", str(tmp_path / "out2")]) == 2
    assert f"s3://{BUCKET}/nothing: nothing found" in capsys.readouterr().err
