"""Which device a step runs on, and what each device kind does by default.

Training (:mod:`lcron.train_step`), evaluation and the serving evaluation resolve
``--device`` and their defaults here, so a reading step does not import the trainer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import torch

from .errors import ConfigError, DataError
from .logs import get_logger

#: The oldest Linux NVIDIA driver branch that runs each CUDA major (CUDA's minor-version
#: compatibility: any driver of the major's first release runs every minor of it).
MIN_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}


def resolve_device(name: str) -> torch.device:
    """The device a step runs on.

    ``auto``: CUDA when usable, else the CPU, and the choice is logged with its reason (a
    step on a GPU node that cannot use the GPU says so). ``cuda``/``cuda:N`` where CUDA is
    not usable is a ConfigError naming why (a CPU build of torch, no driver visible, a driver
    too old for the CUDA torch was built with): the step never falls back to the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            get_logger(__name__).info("device auto: cuda (%s, CUDA %s)", torch.cuda.get_device_name(0),
                                      torch.version.cuda)
            return torch.device("cuda")
        get_logger(__name__).info("device auto: cpu (%s)", cuda_unavailable_reason())
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} was asked for, but CUDA is not usable here: {cuda_unavailable_reason()}")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device {name!r} is not a device torch knows ({exc}); use auto, cpu or cuda") from None


