"""MAML (Finn, Abbeel and Levine 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks"), its first-order approximation, and Meta-SGD (Li, Zhou, Chen and Li 2017, "Meta-SGD:
Learning to Learn Quickly for Few-Shot Learning").

A classifier ``f_θ`` (any backbone followed by a linear head with ``n_way`` outputs) is adapted to
each task ``T_i`` by ``s`` gradient steps on the support loss, starting from the meta-learned
initialization θ:

    θ_i^(0) = θ,    θ_i^(t+1) = θ_i^(t) − α ∘ ∇_θ L_{T_i}^{support}(f_{θ_i^(t)}),    θ_i' = θ_i^(s),

and θ is meta-trained on the query loss of the adapted model (eq. 1 of MAML):

    min_θ  Σ_{T_i ~ p(T)}  L_{T_i}^{query}(f_{θ_i'}).

* **Second order** (the paper's MAML) differentiates the meta-objective through the inner loop,
  Hessian-vector products included: ``∂θ^(t+1)/∂θ^(t) = I − α ∇²L^{support}``.
* **First order** (FOMAML, section 5.2 of the paper) treats each inner gradient as a constant, so
  ``∂θ'/∂θ = I`` and the meta-gradient is the query gradient at the adapted parameters.
* **Meta-SGD** learns α as well: one step size per parameter entry (same shape as θ),
  meta-trained jointly with θ (eq. 3-4 of Meta-SGD), ``∘`` the element-wise product.

The backbone is used unchanged, through :func:`torch.func.functional_call` with the adapted
parameters; no "meta" layers. The meta-batch of B tasks is adapted either one task at a time (a
Python loop) or vectorized with :func:`torch.func.vmap` over the task dimension
(``torch.func.grad`` inside ``vmap``); both compute the same thing, and ``task_batching="auto"``
picks the faster for the device (:func:`auto_vmaps`: the loop on the CPU, vmap elsewhere, with
the loop as the fallback for backbones that ``vmap`` cannot batch).

**Batch norm** uses the statistics of the batch it normalizes, in training and evaluation alike,
as in the paper's reference implementation: the support items of a task during adaptation, the
query items of that task for the prediction (so predictions are transductive over a task's
queries). Running statistics are neither read nor updated (MAML never uses them, and updating
them in place is impossible under ``vmap``). The loop uses the fused batch-norm kernel. Under
``vmap`` ``F.batch_norm`` is computed from its definition ``γ (x − mean) / sqrt(var + ε) + β``
(biased variance over the batch and spatial dims) instead: in torch 2.14, ``vmap`` of the fused
kernel's double backward gives wrong meta-gradients (see pytorch/functorch#534; off by ~1e-2 in
float64 against finite differences). The two paths agree to rounding (tested in float64).

**Precision and memory format.** The learner runs under the engine's ``train.precision`` and
``train.channels_last`` (fewcore.engine's ``ComputeMode``; on a CPU with native bfloat16 the
defaults are bfloat16 autocast and channels-last). Two things are the learner's own: (1) the
adaptation (the support passes and their gradients) always runs in float32, the query pass in
the autocast precision. Rounding in the inner loop compounds over the steps and the
meta-gradient amplifies it: with everything under bfloat16 the meta-gradient of 5 inner steps
(Conv4, Omniglot, 8 tasks) had a cosine similarity of only 0.64 with the exact one (0.95 with 2
steps); with a float32 adaptation 0.92 (0.998), at a cost of 2–14% of the step. (2) Images are
laid out channels-last per task when the model's convolutions are (see
``_in_model_memory_format``), so that every block, not only those after the first, runs
channels-last.

Episodes with fewer classes than ``n_way`` use the first N outputs of the head (labels are
arbitrary per episode, so any N units serve equally).

**Performance note (CPU).** Against higher 0.2.1 (the per-task loop of its MAML example, float32),
benchmarks/peers/maml.py, 1 thread, Conv4 on 28×28 Omniglot, 5-way 1-shot 15-query, meta-batch
32, default options (2026-12-03, benchmarks/README.md): 1.74× higher's tasks/s with second order
and 1 inner step, 2.35× first order 1 step, 1.12× second order 5 steps, 1.95× first order 5
steps. Where the time went, and what changed: the batch
norm from its definition (kept only under vmap) cost about 1.4× the fused kernel on the loop;
vmap saves only the loop's Python and dispatch work (0.3 of a 2.5 s step, 2026-12-02) while
making every activation B times larger (out of cache, page-faulted back in at every step), so on
the CPU the loop with the fused batch norm is the faster path; channels-last max-pooling is
about 5× faster than channels-first on this CPU; bfloat16 autocast runs the convolutions on AMX;
:func:`adapt` with :func:`torch.autograd.grad` instead of :func:`torch.func.grad` saves about
1.3 ms of Python and dispatch work per 5-image support step on the loop. What remains is about
half query pass (a Conv4 forward and backward over 75 images, which plain bfloat16 training
runs at 2.2× float32 channels-first) and half the support passes, whose 5-image tensors leave
their time to per-op overhead and the composite double backward of batch norm.
"""

