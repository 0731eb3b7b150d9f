"""lcron.bench: the CI-sized run completes and writes valid JSON (no timing assertions)."""

from __future__ import annotations

import json

import pytest

from lcron import bench, cli
from lcron.errors import ConfigError


def test_quick_bench_writes_valid_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = cli.main(["bench", "--quick", "--json", str(out), "--data-dir", str(tmp_path / "data"), "-q"])
    stdout = capsys.readouterr().out
    assert code == 0
    result = json.loads(out.read_text())
    assert result["schema"] == "lcron-bench/1" and result["mode"] == "quick"
    assert result["environment"]["device"] == "cpu" and result["environment"]["usable_cpus"] >= 1
    assert result["data"]["requests"] == 200 and result["data"]["days"] == 2
    rows = [r for r in result["results"] if r["name"] == "preprocess"]
    assert [r["setting"] for r in rows] == ["two_stage", "three_stage"]
    for r in rows:
        assert r["unit"] == "requests/s" and r["value"] > 0 and r["requests"] == 200
        assert r["peak_rss_mb"] >= r["baseline_rss_mb"] > 0
    assert "preprocess" in stdout and "requests/s" in stdout
    # The data set is reused on the next run (same parameters): the marker stays.
    marker = tmp_path / "data" / "quick.json"
    assert json.loads(marker.read_text())["requests_per_day"] == 100
    config = tmp_path / "data" / "quick" / "synthetic_config.json"
    before = config.stat().st_mtime_ns
    ctx = bench.BenchContext(mode="quick", data_dir=tmp_path / "data", work_dir=tmp_path, progress=False)
    assert ctx.recflow() == config.parent and config.stat().st_mtime_ns == before


def test_registry_and_bad_arguments():
    assert "preprocess" in bench.BENCHMARKS
    with pytest.raises(ConfigError, match="registered twice"):
        bench.register("preprocess")(lambda ctx: [])
    with pytest.raises(ConfigError, match="unknown benchmark"):
        bench.run_benchmarks(mode="quick", only=["nope"], json_path=None)
    with pytest.raises(ConfigError, match="bench mode"):
        bench.run_benchmarks(mode="huge", json_path=None)


def test_format_table():
    text = bench.format_table([{"name": "preprocess", "setting": "two_stage", "value": 12345.6,
                                "unit": "requests/s", "wall_s": 0.5, "all_values": [1, 2]}])
    assert "12,345.6" in text and "wall_s=0.5" in text and "all_values" not in text
