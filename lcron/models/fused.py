"""DIN's attention core, eager and fused (``torch.compile``), with an eager fallback.

The core is where a cascade step spends its time: for B requests, N candidates, L sequence
steps and H = 80 attention units it touches a [B, N, L, H] tensor (B = 1024, N = 50:
205M floats, 820 MB per intermediate). Two things make it cheap:

1. ``ReluScores``, a hand-written autograd function for
   a_{bnl} = sum_h w_h relu(p_{bnh} + q_{blh}) + c
   that stores only its inputs (p, q, w), never the [B, N, L, H] activations, and whose
   backward needs two passes over (b, n, l, h) instead of three:
     with m = 1[p_{bnh} + q_{blh} > 0] and g = dLoss/da,
     dp_{bnh} = w_h sum_l g_{bnl} m,   dq_{blh} = w_h sum_n g_{bnl} m,
     dw_h = sum_{b,n} R_{bnh} with R_{bnh} = sum_l g_{bnl} relu(p + q),   dc = sum g.
   dp and R reduce over the same axis (l), so one fused loop computes both; the naive
   dw (a reduction over all of b, n, l at once) was the slowest loop inductor generated.
2. ``torch.compile`` (inductor; C++/OpenMP on CPU) turns each of the forward, the
   backward and the masked softmax + pooling into single fused loops.

Measured on the 2-core dev machine (B = 1024, N = 40, one thread, CPU time of forward +
backward of the core): plain autograd compiled as one graph 126 ms, this split 81 ms;
eager autograd 1.8 s, and it needs GBs for the activations.

``attention_pool`` is the eager path (plain autograd; ``compile=False``) and the oracle;
``blocked_attention_pool`` is the same for inference without a compiler, in cache-sized blocks.
``compiled_attention_pool()`` is the fused one, wrapped in ``FallbackCompiled``, which
falls back to the eager path when compilation fails (no C++ compiler, unsupported
platform): it warns once and stays eager.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any, Callable

import torch
from torch import Tensor


# ----------------------------------------------------------------------------- math
def relu_scores(item_proj: Tensor, seq_proj: Tensor, out_weight: Tensor, out_bias: Tensor) -> Tensor:
    """a_{bnl} = sum_h w_h relu(item_proj_{bnh} + seq_proj_{blh}) + c  ->  [B, N, L]."""
    # In-place ReLU: the sum is a temporary, so eager mode keeps one [B, N, L, H] tensor, not two.
    return torch.matmul(torch.relu_(item_proj.unsqueeze(2) + seq_proj.unsqueeze(1)), out_weight) + out_bias


def relu_scores_backward(item_proj: Tensor, seq_proj: Tensor, out_weight: Tensor,
                         grad: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of :func:`relu_scores` w.r.t. (item_proj, seq_proj, out_weight, out_bias) given dL/da."""
    pre = item_proj.unsqueeze(2) + seq_proj.unsqueeze(1)                    # [B, N, L, H]
    g = grad.unsqueeze(-1)                                                  # [B, N, L, 1]
    gated = torch.where(pre > 0, g, torch.zeros_like(g))
    per_candidate = (g * torch.relu(pre)).sum(2)                            # R [B, N, H], same loop as dp
    return (gated.sum(2) * out_weight, gated.sum(1) * out_weight,
            per_candidate.sum((0, 1)), grad.sum())


def masked_softmax_pool(scores: Tensor, seq_emb: Tensor, seq_mask: Tensor) -> Tensor:
    """interest_{bn} = sum_l alpha_{bnl} seq_emb_{bl} with alpha = softmax of scores over valid steps.

    alpha_{bnl} = m_{bl} exp(a_{bnl} - s_{bn}) / sum_l' m_{bl'} exp(a_{bnl'} - s_{bn}), where
    s_{bn} = max over valid l of a_{bnl} (the shift cancels, so it carries no gradient).
    Padded steps get exp(-inf) = 0: no weight and no gradient, whatever features they hold.
    A request with no valid step gets alpha = 0 (denominator clamped) and a zero interest,
    finite forward and backward.
    """
    valid = (seq_mask > 0).unsqueeze(1)                                     # [B, 1, L]
    neg_inf = scores.new_full((), float("-inf"))  # a fill kernel, not a host-to-device copy
    shift = torch.where(valid, scores, neg_inf).amax(-1, keepdim=True).detach()
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    weights = torch.exp(torch.where(valid, scores - shift, neg_inf))
    alpha = weights / weights.sum(-1, keepdim=True).clamp_min(1e-30)
    return torch.matmul(alpha, seq_emb)                                     # [B, N, E]


