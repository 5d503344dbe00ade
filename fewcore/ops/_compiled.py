"""The compiled kernels wired for autograd, ``torch.func``, ``torch.compile`` and double backward.

Each kernel is a dispatcher op (``torch.ops.fewcore.*``, schemas in ``csrc/fewcore.cpp``) with a
fake kernel (shapes only, for ``torch.compile``) and a vmap rule (folds a vmapped dimension into
the ops' own task dimension B). Autograd goes through Python ``torch.autograd.Function``s with
``setup_context`` and ``generate_vmap_rule=True``: the combination that works under
``torch.func.grad``, grad-of-grad and ``vmap(grad)`` (a ``custom_op`` with ``register_autograd``
and a C++ ``autograd::Function`` do not, see pytorch#168393 and #170834).

Level 1 (``_pairwise_distance``, ``_episode_attention``) runs the forward kernel; its backward
runs the backward kernel through level 2 (``_pairwise_distance_backward``, ...), whose own
backward — needed only for second derivatives — is the vector-Jacobian product of the
pure-PyTorch reference's backward, so higher derivatives stay exact and differentiable (at the
reference's cost: second derivatives of distances hold a ``B·N·M·D`` difference tensor).

Plain eager calls (no transform, not compiling) record level 1 as a C++ autograd Function
instead (``torch.ops.fewcore._*_autograd``, csrc/autograd.cpp): the same kernels without the
Python Function's cost. Its backward calls the level-2 Functions only under ``create_graph``,
through the ``_*_backward_create_graph`` ops registered at the end of this module.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from fewcore import _extension
from fewcore.ops import _reference
from fewcore.ops._reference import METRICS

_extension.require_compiled()
_ops = torch.ops.fewcore


# ---------------------------------------------------------------- fake kernels and vmap rules


def _check_fake(x: torch.Tensor, *others: torch.Tensor) -> None:
    torch._check(all(t.dim() == 3 for t in (x, *others)), lambda: "fewcore ops take 3-D [B, rows, features] tensors")


@torch.library.register_fake("fewcore::pairwise_distance")
def _pairwise_distance_fake(x: torch.Tensor, y: torch.Tensor, metric: int) -> torch.Tensor:
    _check_fake(x, y)
    return x.new_empty((x.shape[0], x.shape[1], y.shape[1]))


@torch.library.register_fake("fewcore::_pairwise_distance_backward")
def _pairwise_distance_backward_fake(
    grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor, metric: int
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(
        y, memory_format=torch.contiguous_format
    )


@torch.library.register_fake("fewcore::episode_attention")
def _episode_attention_fake(
    q: torch.Tensor, s: torch.Tensor, v: torch.Tensor, metric: int, temperature: float, save_values: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_fake(q, s, v)
    out = q.new_empty((q.shape[0], q.shape[1], v.shape[2]))
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    values_shape = (q.shape[0], q.shape[1], s.shape[1]) if save_values else (q.shape[0], 0, 0)
    # lse is float64 whatever the inputs (math.h: log_sum_exp)
    return out, q.new_empty((q.shape[0], q.shape[1]), dtype=torch.float64), q.new_empty(values_shape, dtype=compute)


@torch.library.register_fake("fewcore::_episode_attention_backward")
def _episode_attention_backward_fake(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    s: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    values: torch.Tensor,
    metric: int,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, s, v))  # type: ignore[return-value]


def _fold_vmap(op: Callable[..., Any], n_tensors: int) -> Callable[..., Any]:
    """A vmap rule for an op whose first ``n_tensors`` arguments are ``[B, ...]`` tensors.

    The vmapped dimension is moved to the front and folded into B (unbatched arguments are
    expanded to it), the op runs once, and every output is unfolded again.
    """

    def rule(info: Any, in_dims: tuple[int | None, ...], *args: Any) -> tuple[Any, Any]:
        size = info.batch_size
        tensors = []
        for tensor, dim in zip(args[:n_tensors], in_dims[:n_tensors]):
            tensor = tensor.unsqueeze(0).expand(size, *tensor.shape) if dim is None else tensor.movedim(dim, 0)
            tensors.append(tensor.reshape(size * tensor.shape[1], *tensor.shape[2:]))
        result = op(*tensors, *args[n_tensors:])
        if isinstance(result, torch.Tensor):
            return result.unflatten(0, (size, -1)), 0
        return tuple(r.unflatten(0, (size, -1)) for r in result), tuple(0 for _ in result)

    return rule


torch.library.register_vmap("fewcore::pairwise_distance", _fold_vmap(_ops.pairwise_distance, 2))
torch.library.register_vmap("fewcore::_pairwise_distance_backward", _fold_vmap(_ops._pairwise_distance_backward, 4))
torch.library.register_vmap("fewcore::episode_attention", _fold_vmap(_ops.episode_attention, 3))
torch.library.register_vmap(
    "fewcore::_episode_attention_backward", _fold_vmap(_ops._episode_attention_backward, 7)
)


# ---------------------------------------------------------------- autograd


def _second_order(
    reference: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...], cotangent: torch.Tensor,
    grad_grads: tuple[torch.Tensor | None, ...],
) -> tuple[torch.Tensor, ...]:
    """Backward of a backward: the VJP of ``(cotangent, *inputs) ↦ vjp(reference)(cotangent)``.

    Returns the gradients w.r.t. ``cotangent`` and each input, given ``grad_grads`` (one per
    input, None for an input whose first-order gradient was not used).
    """

    def first_order(cot: torch.Tensor, *primals: torch.Tensor) -> tuple[torch.Tensor, ...]:
        vjp = torch.func.vjp(reference, *primals)[1]
        return vjp(cot)

    # A backward run inside autocast must not lower the reference's products to float16/bfloat16
    # (the kernels exclude autocast the same way, csrc/include/fewcore/ops.h: NoAutocast).
    with torch.autocast(cotangent.device.type, enabled=False):
        vjp = torch.func.vjp(first_order, cotangent, *inputs)[1]
        filled = tuple(torch.zeros_like(p) if g is None else g for p, g in zip(inputs, grad_grads))
        return vjp(filled)


def _autograd_function(
    name: str,
    forward: Callable[..., Any],
    setup_context: Callable[..., None],
    backward: Callable[..., tuple[Any, ...]],
    eager: Callable[..., Any] | None = None,
) -> Callable[..., Any]:
    """``apply`` of a ``torch.autograd.Function`` built from its three static methods.

    The Function has ``setup_context`` and ``generate_vmap_rule``, what ``torch.func`` and
    ``torch.compile`` need. Outside both, a call that records autograd goes to ``eager`` when one
    is given: the op's C++ autograd entry point (csrc/autograd.cpp), ~40 µs cheaper per
    forward+backward at episode sizes.
    """
    function: type[torch.autograd.Function] = type(
        name,
        (torch.autograd.Function,),
        {
            "generate_vmap_rule": True,
            "forward": staticmethod(forward),
            "setup_context": staticmethod(setup_context),
            "backward": staticmethod(backward),
        },
    )
    recording = eager or function.apply

    def apply(*args: Any) -> Any:
        # The same test Function.apply makes before taking its torch.func path (no public API).
        if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
            return function.apply(*args)
        # Nothing to record (no_grad, or the first-order backward without create_graph): the
        # kernel alone, without the cost of autograd.
        if not torch.is_grad_enabled() or not any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            return forward(*args)
        return recording(*args)

    return apply


def _pairwise_backward_forward(grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor, metric: int) -> Any:
    return _ops._pairwise_distance_backward(grad, x, y, out, metric)


def _pairwise_backward_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    grad, x, y, _, metric = inputs
    ctx.save_for_backward(grad, x, y)
    ctx.metric = metric


def _pairwise_backward_backward(ctx: Any, grad_gx: torch.Tensor | None, grad_gy: torch.Tensor | None) -> tuple[Any, ...]:
    grad, x, y = ctx.saved_tensors

    def reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _reference.pairwise_distance(a, b, METRICS[ctx.metric])

    d_grad, d_x, d_y = _second_order(reference, (x, y), grad, (grad_gx, grad_gy))
    # `out` is a function of x and y whose influence the reference already accounts for.
    return d_grad, d_x, d_y, None, None


_pairwise_distance_backward = _autograd_function(
    "PairwiseDistanceBackward", _pairwise_backward_forward, _pairwise_backward_setup, _pairwise_backward_backward
)


def _pairwise_forward(x: torch.Tensor, y: torch.Tensor, metric: int) -> torch.Tensor:
    return _ops.pairwise_distance(x, y, metric)


def _pairwise_setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    x, y, metric = inputs
    ctx.save_for_backward(x, y, output)
    ctx.metric = metric


def _pairwise_backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
    x, y, out = ctx.saved_tensors
    gx, gy = _pairwise_distance_backward(grad, x, y, out, ctx.metric)
    return gx, gy, None


_pairwise_distance = _autograd_function(
    "PairwiseDistance", _pairwise_forward, _pairwise_setup, _pairwise_backward, _ops._pairwise_distance_autograd.default
)


def _attention_backward_forward(
    grad: torch.Tensor, q: torch.Tensor, s: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    values: torch.Tensor, metric: int, temperature: float,
) -> Any:
    return _ops._episode_attention_backward(grad, q, s, v, out, lse, values, metric, temperature)


def _attention_backward_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    grad, q, s, v, _, _, _, metric, temperature = inputs
    ctx.save_for_backward(grad, q, s, v)
    ctx.metric, ctx.temperature = metric, temperature


def _attention_backward_backward(
    ctx: Any, grad_gq: torch.Tensor | None, grad_gs: torch.Tensor | None, grad_gv: torch.Tensor | None
) -> tuple[Any, ...]:
    grad, q, s, v = ctx.saved_tensors

    def reference(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return _reference.episode_attention(a, b, c, METRICS[ctx.metric], ctx.temperature)

    d_grad, d_q, d_s, d_v = _second_order(reference, (q, s, v), grad, (grad_gq, grad_gs, grad_gv))
    # out, lse and values are functions of q, s and v whose influence the reference accounts for.
    return d_grad, d_q, d_s, d_v, None, None, None, None, None


_episode_attention_backward = _autograd_function(
    "EpisodeAttentionBackward", _attention_backward_forward, _attention_backward_setup, _attention_backward_backward
)


# Tasks of at most this many scores take the CPU kernels' whole-task path (kSmallTaskEntries in
# csrc/cpu/episode_attention_cpu.cpp), whose forward saves the metric's values for the backward:
# recomputing them would cost a product as large as the forward's. Larger tasks stream (the
# scores are never all stored), and the CUDA kernels always recompute.
_SAVED_VALUES_MAX_ENTRIES = 1 << 16


def _saves_values(q: torch.Tensor, s: torch.Tensor) -> bool:
    return q.device.type == "cpu" and q.shape[1] * s.shape[1] <= _SAVED_VALUES_MAX_ENTRIES


def _attention_forward(q: torch.Tensor, s: torch.Tensor, v: torch.Tensor, metric: int, temperature: float) -> Any:
    return _ops.episode_attention(q, s, v, metric, temperature, _saves_values(q, s))


def _attention_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    q, s, v, metric, temperature = inputs
    out, lse, values = output
    ctx.save_for_backward(q, s, v, out, lse, values)
    ctx.metric, ctx.temperature = metric, temperature
    ctx.mark_non_differentiable(lse, values)
    # No zero-filled gradients for lse and values: the backward ignores them, and filling a
    # [B, N, M] tensor with zeros costs as much as the softmax.
    ctx.set_materialize_grads(False)


def _attention_backward(
    ctx: Any, grad: torch.Tensor | None, _grad_lse: torch.Tensor | None, _grad_values: torch.Tensor | None
) -> tuple[Any, ...]:
    if grad is None:  # out's gradient is undefined too (grads are not materialized): none flows back
        return None, None, None, None, None
    q, s, v, out, lse, values = ctx.saved_tensors
    gq, gs, gv = _episode_attention_backward(grad, q, s, v, out, lse, values, ctx.metric, ctx.temperature)
    return gq, gs, gv, None, None


def _attention_eager(q: torch.Tensor, s: torch.Tensor, v: torch.Tensor, metric: int, temperature: float) -> Any:
    return _ops._episode_attention_autograd.default(q, s, v, metric, temperature, _saves_values(q, s))


_episode_attention = _autograd_function(
    "EpisodeAttention", _attention_forward, _attention_setup, _attention_backward, _attention_eager
)

# What the C++ backward of the eager entry points calls under create_graph: the backward ops
# through their differentiable Functions above (CompositeImplicitAutograd: autograd records
# what they call).
_library = torch.library.Library("fewcore", "IMPL")
_library.impl("_pairwise_distance_backward_create_graph", _pairwise_distance_backward, "CompositeImplicitAutograd")
_library.impl("_episode_attention_backward_create_graph", _episode_attention_backward, "CompositeImplicitAutograd")


# ---------------------------------------------------------------- entry points


def _as_batch(tensors: tuple[torch.Tensor, ...], batch: int) -> tuple[torch.Tensor, ...]:
    """Give every argument the leading task dimension (a shared 2-D argument is expanded)."""
    return tuple(t if t.dim() == 3 else t.unsqueeze(0).expand(batch, *t.shape) for t in tensors)


def pairwise_distance(x: torch.Tensor, y: torch.Tensor, metric: int, batched: bool, batch: int) -> torch.Tensor:
    """See :func:`fewcore.ops.pairwise_distance`; arguments already validated."""
    x3, y3 = _as_batch((x, y), batch)
    out = _pairwise_distance(x3, y3, metric)
    return out if batched else out.squeeze(0)


def episode_attention(
    q: torch.Tensor, s: torch.Tensor, v: torch.Tensor, metric: int, temperature: float, batched: bool, batch: int
) -> torch.Tensor:
    """See :func:`fewcore.ops.episode_attention`; arguments already validated."""
    q3, s3, v3 = _as_batch((q, s, v), batch)
    out, _, _ = _episode_attention(q3, s3, v3, metric, temperature)
    return out if batched else out.squeeze(0)
