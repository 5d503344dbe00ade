"""ANIL (Raghu, Raghu, Bengio and Vinyals 2020, "Rapid Learning or Feature Reuse? Towards
Understanding the Effectiveness of MAML").

ANIL ("Almost No Inner Loop") is MAML with the inner loop restricted to the network's head. The
classifier is ``f(x) = W φ_θ(x) + b``: a backbone φ_θ (the body) and a linear head ``w = (W, b)``
with ``n_way`` outputs. For each task ``T_i`` the body is left as it is and only the head takes
``s`` gradient steps on the support loss, starting from the meta-learned head w:

    w_i^(0) = w,    w_i^(t+1) = w_i^(t) − α ∇_w L_{T_i}^{support}(w_i^(t); φ_θ),    w_i' = w_i^(s),

and body and head initialization are meta-trained together on the query loss of the adapted heads,

    min_{θ, w}  Σ_{T_i}  L_{T_i}^{query}(w_i'; φ_θ),

differentiating through the inner loop (second order, as MAML; ``first_order`` drops those terms).
Since the body does not change inside the inner loop, the features ``φ_θ(x)`` of every support and
query item are computed once per meta-batch, in one backbone call; the inner loop then runs on a
``[Ns, D]`` feature matrix per task, and the meta-gradient reaches θ through those features, both
directly (query features) and through the adapted heads (support features).

Unlike MAML's learner, the body is called as an ordinary module: in training its batch norm uses
the statistics of the whole meta-batch (support and query items together) and updates its running
statistics, which evaluation uses.

The inner loop is :func:`fewcore.plugins.learners.maml.adapt`, vectorized over the tasks of the
meta-batch with :func:`torch.func.vmap` (the head is small, so all tasks are batched at once).
Episodes with fewer classes than ``n_way`` use the first N outputs of the head.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import vmap

from fewcore import Backbone, Episode, Learner, LearnerOutput
from fewcore.episodes import check_episode, check_task_batch, embed_tasks
from fewcore.plugins.learners.maml import Params, adapt


class ANIL(Learner):
    """MAML with only the linear head adapted in the inner loop, on features computed once.

    Args:
        backbone: the body φ_θ, meta-trained but not adapted per task.
        n_way: outputs of the head, the largest N of the episodes it will see.
        inner_steps: inner gradient steps s on the head during meta-training (≥ 0).
        inner_lr: the inner step size α.
        eval_inner_steps: inner steps in evaluation mode; ``None`` uses ``inner_steps``.
        first_order: drop the second-order terms of the meta-gradient.
        item_shape: the shape of one item, to size the head; ``None`` uses the backbone's
            ``example_input_shape``.
    """

    def __init__(
        self,
        backbone: Backbone,
        n_way: int = 5,
        inner_steps: int = 5,
        inner_lr: float = 0.4,
        eval_inner_steps: int | None = None,
        first_order: bool = False,
        item_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(n_way, int) or n_way < 1:
            raise ValueError(f"n_way must be a positive integer; got {n_way!r}")
        for name, steps in (("inner_steps", inner_steps), ("eval_inner_steps", eval_inner_steps)):
            if steps is not None and (not isinstance(steps, int) or steps < 0):
                raise ValueError(f"{name} must be a non-negative integer; got {steps!r}")
        if not math.isfinite(inner_lr):
            raise ValueError(f"inner_lr must be a finite number; got {inner_lr}")
        shape = tuple(item_shape) if item_shape is not None else tuple(backbone.example_input_shape)
        self.backbone = backbone
        self.head = nn.Linear(backbone.embedding_size(shape), n_way)
        self.n_way = n_way
        self.inner_steps = inner_steps
        self.inner_lr = float(inner_lr)
        self.eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
        self.first_order = first_order

    def adapted_logits(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, n_way: int) -> Tensor:
        """Embed every item once, adapt a head per task on its support features, classify its queries.

        Uses ``inner_steps`` in training mode and ``eval_inner_steps`` in evaluation mode. The
        inner loop computes its gradients under ``torch.no_grad()`` too, but not under
        ``torch.inference_mode()``.

        Args:
            support_x: ``[B, Ns, *item_shape]``.
            support_y: ``[B, Ns]`` labels in ``0..n_way-1``.
            query_x: ``[B, Nq, *item_shape]``.
            n_way: N (at most the head's ``n_way``).

        Returns:
            ``[B, Nq, n_way]`` logits of the adapted heads.
        """
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "ANIL adapts its head by gradient descent at test time, which torch.inference_mode() "
                "forbids; evaluate under torch.no_grad() instead"
            )
        if n_way > self.n_way:
            raise ValueError(
                f"this ANIL head has {self.n_way} outputs (n_way={self.n_way}) but the episode has "
                f"{n_way} classes; build the learner with n_way >= {n_way}"
            )
        support, query = embed_tasks(self.backbone, support_x, query_x)  # [B, Ns, D], [B, Nq, D]
        steps = self.inner_steps if self.training else self.eval_inner_steps
        first_order = self.first_order or not torch.is_grad_enabled()
        head: Params = {"weight": self.head.weight[:n_way], "bias": self.head.bias[:n_way]}
        lrs = {name: self.inner_lr for name in head}

        def task(support_features: Tensor, labels: Tensor, query_features: Tensor) -> Tensor:
            def support_loss(w: Params) -> Tensor:
                return F.cross_entropy(F.linear(support_features, w["weight"], w["bias"]), labels)

            adapted = adapt(support_loss, head, lrs, steps, first_order)
            return F.linear(query_features, adapted["weight"], adapted["bias"])

        return vmap(task)(support, support_y, query)

    def predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        """Class scores of the adapted heads.

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
        return LearnerOutput(logits=logits, loss=loss)