from __future__ import annotations

import math
import warnings
from functools import partial
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.overrides import TorchFunctionMode

from fewcore import Backbone, Episode, Learner, LearnerOutput
from fewcore.episodes import check_episode, check_task_batch

Params = dict[str, Tensor]
TaskBatching = Literal["auto", "vmap", "loop"]

#: Tasks per vmap chunk on the CPU when vmap is asked for and ``tasks_per_vmap`` is None.
#: benchmarks/test_bench_maml.py, 2026-12-02, Conv4, meta-batch 32, 1 inner step, 1 thread: the
#: whole meta-batch in one vmap ran at 0.27-0.29x the per-task loop, chunks of 4 at 0.95-1.01x.
CPU_TASKS_PER_VMAP = 4


def auto_vmaps(device: torch.device) -> bool:
    """Whether ``task_batching="auto"`` vectorizes the meta-batch on ``device``.

    Not on the CPU, where the per-task loop with the fused batch norm is the faster path
    (benchmarks/README.md, MAML); on accelerators, where the loop's many small kernel launches
    dominate, vmap (not measured here: no GPU was available).
    """
    return device.type != "cpu"

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def running_statistics_off(model: nn.Module) -> dict[str, Tensor | None]:
    """Every batch-norm buffer of ``model`` mapped to None, for :func:`torch.func.functional_call`.

    Passed with the parameters of a functional call, it makes batch norm normalize with batch
    statistics and never touch its buffers, as an inner loop over one task must.
    """
    return {
        f"{module_name}.{buffer}" if module_name else buffer: None
        for module_name, module in model.named_modules()
        if isinstance(module, _BATCH_NORMS)
        for buffer, value in module.named_buffers(recurse=False)
        if value is not None
    }


def adapt(
    loss: Callable[[Params], Tensor],
    params: Params,
    lrs: Mapping[str, float | Tensor],
    steps: int,
    first_order: bool,
    *,
    vmappable: bool = True,
) -> Params:
    """Run ``steps`` inner gradient-descent steps ``θ ← θ − α ∘ ∇_θ loss(θ)``.

    Args:
        loss: the inner (support) loss of one task as a function of the parameters; a scalar.
        params: the starting parameters θ (the meta-learned initialization), any shapes.
        lrs: per parameter name, the step size α: a float (MAML) or a tensor broadcastable to
            the parameter (Meta-SGD).
        steps: number of inner steps s (0 returns ``params``).
        first_order: treat every inner gradient as a constant (FOMAML). Otherwise (and when
            autograd is recording) the result is differentiable through the gradients, so that
            the meta-gradient includes the second-order terms.
        vmappable: compute the gradients with :func:`torch.func.grad`, which works under
            :func:`torch.func.vmap`. ``False`` uses :func:`torch.autograd.grad` instead: the same
            values with less Python and dispatch work per step (a 5-image Conv4 support step
            cost 1.3 ms less of 4.4–6.1 ms), for callers that adapt one task at a time.

    Returns:
        The adapted parameters θ' with the same names and shapes as ``params``. Differentiable
        in ``params`` and in tensor ``lrs``.
    """
    inner_grad = grad(loss) if vmappable else _autograd_gradient(loss, create_graph=not first_order)
    for _ in range(steps):
        # The first-order gradient is evaluated at detached parameters: same value, but the
        # outer autograd records neither the inner forward nor its backward.
        at = {name: p.detach() for name, p in params.items()} if first_order else params
        grads = inner_grad(at)
        params = {name: p - lrs[name] * grads[name] for name, p in params.items()}
    return params


