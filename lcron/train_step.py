"""The training step, shared by the trainer and the profiler, and what makes it cheap on a GPU.

A step (METHODS.md section 3): forward every stage model, the method's loss, one backward
pass, step every optimizer. :class:`TrainStep` is exactly that. Measured on one H200, a
step at batch 1024 is almost all fixed cost - some 480 kernel launches, a dozen host
synchronisations and ~40 host-to-device copies, against well under a millisecond of
arithmetic - so the parts around it remove the fixed cost, never the arithmetic:

* :class:`LossLog` keeps every step's loss and loss parts on the step's device and reads
  them back every ``flush_every`` steps and at the end of a day. On a GPU reading a number
  back waits for every queued kernel, so a per-step read serialises host and device. The
  NaN guard checks the rows read back: it notices a bad step late, but still names the
  exact step and part, because every row is kept.
* :class:`DeviceDay` holds a training day's arrays on the device (a RecFlow day is well
  under 1 GB in the shards' narrow integer types) and gathers each batch there, so a step
  copies nothing from the host. The id range check runs once on the whole day instead of
  once per batch and model (each check is a host synchronisation).
* :class:`GraphedStep` captures the whole fixed-shape step - forward, loss, backward and
  the optimizers - as one CUDA graph after a few eager warm-up steps and replays it: one
  launch per step instead of hundreds. Whatever a captured step does must be free of host
  synchronisation (no ``.item()``, no data-dependent shapes, no tensors made from host
  values), which ``tests/test_train_step.py`` checks on CPU for every method and setting.
  If capturing fails, it warns once and goes on eagerly.
* :data:`DEVICE_DEFAULTS` says, per device kind, which of these are used and whether the
  models compile (one table; ``--compile``/``--no-compile``, ``--cuda-graph``/
  ``--no-cuda-graph`` and ``--tf32``/``--no-tf32`` override it).

On CPU none of this changes a number: the step's operations and their order are those
of the plain loop, so a CPU run gives bit-identical weights and logs.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor

from .batches import TARGET_ARRAYS, batch_slices
from .data.fields import MODEL_INPUTS
from .devices import DEVICE_DEFAULTS, DeviceDefaults, device_defaults
from .errors import ConfigError

__all__ = ["DeviceDefaults", "DEVICE_DEFAULTS", "StepPlan", "plan_step", "adam_options", "TrainStep", "LossLog",
           "DeviceDay", "GraphedStep", "make_stepper", "is_capturable", "float32_matmul_precision"]


@dataclass(frozen=True)
class StepPlan:
    """The resolved choices of one training run on one device."""

    device: torch.device
    compile: bool
    cuda_graph: bool
    tf32: bool
    device_resident: bool

    def describe(self) -> str:
        return (f"{self.device}: compile {'on' if self.compile else 'off'}, CUDA graph "
                f"{'on' if self.cuda_graph else 'off'}, TF32 {'on' if self.tf32 else 'off'}, data "
                f"{'on the device' if self.device_resident else 'gathered on the host'}")


def plan_step(device: torch.device | str, *, compile: bool | None = None, cuda_graph: bool | None = None,
              tf32: bool | None = None) -> StepPlan:
    """Per-device defaults from :data:`DEVICE_DEFAULTS`, overridden by every argument that is not None.

    Device kinds without an entry (e.g. ``mps``) get the CPU defaults. CUDA graphs and TF32
    need a CUDA device: asking for them elsewhere is a ConfigError, not a silent no-op.
    """
    device = torch.device(device)
    base = device_defaults(device)
    if device.type != "cuda":
        if cuda_graph:
            raise ConfigError(f"CUDA graphs need a CUDA device; this run is on {device} (drop --cuda-graph)")
        if tf32:
            raise ConfigError(f"TF32 matmuls need a CUDA device; this run is on {device} (drop --tf32)")
    return StepPlan(
        device=device,
        compile=base.compile if compile is None else bool(compile),
        cuda_graph=base.cuda_graph if cuda_graph is None else bool(cuda_graph),
        tf32=base.tf32 if tf32 is None else bool(tf32),
        device_resident=base.device_resident,
    )


def adam_options(device: torch.device) -> dict[str, Any]:
    """Keyword arguments of every Adam of a run on ``device``.

    On CUDA: ``capturable`` (the step counter and bias corrections stay on the device, so
    the update can be captured in a CUDA graph and never synchronises) and ``fused`` (one
    kernel per parameter group). On CPU: PyTorch's defaults, so CPU runs keep their numbers.
    """
    if torch.device(device).type == "cuda":
        return {"capturable": True, "fused": True}
    return {}


@contextlib.contextmanager
def float32_matmul_precision(tf32: bool) -> Iterator[None]:
    """Run the block with TF32 matmuls on or off (process-wide in PyTorch; restored after)."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


