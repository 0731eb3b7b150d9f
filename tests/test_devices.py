"""Device choice: no silent fallback from a GPU to the CPU (lcron.devices.resolve_device)."""

from __future__ import annotations

import logging

import pytest
import torch

from lcron import cli, devices
from lcron.errors import ConfigError


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_cuda_names_the_reason():
    with pytest.raises(ConfigError, match=r"--device cuda was asked for, but CUDA is not usable here: "):
        devices.resolve_device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_a_cpu_build_of_torch_is_named(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    assert devices.cuda_unavailable_reason().startswith(f"this PyTorch ({torch.__version__}) is a CPU build")


def test_a_cuda_build_without_a_driver_says_what_the_node_needs(monkeypatch):
    """The GPU image on a node without a visible driver (a pod without a GPU request)."""
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(devices, "driver_cuda_version", lambda: None)
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "void")
    reason = devices.cuda_unavailable_reason()
    assert reason.startswith("no NVIDIA driver is visible to this process (libcuda.so.1 cannot be loaded; "
                             "NVIDIA_VISIBLE_DEVICES='void'); this PyTorch is built for CUDA 13.0 and needs a "
                             "driver >= 580.65.06")


def test_a_driver_too_old_for_the_wheel_is_named(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(devices, "driver_cuda_version", lambda: (12, 4))
    assert devices.cuda_unavailable_reason() == ("the NVIDIA driver supports CUDA up to 12.4, but this PyTorch is "
                                                 "built for CUDA 13.0: update the node's driver to a driver >= "
                                                 "580.65.06")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the choice of a machine without CUDA")
def test_auto_says_what_it_chose(caplog):
    with caplog.at_level(logging.INFO, logger="lcron"):
        assert devices.resolve_device("auto") == torch.device("cpu")
    assert any(r.getMessage().startswith("device auto: cpu (") for r in caplog.records)


def test_an_unknown_device_is_a_config_error():
    with pytest.raises(ConfigError, match="'tpu9' is not a device torch knows"):
        devices.resolve_device("tpu9")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_train_with_device_cuda_fails_naming_the_reason(tiny_shards_2, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["train", "--shards", str(tiny_shards_2.root), "--out", str(out), "--method", "bce",
                     "--batch-size", "16", "--device", "cuda", "--no-compile", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(
        "lcron train: error: --device cuda was asked for, but CUDA is not usable here: this PyTorch")
    assert not out.exists()


def test_serve_eval_compiles_by_default_on_cpu_only():
    """Measured (docs/benchmarks.md, "GPU"): compiled scoring wins on CPU, eager on an H200;
    the command line leaves the choice to the device unless --compile/--no-compile is given."""
    from lcron import cli
    from lcron.devices import device_defaults

    assert device_defaults("cpu").serve_compile is True
    assert device_defaults("cuda").serve_compile is False
    parser = cli.build_parser(only="serve-eval")
    assert parser.parse_args(["serve-eval", "--model", "r"]).compile is None
    assert parser.parse_args(["serve-eval", "--model", "r", "--no-compile"]).compile is False