# -------------------------------------------------------------------- autograd core
class ReluScores(torch.autograd.Function):
    """:func:`relu_scores` with the memory-free, two-pass backward of the module docstring.

    ``forward_fn``/``backward_fn`` are the functions that do the work (eager or compiled).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, item_proj: Tensor, seq_proj: Tensor, out_weight: Tensor, out_bias: Tensor,
        forward_fn: Callable[..., Tensor], backward_fn: Callable[..., tuple],
    ) -> Tensor:
        ctx.save_for_backward(item_proj, seq_proj, out_weight)
        ctx.backward_fn = backward_fn
        return forward_fn(item_proj, seq_proj, out_weight, out_bias)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        item_proj, seq_proj, out_weight = ctx.saved_tensors
        g_item, g_seq, g_w, g_c = ctx.backward_fn(item_proj, seq_proj, out_weight, grad.contiguous())
        return g_item, g_seq, g_w, g_c.reshape(()), None, None


def attention_pool(item_proj: Tensor, seq_proj: Tensor, out_weight: Tensor, out_bias: Tensor,
                   seq_emb: Tensor, seq_mask: Tensor) -> Tensor:
    """Attention-weighted sum of the sequence for every candidate -> [B, N, E] (eager, plain autograd).

    Inputs: ``item_proj`` [B, N, H] = W_i x_n (candidate part of the attention MLP's first
    layer), ``seq_proj`` [B, L, H] = W_s x_l + b (sequence part, bias included),
    ``out_weight`` [H], ``out_bias`` [] (the H -> 1 layer), ``seq_emb`` [B, L, E],
    ``seq_mask`` [B, L] (1 = valid step, float). Scores by :func:`relu_scores`, weights by
    :func:`masked_softmax_pool`. The eager path (``compile=False``) and the oracle of the
    fused one: eager, autograd's own backward (which stores the ReLU activations) was
    measured ~1.8x faster than running ``ReluScores``' recomputing backward eagerly.
    """
    return masked_softmax_pool(relu_scores(item_proj, seq_proj, out_weight, out_bias), seq_emb, seq_mask)


#: Elements of one block of :func:`blocked_attention_pool`'s [rows, N, L, H] intermediate:
#: 2**20 floats (4 MiB), so each of a 2-core machine's threads works on a half that stays in
#: its 4 MiB L2 cache. Measured per seed of a 6,000-request two-stage day (N = 40, L = 50),
#: 2 threads: 0.57 s at 2**18, 0.55 s at 2**20, 0.67 s at 2**22, against 0.68 - 2.0 s for
#: the unblocked core (the spread is page faults on its fresh 40 - 320 MB temporaries).
INFERENCE_BLOCK_ELEMENTS = 1 << 20


def blocked_attention_pool(item_proj: Tensor, seq_proj: Tensor, out_weight: Tensor, out_bias: Tensor,
                           seq_emb: Tensor, seq_mask: Tensor, *,
                           block_elements: int = INFERENCE_BLOCK_ELEMENTS) -> Tensor:
    """:func:`attention_pool` for inference on the CPU, eager, in cache-sized blocks of requests.

    Why: without a compiler, the core's three passes over [B, N, L, H] (broadcast add,
    ReLU, the H -> 1 product) each stream a tensor of hundreds of MB through memory, and a
    fresh allocation of that size page-faults on every batch. Here the passes run on a
    block of requests whose [rows, N, L, H] slice fits the cache, in one buffer reused by
    every block, so they cost cache bandwidth instead. The operations are those of
    :func:`attention_pool`; only the H -> 1 products run through BLAS in blocks, and its
    matrix-vector kernel may sum a row's 80 terms in another order depending on the row
    count, so scores agree with :func:`attention_pool` to float rounding (tested). On the
    6,000-request day of docs/benchmarks.md every metric came out identical. Needs no
    autograd (evaluation and serving); with autograd, or on other devices (on a GPU,
    blocks would only add kernel launches), it is :func:`attention_pool`.
    """
    if item_proj.device.type != "cpu" or torch.is_grad_enabled():
        return attention_pool(item_proj, seq_proj, out_weight, out_bias, seq_emb, seq_mask)
    b, n, h = item_proj.shape
    steps = seq_proj.shape[1]
    rows = max(1, min(b, block_elements // max(1, n * steps * h)))
    block = item_proj.new_empty((rows, n, steps, h))
    scores = item_proj.new_empty((b, n, steps))
    for start in range(0, b, rows):
        stop = min(b, start + rows)
        x = block[: stop - start]
        torch.add(item_proj[start:stop].unsqueeze(2), seq_proj[start:stop].unsqueeze(1), out=x)
        torch.matmul(x.relu_(), out_weight, out=scores[start:stop])
    return masked_softmax_pool(scores + out_bias, seq_emb, seq_mask)


def split_attention_pool(item_proj: Tensor, seq_proj: Tensor, out_weight: Tensor, out_bias: Tensor,
                         seq_emb: Tensor, seq_mask: Tensor, *, forward_fn: Callable[..., Tensor] = relu_scores,
                         backward_fn: Callable[..., tuple] = relu_scores_backward,
                         pool_fn: Callable[..., Tensor] = masked_softmax_pool) -> Tensor:
    """:func:`attention_pool` with the scores in :class:`ReluScores`, each part done by the given function."""
    scores = ReluScores.apply(item_proj, seq_proj, out_weight, out_bias, forward_fn, backward_fn)
    return pool_fn(scores, seq_emb, seq_mask)


class _FusedAttentionPool:
    """:func:`split_attention_pool` with each of its three parts compiled by inductor."""

    def __init__(self) -> None:
        opts = dict(dynamic=False, fullgraph=True)
        self.fns = dict(forward_fn=torch.compile(relu_scores, **opts),
                        backward_fn=torch.compile(relu_scores_backward, **opts),
                        pool_fn=torch.compile(masked_softmax_pool, **opts))

    def __call__(self, *args: Tensor) -> Tensor:
        return split_attention_pool(*args, **self.fns)


# ------------------------------------------------------------------------ fallback
def _signature(args: tuple[Any, ...]) -> tuple:
    """What decides whether compiled graphs can be reused: shapes, dtypes, devices, grad mode."""
    grad = torch.is_grad_enabled()
    return (grad,) + tuple(
        (tuple(a.shape), a.dtype, a.device.type, grad and a.requires_grad) if isinstance(a, Tensor) else a
        for a in args
    )


class FallbackCompiled:
    """Call ``fused`` (a compiled version of ``eager``); on a compile failure, warn once and use ``eager``.

    Why the explicit check: inductor compiles lazily, on the first call with a new input
    signature, and a backward graph only when the first backward runs - i.e. inside the
    trainer's ``loss.backward()``, far from here. So the first call with a new signature
    that needs gradients runs forward and backward once on detached copies of its inputs,
    catching any compile error here (one extra pass per new signature; a run sees few:
    the full batch, and evaluation's last partial batch compiles once more - the graphs
    are specialised to their shapes, ``dynamic=False``, which measured faster than
    shape-generic kernels). Errors that eager would raise too (bad input) propagate from
    the eager retry.
    """

    def __init__(self, eager: Callable[..., Tensor], fused: Callable[..., Tensor]) -> None:
        self.eager = eager
        self.fused: Callable[..., Tensor] | None = fused
        self.checked: set[tuple] = set()
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        """True while the fused path is in use (no compile failure so far)."""
        return self.fused is not None

    def __call__(self, *args: Any) -> Tensor:
        fused = self.fused
        if fused is None:
            return self.eager(*args)
        sig = _signature(args)
        if sig in self.checked:
            return fused(*args)
        with self._lock:
            try:
                if torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args):
                    trial = [a.detach().requires_grad_(a.requires_grad) if isinstance(a, Tensor) else a
                             for a in args]
                    trial_out = fused(*trial)
                    needs = [a for a in trial if isinstance(a, Tensor) and a.requires_grad]
                    torch.autograd.grad(trial_out, needs, grad_outputs=torch.ones_like(trial_out))
                out = fused(*args)
            except Exception as exc:  # any compiler/toolchain failure: eager from now on
                self.error = exc
                self.fused = None
                first_line = str(exc).splitlines()[0] if str(exc) else ""
                warnings.warn(
                    f"torch.compile of {getattr(self.eager, '__name__', self.eager)} failed "
                    f"({type(exc).__name__}: {first_line}); continuing eager (slower). "
                    "Use compile=False / --no-compile to skip compiling.",
                    RuntimeWarning, stacklevel=2,
                )
                return self.eager(*args)
            self.checked.add(sig)
            return out


_FUSED: dict[str, FallbackCompiled] = {}


def compiled_attention_pool() -> FallbackCompiled:
    """The process-wide fused :func:`attention_pool` (one compile cache shared by every DIN)."""
    if "attention_pool" not in _FUSED:
        _FUSED["attention_pool"] = FallbackCompiled(attention_pool, _FusedAttentionPool())
    return _FUSED["attention_pool"]


def compiled_inference_attention_pool() -> FallbackCompiled:
    """The process-wide fused :func:`attention_pool` for inference (no gradient): one graph.

    Why a separate entry: evaluation and serving score without autograd, so the
    ``ReluScores`` split (which exists for its memory-free backward) only adds a second
    graph to compile. Compiling the whole core at once halves what a fresh process
    traces and loads before its first batch (the evaluation's start-up), and inductor
    fuses scores, softmax and pooling into one loop that never writes the
    [B, N, L, H] or [B, N, L] intermediates. Same math as the eager oracle (tested).
    """
    if "inference_attention_pool" not in _FUSED:
        _FUSED["inference_attention_pool"] = FallbackCompiled(
            attention_pool, torch.compile(attention_pool, dynamic=False, fullgraph=True))
    return _FUSED["inference_attention_pool"]


def trust_cpu_isa() -> None:
    """Let inductor take the CPU's vector ISA from its flags instead of probing it.

    Why: in every fresh process, inductor's first CPU compile (even a cache hit) checks
    each candidate ISA by building a test program and dlopen-ing it in a child Python,
    one child per ISA: about a second of an evaluation's start-up on an idle 2-core
    machine, several under load. The flags come from the CPU itself (/proc/cpuinfo);
    if the compiler still cannot build for them, the compile fails and
    :class:`FallbackCompiled` runs eager. An explicit TORCHINDUCTOR_VEC_ISA_OK wins.
    """
    import os

    if os.environ.get("TORCHINDUCTOR_VEC_ISA_OK") is not None:
        return
    from torch._inductor import config

    if config.cpp.vec_isa_ok is None:
        config.cpp.vec_isa_ok = True


def compile_in_process() -> None:
    """Let inductor compile in this process instead of a pool of worker processes.

    Why: inductor starts its pool of compile workers (each a fresh Python importing torch)
    at the first compile of a process, even when every graph is then found in its on-disk
    cache. For the small inference graphs of ``lcron evaluate`` and ``lcron serve-eval``
    that start-up was most of the first seed's time: serving 512 requests of a 6,000-request
    day, 2 seeds, warm cache, load ~5 on 2 cores, the first seed's scoring took 18.3 s with
    the pool and 8.7 s without (the second seed 4.6 s either way); metrics identical. An
    explicit TORCHINDUCTOR_COMPILE_THREADS wins.
    """
    import os

    if os.environ.get("TORCHINDUCTOR_COMPILE_THREADS") is not None:
        return
    from torch._inductor import config

    config.compile_threads = 1