def _autograd_gradient(loss: Callable[[Params], Tensor], create_graph: bool) -> Callable[[Params], Params]:
    """``θ ↦ ∇_θ loss(θ)`` with :func:`torch.autograd.grad`, also under ``torch.no_grad()``
    (as :func:`torch.func.grad`); ``create_graph`` keeps it differentiable (second order)."""

    def gradient(params: Params) -> Params:
        with torch.enable_grad():
            # a parameter outside the recorded graph (detached, frozen) becomes a leaf to differentiate
            at = {name: p if p.requires_grad else p.detach().requires_grad_() for name, p in params.items()}
            grads = torch.autograd.grad(loss(at), list(at.values()), create_graph=create_graph)
        return dict(zip(at, grads))

    return gradient


def _batch_norm_from_definition(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """``F.batch_norm`` with batch statistics, written with primitive ops (``[n, C, *spatial]``)."""
    dims = [0, *range(2, input.dim())]
    var, mean = torch.var_mean(input, dims, correction=0, keepdim=True)
    # Fold the normalization and the affine map into one per-channel scale and shift: a single
    # multiply-add pass over the activations (forward and backward) instead of four.
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight.reshape(scale.shape)
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias.reshape(shift.shape)
    return torch.addcmul(shift, input, scale)


class _BatchStatisticsNorm(TorchFunctionMode):
    """Routes batch-statistics ``F.batch_norm`` calls to :func:`_batch_norm_from_definition`."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.batch_norm:
            return _batch_norm_from_definition(*args, **kwargs)
        return func(*args, **kwargs)


class _Classifier(nn.Module):
    """``head(backbone(x))``: the network whose parameters MAML adapts."""

    def __init__(self, backbone: Backbone, head: nn.Linear) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


class MAML(Learner):
    """Model-Agnostic Meta-Learning with a linear head on any backbone.

    Args:
        backbone: the feature extractor, used unchanged through ``functional_call``.
        n_way: outputs of the head, the largest N of the episodes it will see.
        inner_steps: inner gradient steps s during meta-training (any number ≥ 0).
        inner_lr: the inner step size α (the initial one for Meta-SGD); the default is the
            shipped Omniglot configs' 0.1 (the paper's 0.4 diverged there on Conv4's 32×32 embedding).
        eval_inner_steps: inner steps in evaluation mode; ``None`` uses ``inner_steps``.
        first_order: FOMAML: drop the second-order terms of the meta-gradient.
        first_order_warmup: meta-training steps (training-mode forward passes with autograd
            recording) that use the first-order approximation before second order takes over, a
            cheap start from a random initialization; ignored with ``first_order``. The count
            is the buffer ``meta_training_steps``, saved with the learner so that resuming
            continues the schedule.
        task_batching: ``"vmap"`` vectorizes the meta-batch over tasks, ``"loop"`` adapts one
            task at a time, ``"auto"`` picks the faster one for the device (:func:`auto_vmaps`:
            the loop on the CPU, vmap elsewhere, falling back to the loop with a warning when
            the backbone cannot be vmapped). Both give the same result (up to rounding).
        tasks_per_vmap: with vmap, batch at most this many tasks at once (``vmap``'s
            ``chunk_size``; the chunks run one after the other). ``None``: the whole meta-batch
            on an accelerator, :data:`CPU_TASKS_PER_VMAP` tasks per chunk on the CPU, where a
            few tasks per chunk is faster than all of them (see the performance note above).
        item_shape: the shape of one item, to size the head (the engine passes the
            dataset's); ``None`` uses the backbone's ``example_input_shape``.
    """

    #: meta-training steps taken (a buffer, so a resumed run continues the warm-up schedule)
    meta_training_steps: Tensor

    def __init__(
        self,
        backbone: Backbone,
        n_way: int = 5,
        inner_steps: int = 1,
        inner_lr: float = 0.1,
        eval_inner_steps: int | None = None,
        first_order: bool = False,
        first_order_warmup: int = 0,
        task_batching: TaskBatching = "auto",
        tasks_per_vmap: int | None = None,
        item_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if n_way < 1:
            raise ValueError(f"n_way must be at least 1; got {n_way}")
        counts = (("inner_steps", inner_steps), ("eval_inner_steps", eval_inner_steps), ("first_order_warmup", first_order_warmup))
        for name, steps in counts:
            if steps is not None and (not isinstance(steps, int) or steps < 0):
                raise ValueError(f"{name} must be a non-negative integer; got {steps!r}")
        if task_batching not in ("auto", "vmap", "loop"):
            raise ValueError(f"task_batching must be 'auto', 'vmap' or 'loop'; got {task_batching!r}")
        if tasks_per_vmap is not None and (not isinstance(tasks_per_vmap, int) or tasks_per_vmap < 1):
            raise ValueError(f"tasks_per_vmap must be a positive integer or None; got {tasks_per_vmap!r}")
        if not math.isfinite(inner_lr):
            raise ValueError(f"inner_lr must be a finite number; got {inner_lr}")
        shape = tuple(item_shape) if item_shape is not None else tuple(backbone.example_input_shape)
        self.model = _Classifier(backbone, nn.Linear(backbone.embedding_size(shape), n_way))
        self.n_way = n_way
        self.inner_steps = inner_steps
        self.inner_lr = float(inner_lr)
        self.eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
        self.first_order = first_order
        self.first_order_warmup = first_order_warmup
        self.register_buffer("meta_training_steps", torch.zeros((), dtype=torch.long))
        self.task_batching: TaskBatching = task_batching
        self.tasks_per_vmap = tasks_per_vmap
        self._no_running_stats = running_statistics_off(self.model)

    @property
    def backbone(self) -> Backbone:
        """The feature extractor (its parameters are the meta-learned initialization)."""
        return self.model.backbone

    def inner_lrs(self) -> dict[str, float | Tensor]:
        """The step size α of every adapted parameter (one float for MAML)."""
        return {name: self.inner_lr for name, _ in self.model.named_parameters()}

    def _logits(self, params: Params, x: Tensor, n_way: int) -> Tensor:
        """``[n, *item_shape]`` → ``[n, n_way]`` logits of the classifier with parameters ``params``."""
        # A None buffer makes batch norm use batch statistics: functional_call accepts it, its
        # annotation does not.
        stats = (params, self._no_running_stats)
        return functional_call(self.model, stats, (x,))[..., :n_way]  # type: ignore[arg-type]

    def _task_logits(
        self,
        params: Params,
        lrs: Mapping[str, float | Tensor],
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        n_way: int,
        steps: int,
        first_order: bool,
        vmappable: bool,
    ) -> Tensor:
        """One task: adapt on ``[Ns, ...]`` / ``[Ns]``, then ``[Nq, n_way]`` query logits.

        The adaptation runs in float32 under autocast (see the module docstring, "Precision");
        the query pass in the autocast precision.
        """

        def support_loss(p: Params) -> Tensor:
            with torch.autocast(support_x.device.type, enabled=False):
                return F.cross_entropy(self._logits(p, support_x, n_way), support_y)

        adapted = adapt(support_loss, params, lrs, steps, first_order, vmappable=vmappable)
        return self._logits(adapted, query_x, n_way)

    def adapted_logits(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, n_way: int) -> Tensor:
        """Adapt to every task of the batch and classify its queries.

        Uses ``inner_steps`` in training mode and ``eval_inner_steps`` in evaluation mode.
        The inner loop computes its gradients even under ``torch.no_grad()`` (evaluation; the
        result then carries no graph), but not under ``torch.inference_mode()``.

        Args:
            support_x: ``[B, Ns, *item_shape]``.
            support_y: ``[B, Ns]`` labels in ``0..n_way-1``.
            query_x: ``[B, Nq, *item_shape]``.
            n_way: N (at most the head's ``n_way``).

        Returns:
            ``[B, Nq, n_way]`` logits of the adapted classifiers.
        """
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "MAML adapts by gradient descent at test time, which torch.inference_mode() forbids; "
                "evaluate under torch.no_grad() instead"
            )
        if n_way > self.n_way:
            raise ValueError(
                f"this MAML head has {self.n_way} outputs (n_way={self.n_way}) but the episode has "
                f"{n_way} classes; build the learner with n_way >= {n_way}"
            )
        steps = self.inner_steps if self.training else self.eval_inner_steps
        # Without a recorded outer graph (evaluation) second-order terms are never needed.
        warming_up = self.training and int(self.meta_training_steps) < self.first_order_warmup
        first_order = self.first_order or warming_up or not torch.is_grad_enabled()
        params: dict[str, Tensor] = dict(self.model.named_parameters())
        lrs = self.inner_lrs()
        support_x, query_x = self._in_model_memory_format(support_x), self._in_model_memory_format(query_x)

        def task(sx: Tensor, sy: Tensor, qx: Tensor, vmappable: bool = False) -> Tensor:
            return self._task_logits(params, lrs, sx, sy, qx, n_way, steps, first_order, vmappable)

        if self._vmaps(support_x):
            chunk = self.tasks_per_vmap
            if chunk is None and support_x.device.type == "cpu":
                chunk = CPU_TASKS_PER_VMAP
            try:
                # vmap needs the batch-norm definition (module docstring); the loop keeps the fused kernel
                with _BatchStatisticsNorm():
                    return vmap(partial(task, vmappable=True), randomness="different", chunk_size=chunk)(
                        support_x, support_y, query_x
                    )
            except (RuntimeError, NotImplementedError) as exc:
                if self.task_batching == "vmap":
                    raise
                warnings.warn(
                    f"MAML: vmap over tasks failed for this backbone ({type(exc).__name__}: {exc}); "
                    "adapting one task at a time from now on (task_batching='loop' silences this)",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.task_batching = "loop"
        return torch.stack([task(*t) for t in zip(support_x, support_y, query_x)])

    def _vmaps(self, support_x: Tensor) -> bool:
        """Whether this meta-batch ``[B, ...]`` is vectorized over tasks (see ``task_batching``)."""
        if support_x.shape[0] < 2 or self.task_batching == "loop":
            return False
        return self.task_batching == "vmap" or auto_vmaps(support_x.device)

    def _in_model_memory_format(self, x: Tensor) -> Tensor:
        """Per-task images ``[B, n, C, H, W]`` laid out channels-last when the model's convolutions are.

        A convolution returns channels-last activations when its input or its weight is
        channels-last. The adapted weights θ − α∇L lose the layout where it is ambiguous (a
        1-channel first convolution), and a 1-channel image is both layouts at once, which torch
        reads as channels-first: without this, the largest block of the network would run
        channels-first (slower on the CPU) after the first inner step.
        """
        channels_last = any(
            p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
            for p in self.model.parameters()
        )
        if x.dim() != 5 or not channels_last:
            return x
        # Laid out [B, n, H, W, C] in memory, so every task [n, C, H, W] is channels-last. Strides
        # are set explicitly: .contiguous(memory_format=...) is a no-op where C = 1 (both layouts
        # describe such a tensor), and views may rewrite the stride of a size-1 dimension.
        tasks, items, channels, height, width = x.shape
        pixel = height * width * channels
        strides = (items * pixel, pixel, 1, width * channels, channels)
        return torch.empty_strided(x.shape, strides, dtype=x.dtype, device=x.device).copy_(x)

    def predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        """Class scores of the adapted classifiers.

        Args:
            support_x: ``[B, Ns, *item_shape]``.
            support_y: ``[B, Ns]`` labels in ``0..N-1``; N is ``max(support_y) + 1``.
            query_x: ``[B, Nq, *item_shape]``.

        Returns:
            ``[B, Nq, N]`` logits.
        """
        n_way = check_task_batch(support_x, support_y, query_x)
        return self.adapted_logits(support_x, support_y, query_x, n_way)

    def forward(self, episode: Episode) -> LearnerOutput:
        """Query logits ``[B, N*Q, N]`` after adaptation and the meta-loss: the query
        cross-entropy averaged over queries and tasks."""
        n_way = check_episode(episode)
        logits = self.adapted_logits(episode.support_x, episode.support_y, episode.query_x, n_way)
        loss = F.cross_entropy(logits.flatten(0, 1), episode.query_y.flatten())
        if self.training and torch.is_grad_enabled():
            self.meta_training_steps += 1
        return LearnerOutput(logits=logits, loss=loss)


class MetaSGD(MAML):
    """MAML with a learned step size for every parameter entry (Meta-SGD).

    Takes the arguments of :class:`MAML`; ``inner_lr`` initializes every entry of α. The
    step sizes are parameters of the learner (``inner_lr_params``), so the meta-optimizer
    updates them with θ.
    """

    def __init__(self, backbone: Backbone, **config: Any) -> None:
        super().__init__(backbone, **config)
        self._adapted_names = [name for name, _ in self.model.named_parameters()]
        self.inner_lr_params = nn.ParameterList(
            nn.Parameter(torch.full_like(p, self.inner_lr)) for p in self.model.parameters()
        )

    def inner_lrs(self) -> dict[str, float | Tensor]:
        """α per parameter: tensors of the parameters' shapes."""
        return dict(zip(self._adapted_names, self.inner_lr_params))