# --------------------------------------------------------------------------- the step
def _no_mark(phase: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


class TrainStep:
    """One optimisation step of a cascade on a batch; returns the detached loss row.

    The row is ``[total, *parts]`` (a float tensor on the step's device) in the order of
    :attr:`part_names`, known after the first call. Nothing in the step reads a value back
    to the host, so the same object can be captured in a CUDA graph.
    """

    def __init__(self, cascade: torch.nn.Module, loss: torch.nn.Module, optimizers: Mapping[str, Any]) -> None:
        self.cascade = cascade
        self.loss = loss
        self.optimizers = dict(optimizers)
        self.part_names: tuple[str, ...] | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        """Names of the loss row's entries: ``total`` then the parts."""
        if self.part_names is None:
            raise RuntimeError("TrainStep.columns is known after the first step")
        return ("total",) + self.part_names

    def __call__(self, batch: Mapping[str, Tensor], mark: Callable[[str], Any] | None = None,
                 skip_optimizers: tuple[str, ...] = ()) -> Tensor:
        """``mark(phase)``: a context manager around each phase (the profiler's labels).
        ``skip_optimizers``: optimizers whose ``step`` the caller runs itself (beside a CUDA graph)."""
        mark = mark or _no_mark
        with mark("forward"):
            logits = self.cascade(batch)
        with mark("loss"):
            result = self.loss(logits, batch["label"], batch["mask"])
        with mark("zero_grad"):
            for opt in self.optimizers.values():
                opt.zero_grad(set_to_none=True)
        with mark("backward"):
            result.total.backward()
        with mark("optimizer"):
            for name, opt in self.optimizers.items():
                if name not in skip_optimizers:
                    opt.step()
        names = tuple(result.parts)
        if self.part_names is None:
            self.part_names = names
        elif names != self.part_names:
            raise RuntimeError(f"loss parts changed between steps: {self.part_names} -> {names}")
        total = result.total.detach()
        parts = [v.detach().reshape(()).to(total.dtype) for v in result.parts.values()]
        return torch.stack([total.reshape(()), *parts])


class LossLog:
    """Loss rows kept on the device, read back ``flush_every`` rows at a time.

    ``append`` is an asynchronous device copy; ``read`` is one transfer (one synchronisation)
    for all rows since the last read, returned as a float64 array ``[rows, columns]``.
    """

    def __init__(self, flush_every: int = 64) -> None:
        if flush_every < 1:
            raise ConfigError(f"flush_every must be >= 1, got {flush_every}")
        self.flush_every = int(flush_every)
        self._buf: Tensor | None = None
        self._n = 0

    def __len__(self) -> int:
        return self._n

    @property
    def full(self) -> bool:
        return self._n >= self.flush_every

    def append(self, row: Tensor) -> None:
        if self._buf is None or self._buf.shape[1] != row.numel() or self._buf.device != row.device:
            if self._n:
                raise RuntimeError("LossLog: row width or device changed before the log was read")
            self._buf = row.new_zeros((self.flush_every, row.numel()))
        if self._n >= self.flush_every:
            raise RuntimeError("LossLog is full: read() it first")
        self._buf[self._n].copy_(row.reshape(-1), non_blocking=True)
        self._n += 1

    def read(self) -> np.ndarray:
        if self._buf is None or self._n == 0:
            return np.zeros((0, 0 if self._buf is None else self._buf.shape[1]))
        out = self._buf[: self._n].to("cpu", torch.float64).numpy()
        self._n = 0
        return out


# --------------------------------------------------------------------------- device-resident data
def _as_model_dtype(name: str, t: Tensor) -> Tensor:
    """What the models and losses read: ids as int64, masks and labels as float32 (as ``batches.gather``)."""
    return t.to(torch.float32) if name in ("label", "mask", "seq_mask") else t.to(torch.int64)


class DeviceDay:
    """A training day's arrays on ``device``, in the shards' own (narrow) dtypes; batches gathered there.

    ``batches`` yields exactly what :func:`lcron.batches.iter_batches` yields for the same
    order (same rows, same dtypes), without a host copy per step.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], device: torch.device | str,
                 names: tuple[str, ...] = MODEL_INPUTS + TARGET_ARRAYS) -> None:
        self.device = torch.device(device)
        self.names = tuple(names)
        # np.array copies the memory-mapped shard into writable memory that torch can own.
        self.arrays = {n: torch.from_numpy(np.array(arrays[n])).to(self.device) for n in self.names}
        self.num_requests = int(next(iter(self.arrays.values())).shape[0]) if self.arrays else 0

    @property
    def nbytes(self) -> int:
        return sum(t.element_size() * t.numel() for t in self.arrays.values())

    def check_ids(self, embedding: Any) -> None:
        """The id range check of ``embedding`` (a FeatureEmbedding) on the whole day, once."""
        embedding.check_day(self.arrays)

    def batches(self, order: np.ndarray, batch_size: int, drop_last: bool,
                batches_per_gather: int = 64) -> Iterator[dict[str, Tensor]]:
        """Why gathered ``batches_per_gather`` batches at a time: one ``index_select`` per array
        for a run of batches, then every batch is a slice of it (an int64 array's batch is a
        view), so a step launches a few conversions instead of a gather and a conversion per
        array, and the extra device memory is that run's rows, not a second copy of the day."""
        rows_all = torch.as_tensor(np.asarray(order, dtype=np.int64)).to(self.device)
        slices = batch_slices(len(order), batch_size, drop_last)
        for first in range(0, len(slices), batches_per_gather):
            run = slices[first:first + batches_per_gather]
            base = run[0].start
            rows = rows_all[base:run[-1].stop]
            gathered = {n: t.index_select(0, rows) for n, t in self.arrays.items()}
            for sl in run:
                yield {n: _as_model_dtype(n, t[sl.start - base:sl.stop - base]) for n, t in gathered.items()}
            del gathered


# --------------------------------------------------------------------------- CUDA graphs
class GraphedStep:
    """A :class:`TrainStep` captured as one CUDA graph after ``warmup`` eager steps.

    Every call is one real training step: the warm-up steps run eagerly on a side stream
    (as CUDA graph capture requires: lazy initialisations, optimizer state, compiled
    kernels happen there), the next call captures the step (capturing runs nothing) and
    replays it, and every later call copies the batch into the graph's input buffers and
    replays. A batch of another shape or dtype runs eagerly. If capturing fails, a warning
    names the reason and every later step runs eagerly (``mode`` says which is in use).
    """

    def __init__(self, step: TrainStep, warmup: int = 2) -> None:
        self.step = step
        # Optimizers that cannot be captured (e.g. lazy embedding Adam: its coalesce has a
        # data-dependent size) step beside the graph, right after each replay.
        self.beside = tuple(name for name, opt in step.optimizers.items() if not is_capturable(opt))
        self.warmup_left = int(warmup)
        self.graph: Any = None
        self.static_in: dict[str, Tensor] | None = None
        self.static_out: Tensor | None = None
        self.error: str | None = None
        self.replays = 0

    @property
    def part_names(self) -> tuple[str, ...] | None:
        return self.step.part_names

    @property
    def columns(self) -> tuple[str, ...]:
        return self.step.columns

    @property
    def warming_up(self) -> bool:
        """True until the step is captured (or capturing failed): the trainer's start-up steps."""
        return self.graph is None and self.error is None

    @property
    def mode(self) -> str:
        return "cuda_graph" if self.graph is not None else ("eager (capture failed)" if self.error else "warm-up")

    def _matches(self, batch: Mapping[str, Tensor]) -> bool:
        assert self.static_in is not None
        return batch.keys() == self.static_in.keys() and all(
            v.shape == self.static_in[k].shape and v.dtype == self.static_in[k].dtype for k, v in batch.items())

    def __call__(self, batch: Mapping[str, Tensor]) -> Tensor:
        if self.error is not None:
            return self.step(batch)
        if self.graph is None:
            if self.warmup_left > 0:
                self.warmup_left -= 1
                return self._side_stream_step(batch)
            return self._capture_and_replay(batch)
        if not self._matches(batch):
            return self.step(batch)
        for k, v in batch.items():
            self.static_in[k].copy_(v, non_blocking=True)  # type: ignore[index]
        self._replay()
        return self.static_out  # type: ignore[return-value]

    def _replay(self) -> None:
        self.graph.replay()
        for name in self.beside:
            self.step.optimizers[name].step()
        self.replays += 1

    def _side_stream_step(self, batch: Mapping[str, Tensor]) -> Tensor:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = self.step(batch)
        torch.cuda.current_stream().wait_stream(side)
        return out

    def _capture_and_replay(self, batch: Mapping[str, Tensor]) -> Tensor:
        self.static_in = {k: v.clone() for k, v in batch.items()}
        graph = torch.cuda.CUDAGraph()
        try:
            torch.cuda.synchronize()
            with torch.cuda.graph(graph):
                self.static_out = self.step(self.static_in, skip_optimizers=self.beside)
        except Exception as exc:  # any capture failure: eager from now on (capturing ran nothing)
            first = str(exc).splitlines()[0] if str(exc) else ""
            self.error = f"{type(exc).__name__}: {first}"
            self.static_in, self.static_out = None, None
            warnings.warn(f"CUDA graph capture of the training step failed ({self.error}); continuing eagerly "
                          "(slower). --no-cuda-graph skips the attempt.", RuntimeWarning, stacklevel=3)
            return self.step(batch)
        self.graph = graph
        self._replay()
        return self.static_out  # type: ignore[return-value]


def is_capturable(optimizer: Any) -> bool:
    """True for an optimizer whose ``step`` may run inside a CUDA graph (``capturable`` in every group)."""
    return all(group.get("capturable", False) for group in optimizer.param_groups)


def make_stepper(step: TrainStep, plan: StepPlan, warmup: int = 2) -> "TrainStep | GraphedStep":
    """The step as ``plan`` runs it: captured in a CUDA graph, or plain."""
    if plan.cuda_graph:
        if plan.device.type != "cuda":
            raise ConfigError(f"CUDA graphs need a CUDA device; the plan's device is {plan.device}")
        return GraphedStep(step, warmup=warmup)
    return step
