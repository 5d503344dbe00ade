"""Reptile (Nichol, Achiam and Schulman 2018, "On First-Order Meta-Learning Algorithms").

A classifier ``f_θ`` (any backbone followed by a linear head with ``n_way`` outputs) is adapted to
each task ``T_i`` of a meta-batch by ``k`` steps of an ordinary optimizer on its support loss,
starting from the meta-learned initialization θ:

    θ_i' = U^k_{T_i}(θ),

where ``U`` is plain gradient descent, ``θ ← θ − α ∇_θ L_{T_i}^{support}(f_θ)``, or Adam (as in
the paper's few-shot experiments, with β₁ = 0 and β₂ = 0.999: :data:`ADAM_BETAS`). The
initialization then moves toward the adapted weights (Algorithm 2, batched version):

    θ ← θ + ε (1/B) Σ_i (θ_i' − θ).

Nothing is differentiated through the inner loop (first order by construction). To train with the
engine's optimizer like every other learner, the meta-update is handed to it as a gradient: the
loss returned in training is

    L = L^{query} + Σ_θ ⟨θ − stopgrad(θ), stopgrad(θ − (1/B) Σ_i θ_i')⟩,

whose value is the query loss of the adapted models (the number the engine logs) and whose
gradient with respect to θ is ``g = θ − (1/B) Σ_i θ_i'``. Plain SGD with learning rate ε (no
momentum) on ``g`` is exactly the update above; the paper anneals ε linearly to 0, the configs
use the engine's ``"cosine"`` schedule to 0 (the engine has no linear one). Adam on ``g`` is the
variant the paper suggests (θ − θ' used as a gradient by an adaptive optimizer). The query items
take no part in the meta-update; they give the logits and loss the engine reports.

The inner loop uses the whole support set of a task at every step (the paper samples minibatches
of it). **Batch norm** uses the statistics of the batch it normalizes, in training and evaluation
alike, as in the paper's transductive setting and MAML's reference implementation: the task's
support items during adaptation, its query items for the prediction. Running statistics are
neither read nor updated.

The B inner loops run one task after the other (``task_batching="loop"``) or vectorized over
tasks with :func:`torch.func.vmap` (``"vmap"``, a few tasks per call on the CPU as MAML does);
both compute the same thing. Episodes with fewer classes than ``n_way`` use the first N outputs
of the head.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable, Literal, Sequence, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from fewcore import Backbone, Episode, Learner, LearnerOutput
from fewcore.episodes import check_episode, check_task_batch
from fewcore.plugins.learners.maml import CPU_TASKS_PER_VMAP, Params, running_statistics_off

InnerOptimizer = Literal["sgd", "adam"]
TaskBatching = Literal["vmap", "loop"]

#: Adam's (β₁, β₂) in the inner loop: the paper's few-shot runs use β₁ = 0 (no momentum across
#: the few inner steps).
ADAM_BETAS = (0.0, 0.999)
#: Adam's ε (the paper's TensorFlow default)
ADAM_EPS = 1e-8


def inner_loop(
    loss: Callable[[Params], Tensor], params: Params, steps: int, lr: float, optimizer: InnerOptimizer
) -> Params:
    """``steps`` steps of SGD or Adam on ``loss`` from ``params``; gradients are not tracked through.

    Args:
        loss: the support loss of one task as a function of the parameters; a scalar.
        params: the starting point θ (detached).
        steps: k ≥ 0.
        lr: the step size α.
        optimizer: ``"sgd"`` (``θ ← θ − α g``) or ``"adam"`` (with :data:`ADAM_BETAS`,
            :data:`ADAM_EPS` and bias correction, fresh moments for every task).

    Returns:
        θ' with the names and shapes of ``params``.
    """
    loss_grad = grad(loss)
    beta1, beta2 = ADAM_BETAS
    first = {name: torch.zeros_like(p) for name, p in params.items()} if optimizer == "adam" else {}
    second = {name: torch.zeros_like(p) for name, p in params.items()} if optimizer == "adam" else {}
    for t in range(1, steps + 1):
        grads = loss_grad(params)
        if optimizer == "sgd":
            params = {name: p - lr * grads[name] for name, p in params.items()}
            continue
        first = {name: beta1 * first[name] + (1 - beta1) * g for name, g in grads.items()}
        second = {name: beta2 * second[name] + (1 - beta2) * g * g for name, g in grads.items()}
        params = {
            name: p - lr * (first[name] / (1 - beta1**t)) / ((second[name] / (1 - beta2**t)).sqrt() + ADAM_EPS)
            for name, p in params.items()
        }
    return params


class Reptile(Learner):
    """Reptile: first-order meta-learning by moving the initialization toward adapted weights.

    Args:
        backbone: the feature extractor, used unchanged through ``functional_call``.
        n_way: outputs of the head, the largest N of the episodes it will see.
        inner_steps: inner optimizer steps k per task during meta-training (≥ 0).
        inner_lr: the inner step size α.
        inner_optimizer: ``"sgd"`` or ``"adam"``.
        eval_inner_steps: inner steps in evaluation mode; ``None`` uses ``inner_steps`` (the
            paper adapts longer at test time than in training).
        task_batching: ``"loop"`` runs the inner loops one task after the other, ``"vmap"``
            vectorizes them over tasks; the result is the same. On the CPU the loop was faster
            (benchmarks/test_bench_anil_reptile.py); on a GPU, vmap batches the small tasks' work.
        tasks_per_vmap: with vmap, at most this many tasks per call (``vmap``'s ``chunk_size``).
            ``None``: the whole meta-batch on an accelerator, ``CPU_TASKS_PER_VMAP`` (MAML's
            measured CPU setting) on the CPU.
        item_shape: the shape of one item, to size the head; ``None`` uses the backbone's
            ``example_input_shape``.
    """

    def __init__(
        self,
        backbone: Backbone,
        n_way: int = 5,
        inner_steps: int = 5,
        inner_lr: float = 0.001,
        inner_optimizer: InnerOptimizer = "adam",
        eval_inner_steps: int | None = None,
        task_batching: TaskBatching = "loop",
        tasks_per_vmap: int | None = None,
        item_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(n_way, int) or n_way < 1:
            raise ValueError(f"n_way must be a positive integer; got {n_way!r}")
        for name, steps in (("inner_steps", inner_steps), ("eval_inner_steps", eval_inner_steps)):
            if steps is not None and (not isinstance(steps, int) or steps < 0):
                raise ValueError(f"{name} must be a non-negative integer; got {steps!r}")
        if not (math.isfinite(inner_lr) and inner_lr > 0):
            raise ValueError(f"inner_lr must be a positive number; got {inner_lr}")
        if inner_optimizer not in ("sgd", "adam"):
            raise ValueError(f"inner_optimizer must be 'sgd' or 'adam'; got {inner_optimizer!r}")
        if task_batching not in ("vmap", "loop"):
            raise ValueError(f"task_batching must be 'vmap' or 'loop'; got {task_batching!r}")
        if tasks_per_vmap is not None and (not isinstance(tasks_per_vmap, int) or tasks_per_vmap < 1):
            raise ValueError(f"tasks_per_vmap must be a positive integer or None; got {tasks_per_vmap!r}")
        shape = tuple(item_shape) if item_shape is not None else tuple(backbone.example_input_shape)
        head = nn.Linear(backbone.embedding_size(shape), n_way)
        self.model = nn.Sequential(OrderedDict(backbone=backbone, head=head))
        self.n_way = n_way
        self.inner_steps = inner_steps
        self.inner_lr = float(inner_lr)
        self.inner_optimizer: InnerOptimizer = inner_optimizer
        self.eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
        self.task_batching: TaskBatching = task_batching
        self.tasks_per_vmap = tasks_per_vmap
        self._no_running_stats = running_statistics_off(self.model)

    @property
    def backbone(self) -> Backbone:
        """The feature extractor (its parameters are part of the meta-learned initialization)."""
        return cast(Backbone, self.model.backbone)

    def _logits(self, params: Params, x: Tensor, n_way: int) -> Tensor:
        """``[n, *item_shape]`` → ``[n, n_way]`` logits of the classifier with parameters ``params``."""
        # None buffers are accepted (batch norm then uses batch statistics); the annotation omits it.
        dicts = (params, self._no_running_stats)
        return functional_call(self.model, dicts, (x,))[..., :n_way]  # type: ignore[arg-type]

    def adapt(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, n_way: int) -> tuple[Params, Tensor]:
        """Adapt a copy of the classifier to every task and classify its queries.

        Uses ``inner_steps`` in training mode and ``eval_inner_steps`` in evaluation mode. Nothing
        is recorded for autograd.

        Args:
            support_x: ``[B, Ns, *item_shape]``.
            support_y: ``[B, Ns]`` labels in ``0..n_way-1``.
            query_x: ``[B, Nq, *item_shape]``.
            n_way: N (at most the head's ``n_way``).

        Returns:
            The adapted parameters θ_i' (each ``[B, *shape of θ]``) and the ``[B, Nq, n_way]``
            query logits of the adapted classifiers.
        """
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "Reptile adapts by gradient descent at test time, which torch.inference_mode() forbids; "
                "evaluate under torch.no_grad() instead"
            )
        if n_way > self.n_way:
            raise ValueError(
                f"this Reptile head has {self.n_way} outputs (n_way={self.n_way}) but the episode has "
                f"{n_way} classes; build the learner with n_way >= {n_way}"
            )
        steps = self.inner_steps if self.training else self.eval_inner_steps
        start = {name: p.detach() for name, p in self.model.named_parameters()}

        def task(sx: Tensor, sy: Tensor, qx: Tensor) -> tuple[Params, Tensor]:
            def support_loss(params: Params) -> Tensor:
                return F.cross_entropy(self._logits(params, sx, n_way), sy)

            adapted = inner_loop(support_loss, start, steps, self.inner_lr, self.inner_optimizer)
            return adapted, self._logits(adapted, qx, n_way)

        with torch.no_grad():
            if self.task_batching == "loop" or support_x.shape[0] == 1:
                per_task = [task(*t) for t in zip(support_x, support_y, query_x)]
                adapted = {name: torch.stack([p[name] for p, _ in per_task]) for name in start}
                return adapted, torch.stack([logits for _, logits in per_task])
            chunk = self.tasks_per_vmap
            if chunk is None and support_x.device.type == "cpu":
                chunk = CPU_TASKS_PER_VMAP
            try:
                return vmap(task, randomness="different", chunk_size=chunk)(support_x, support_y, query_x)
            except (RuntimeError, NotImplementedError) as exc:
                raise RuntimeError(
                    f"Reptile: vmap over tasks failed for this backbone ({type(exc).__name__}: {exc}); "
                    "set learner.task_batching = 'loop' to adapt one task at a time"
                ) from exc

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
        return self.adapt(support_x, support_y, query_x, n_way)[1]

    def forward(self, episode: Episode) -> LearnerOutput:
        """Query logits ``[B, N*Q, N]`` of the adapted classifiers and the loss: the query
        cross-entropy, plus (in training, with autograd on) the zero-valued term whose gradient
        is the Reptile meta-gradient ``θ − mean_i θ_i'``."""
        n_way = check_episode(episode)
        adapted, logits = self.adapt(episode.support_x, episode.support_y, episode.query_x, n_way)
        loss = F.cross_entropy(logits.flatten(0, 1), episode.query_y.flatten())
        if self.training and torch.is_grad_enabled():
            meta_term = sum(
                ((p - p.detach()) * (p.detach() - adapted[name].mean(dim=0))).sum()
                for name, p in self.model.named_parameters()
            )
            loss = loss + meta_term
        return LearnerOutput(logits=logits, loss=loss)
