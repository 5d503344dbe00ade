"""A learned bilinear compatibility between item embeddings and class descriptions.

In the style of DeViSE (Frome et al., NeurIPS 2013) and ALE (Akata et al., CVPR 2013 / TPAMI
2016): an item x is embedded as θ(x) ∈ R^E — by any registered backbone, or by flattening it
when it already is a feature vector — and its compatibility with a class of description
φ(y) ∈ R^A is bilinear,

    F(x, y; W) = θ(x)ᵀ W φ(y),        W ∈ R^{E×A}.

Instead of DeViSE's hinge rank loss or ALE's weighted ranking loss, W (and the backbone, when
there is one) is trained with a softmax over the seen classes, as in the cross-entropy variants
Xian et al. (2018) compare:

    p(y | x) = exp F(x, y) / Σ_{y' ∈ seen} exp F(x, y'),    minimise −log p(y_true | x).

φ(y) is the description scaled to unit L2 norm (``normalize=True``), so no class wins by the
size of its vector. At test time the softmax runs over whichever classes are described — unseen
only (ZSL) or all (GZSL).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fewcore
from fewcore.zeroshot._model import ZeroShotModel, check_fit

#: items embedded per backbone call when scoring (bounds a backbone's activations on large test sets)
_SCORE_CHUNK = 1024


class Compatibility(ZeroShotModel):
    """Bilinear compatibility ``θ(x)ᵀ W φ(y)`` trained with a softmax over the seen classes.

    Args:
        backbone: a registered backbone name to embed the items with (trained jointly), or
            ``None`` to use the flattened items as θ(x) (pre-extracted features).
        backbone_options: options for the backbone's factory.
        item_shape: the shape of one item, for sizing W from the backbone's embedding size.
        epochs: passes over the training items.
        batch_size: items per step.
        lr: Adam's learning rate.
        weight_decay: L2 penalty on every parameter (Adam's ``weight_decay``).
        normalize: scale each class description to unit L2 norm.
        seed: seed of W's initial values and of the batch order.
    """

    def __init__(
        self,
        backbone: str | None = None,
        backbone_options: Mapping[str, Any] | None = None,
        item_shape: tuple[int, ...] | None = None,
        epochs: int = 20,
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        normalize: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if epochs < 1 or batch_size < 1:
            raise ValueError(f"compat: epochs and batch_size must be at least 1; got {epochs} and {batch_size}")
        if lr <= 0:
            raise ValueError(f"compat: lr must be positive; got {lr}")
        if item_shape is None:
            raise ValueError("compat: item_shape is needed to size W (the zero-shot runner passes the dataset's)")
        self.item_shape = tuple(item_shape)
        if backbone is None:
            if backbone_options:
                raise ValueError("compat: backbone_options given without a backbone")
            self.backbone: nn.Module = nn.Flatten()
            embedding = 1
            for size in self.item_shape:
                embedding *= size
        else:
            with torch.random.fork_rng():  # the backbone's initial weights follow the seed, without touching the caller's
                torch.manual_seed(seed)
                made = fewcore.create("backbone", backbone, item_shape=self.item_shape, **dict(backbone_options or {}))
            self.backbone = made
            embedding = made.embedding_size(self.item_shape)
        self.W = nn.Parameter(torch.empty(embedding, 0))  # A is known only in fit()
        self.embedding = embedding
        self.epochs, self.batch_size, self.lr, self.weight_decay = epochs, batch_size, lr, weight_decay
        self.normalize = normalize
        self.seed = seed

    def _describe(self, attributes: Tensor) -> Tensor:
        attributes = attributes.float()
        return F.normalize(attributes, dim=1) if self.normalize else attributes

    def fit(self, x: Tensor, y: Tensor, attributes: Tensor) -> None:
        """Train W (and the backbone) on ``x [m, *item_shape]``, ``y [m]`` and ``attributes [z, a]``."""
        check_fit(x, y, attributes)
        gen = torch.Generator().manual_seed(self.seed)
        self.W = nn.Parameter(torch.randn(self.embedding, attributes.shape[1], generator=gen) / self.embedding**0.5)
        described = self._describe(attributes)
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        self.train()
        for _ in range(self.epochs):
            order = torch.randperm(x.shape[0], generator=gen)
            for start in range(0, x.shape[0], self.batch_size):
                batch = order[start : start + self.batch_size]
                logits = self.backbone(x[batch].float()) @ self.W @ described.T
                loss = F.cross_entropy(logits, y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        self.eval()

    @torch.no_grad()
    def scores(self, x: Tensor, attributes: Tensor) -> Tensor:
        """``[n, C]`` compatibilities ``θ(x)ᵀ W φ(y)`` of ``x [n, *item_shape]`` with ``attributes [C, a]``."""
        if self.W.numel() == 0:
            raise RuntimeError("compat: call fit() before scores()")
        described = self._describe(attributes)
        step = _SCORE_CHUNK
        chunks = [self.backbone(x[i : i + step].float()) @ self.W @ described.T for i in range(0, x.shape[0], step)]
        return torch.cat(chunks)