def driver_cuda_version() -> tuple[int, int] | None:
    """The CUDA version the NVIDIA driver supports, as (major, minor), read from libcuda
    itself (``cuDriverGetVersion``); None where no driver library can be loaded."""
    import ctypes

    try:
        lib = ctypes.CDLL("libcuda.so.1")
        version = ctypes.c_int()
        if lib.cuDriverGetVersion(ctypes.byref(version)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return version.value // 1000, (version.value % 1000) // 10


def cuda_unavailable_reason() -> str:
    """Why ``torch.cuda.is_available()`` is False here, in words a user can act on."""
    built = torch.version.cuda
    if built is None:
        return (f"this PyTorch ({torch.__version__}) is a CPU build without CUDA; the GPU image carries the CUDA "
                "build (docs/docker.md)")
    major = int(built.split(".")[0])
    need = f"a driver >= {MIN_DRIVER[major]}" if major in MIN_DRIVER else f"a driver for CUDA {built}"
    driver = driver_cuda_version()
    if driver is None:
        visible = os.environ.get("NVIDIA_VISIBLE_DEVICES")
        return (f"no NVIDIA driver is visible to this process (libcuda.so.1 cannot be loaded; NVIDIA_VISIBLE_DEVICES="
                f"{visible!r}); this PyTorch is built for CUDA {built} and needs {need}. On a cluster the step must "
                "run on a GPU node with a GPU requested (the GPU pipeline requests one on train, evaluate and serving)")
    if driver[0] < major:
        return (f"the NVIDIA driver supports CUDA up to {driver[0]}.{driver[1]}, but this PyTorch is built for CUDA "
                f"{built}: update the node's driver to {need}")
    try:
        count = torch.cuda.device_count()
    except RuntimeError as exc:
        return f"CUDA could not be initialised ({str(exc).strip().splitlines()[0]})"
    if count == 0:
        return (f"the NVIDIA driver (CUDA {driver[0]}.{driver[1]}) sees no GPU (NVIDIA_VISIBLE_DEVICES="
                f"{os.environ.get('NVIDIA_VISIBLE_DEVICES')!r}, CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
    try:
        torch.cuda.init()
    except Exception as exc:  # noqa: BLE001 - torch raises several kinds here; the message is the point
        return f"CUDA could not be initialised ({str(exc).strip().splitlines()[0]})"
    return "torch.cuda.is_available() is False"


@dataclass(frozen=True)
class DeviceDefaults:
    """What a device kind does by default (see the module docstring for each part)."""

    compile: bool                  # training: torch.compile the DIN attention core
    cuda_graph: bool               # training: capture the step as one CUDA graph
    tf32: bool                     # TF32 tensor-core matmuls for float32
    device_resident: bool          # training: the day's arrays live on the device
    eval_batch_size: int           # evaluation: requests per inference batch
    eval_compile_from: int | None  # evaluation: request-seeds from which it compiles (None: never)
    serve_compile: bool            # serve-eval: torch.compile the later stage models
    loss_read_every: int           # training: steps between reads of the loss rows (a sync on CUDA)


#: Chosen from measurements (docs/benchmarks.md, "GPU"): on CPU the compiled attention core
#: makes a step ~5x faster. On an H200 (2026-12-04) compiled kernels in a graph step 1.39x
#: (two-stage) and 1.24x (three-stage) faster than eager ones, but compiling costs 9 - 12 s
#: per process: over the paper's 36 days that nets 3 - 6 s of a 5 - 7 minute method-seed,
#: while every short run pays the compile, and only the eager path's CPU/GPU fidelity has
#: been measured - so CUDA stays eager in a graph (`--compile` opts in). TF32 stays off on
#: CUDA: the fidelity checks on the GPU (bench/gpu_check.py) put float32 within the reference
#: cases' tolerance and TF32 not reliably, and TF32 buys no measurable speed here.
#:
#: Evaluation (forward only) on CPU: eager DIN runs its attention core in cache-sized blocks
#: (lcron.models.fused.blocked_attention_pool), at 512 requests per batch, until an evaluation
#: is big enough to pay for compiling. Measured on the 2-core machine, 2026-11-30, whole
#: `lcron evaluate` processes of a two-stage LCRON run (2 seeds, 1 and 3 days of 6,000
#: requests): compiled scoring saves ~25 us per request and seed (71 against 96 us), but a
#: compiling process starts ~2.8 s later with inductor's cache warm and ~7.3 s later with it
#: cold (a batch shape not compiled before): break-even near 110,000 and 290,000
#: request-seeds. The default compiles from 200,000. The two paths' numbers agree to float
#: rounding (docs/benchmarks.md, "Evaluation start-up").
#:
#: Loss rows: on CUDA reading them back is a synchronisation, so they are read every 64 steps;
#: on CPU reading costs nothing, so every step (the progress line shows the current loss, and
#: a non-finite loss is caught at its step).
#:
#: serve-eval: compiled later stages score K1 candidates ~10x faster on CPU; on an H200
#: (2026-12-04, 20,000 requests, K1 up to 1,000) eager scoring ran 11,600-12,800 requests/s
#: and the compiled one 6,800 after a compile that held the first seed to 895 (docs/benchmarks.md, "GPU").
DEVICE_DEFAULTS: dict[str, DeviceDefaults] = {
    "cpu": DeviceDefaults(compile=True, cuda_graph=False, tf32=False, device_resident=False,
                          eval_batch_size=512, eval_compile_from=200_000, serve_compile=True,
                          loss_read_every=1),
    "cuda": DeviceDefaults(compile=False, cuda_graph=True, tf32=False, device_resident=True,
                           eval_batch_size=4096, eval_compile_from=None, serve_compile=False,
                           loss_read_every=64),
}


def device_defaults(device: "torch.device | str") -> DeviceDefaults:
    """The defaults of ``device``'s kind; kinds without an entry (e.g. ``mps``) get the CPU's."""
    return DEVICE_DEFAULTS.get(torch.device(device).type, DEVICE_DEFAULTS["cpu"])


def default_eval_batch_size(device: "torch.device | str") -> int:
    """Requests per inference batch of an evaluation on ``device`` unless told otherwise."""
    return device_defaults(device).eval_batch_size


def default_eval_compile(device: "torch.device | str", request_seeds: int) -> bool:
    """Whether an evaluation scoring ``request_seeds`` (requests x seeds) compiles DIN on ``device``.

    Compiling costs a fixed start-up (the compiler's import, the graph) and saves a little
    per request, so it pays only for big evaluations; see :data:`DEVICE_DEFAULTS`."""
    threshold = device_defaults(device).eval_compile_from
    return threshold is not None and request_seeds >= threshold


# ------------------------------------------------------------------ memory
def _available_bytes(device: torch.device) -> int | None:
    """Memory free for new tensors on ``device`` (None where it cannot be read)."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    from .memtrim import available_bytes

    return available_bytes()


def check_table_memory(embedding_sizes: Mapping[str, int], num_models: int, dim: int, device: torch.device,
                       where: str, training: bool = True) -> None:
    """Refuse, before anything is allocated, vocabularies whose embedding tables cannot fit.

    Each stage model holds a table of ``sum(embedding_sizes)`` rows x ``dim`` float32, and
    when ``training`` Adam keeps two moments of it: a lower bound of what the step needs. A
    damaged or hostile id_cnt (10^12 videos) would otherwise end in an allocation error deep
    inside torch, or in the kernel's out-of-memory killer."""
    bad = {k: v for k, v in embedding_sizes.items()
           if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v) or not 1 <= int(v) < 2**31}
    if bad:
        raise DataError(f"{where}: embedding table sizes must be integers in [1, 2^31), got {bad}")
    rows = sum(int(v) for v in embedding_sizes.values())
    copies = 3 if training else 1
    need = copies * num_models * rows * int(dim) * 4
    free = _available_bytes(device)
    if free is None or need <= free:
        return
    largest = max(embedding_sizes, key=lambda k: int(embedding_sizes[k]))
    adam = ", with Adam's two moments" if training else ""
    raise DataError(f"the embedding tables need at least {need / 2**30:,.1f} GiB on {device} ({num_models} stage "
                    f"models x {rows:,} rows x dim {dim}{adam}) and {free / 2**30:,.1f} GiB are available; the largest "
                    f"vocabulary is {largest!r} with {int(embedding_sizes[largest]):,} rows ({where}): is the "
                    "source's others/id_cnt.pkl right?")
