"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu and Wierstra 2016, "Matching
Networks for One Shot Learning").

A query x̂ is labelled by attention over the support set S = {(x_i, y_i)} (eqs. 1–2):

    P(ŷ | x̂, S) = Σ_i a(x̂, x_i) y_i,    a(x̂, x_i) = softmax_i(c(f(x̂, S), g(x_i, S)) / T),

with y_i one-hot, c the cosine similarity and T a temperature. The paper has no temperature
(T = 1); the default here is T = 0.1 for cosine, because cosine scores lie in [-1, 1], so at
T = 1 the softmax stays flat (for 5-way 1-shot the loss cannot fall below about 0.43). On the
glyph data (Conv4, 5-way 1-shot, Adam 1e-3) T = 1 took test accuracy from 0.88 untrained to 0.75
after 120 episodes, T = 0.1 to 0.90 after 90.

c may instead be the negated squared euclidean distance, c(a, b) = −‖a − b‖² (default T = 1):
Snell et al. (2017) found on miniImageNet that it improves Matching Networks as much as
Prototypical Networks over cosine, and showed that with one shot per class the two models
coincide.

The read-out is :func:`fewcore.ops.episode_attention` with the one-hot support labels as values;
it returns probabilities, so the logits are ``log P`` (clamped away from zero) and the loss is the
negative log-likelihood of the query labels.

Without full-context embeddings (FCE), f = g = the backbone. With FCE (the paper's appendix),
with f', g' the backbone's embeddings:

* the support set is read by a bidirectional LSTM, and
  ``g(x_i, S) = h→_i + h←_i + g'(x_i)``;
* each query is refined for K steps by an LSTM that attends over g(S) (k = 1..K):

      ĥ_k, c_k = LSTM(f'(x̂), [h_{k-1}, r_{k-1}], c_{k-1})
      h_k = ĥ_k + f'(x̂)
      r_k = Σ_i a(h_k, g(x_i)) g(x_i),    a(h, g(x_i)) = softmax_i(hᵀ g(x_i))

  and ``f(x̂, S) = h_K``. Here ``r_{k-1}`` enters the cell next to its input rather than next to
  its hidden state: an LSTM's gates are one affine map of input and hidden state together, so
  the gates are the same function, and the cell's state stays of size D (so ``ĥ_k + f'(x̂)`` is
  defined). The state starts at ``h_0 = c_0 = 0``, so ``r_0`` is the mean of g(S). The read
  ``r_k`` is :func:`fewcore.ops.episode_attention` with the dot product and ``g(S)`` as values.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewcore import Backbone, Episode, Learner, LearnerOutput, ops
from fewcore.episodes import check_episode, check_task_batch, class_one_hot, embed_tasks

#: probabilities are clamped to at least this before the log, so a zero never gives -inf logits
_MIN_PROBABILITY = 1e-8


class FullContextEmbedding(nn.Module):
    """The FCE functions g (support: bidirectional LSTM) and f (queries: attention LSTM).

    Args:
        size: D, the backbone's embedding size.
        steps: K, the attention LSTM's processing steps.
    """

    def __init__(self, size: int, steps: int) -> None:
        super().__init__()
        if size < 1 or steps < 1:
            raise ValueError(f"full-context embeddings need size >= 1 and steps >= 1; got size={size}, steps={steps}")
        self.size = size
        self.steps = steps
        self.support_lstm = nn.LSTM(size, size, batch_first=True, bidirectional=True)
        self.query_cell = nn.LSTMCell(2 * size, size)

    def embed_support(self, support: Tensor) -> Tensor:
        """``g(x_i, S) = h→_i + h←_i + g'(x_i)``.

        Args:
            support: ``[B, Ns, D]`` backbone embeddings g'(x_i), in the support set's order.

        Returns:
            ``[B, Ns, D]``.
        """
        both, _ = self.support_lstm(support)  # [B, Ns, 2D]
        forward, backward = both.chunk(2, dim=-1)
        return forward + backward + support

    def embed_queries(self, queries: Tensor, support: Tensor) -> Tensor:
        """``f(x̂, S) = h_K`` of the attention LSTM.

        Args:
            queries: ``[B, Nq, D]`` backbone embeddings f'(x̂).
            support: ``[B, Ns, D]`` context embeddings g(S) from :meth:`embed_support`.

        Returns:
            ``[B, Nq, D]``.
        """
        batch, n_query, size = queries.shape
        inputs = queries.reshape(batch * n_query, size)
        hidden = torch.zeros_like(inputs)
        cell = torch.zeros_like(inputs)
        for _ in range(self.steps):
            read = ops.episode_attention(hidden.view(batch, n_query, size), support, support, metric="dot")
            new_hidden, cell = self.query_cell(torch.cat([inputs, read.reshape(batch * n_query, size)], dim=-1), (hidden, cell))
            hidden = new_hidden + inputs
        return hidden.view(batch, n_query, size)


#: the attention scores c a Matching Network can use, with their default temperature
METRIC_TEMPERATURES = {"cosine": 0.1, "sqeuclidean": 1.0}


class MatchingNetworks(Learner):
    """Attention over the support set, optionally with full-context embeddings.

    Args:
        backbone: the embedding network (f' = g').
        metric: c, ``"cosine"`` (the paper's) or ``"sqeuclidean"`` (scores −‖a − b‖²).
        temperature: T, the attention softmax's temperature (1 in the paper; lower values make
            the read-out sharper); ``None`` takes the metric's default (0.1 for cosine, 1 for
            squared euclidean).
        fce: use full-context embeddings (bidirectional LSTM over the support set, attention LSTM
            for the queries).
        fce_steps: K, the attention LSTM's processing steps.
        item_shape: the item shape (without the batch dim; the engine passes the dataset's),
            needed with ``fce`` to size the LSTMs from ``backbone.embedding_size(item_shape)``.
    """

    def __init__(
        self,
        backbone: Backbone,
        metric: str = "cosine",
        temperature: float | None = None,
        fce: bool = False,
        fce_steps: int = 5,
        item_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if metric not in METRIC_TEMPERATURES:
            raise ValueError(f"metric must be one of {', '.join(METRIC_TEMPERATURES)}; got {metric!r}")
        if temperature is None:
            temperature = METRIC_TEMPERATURES[metric]
        if temperature <= 0:
            raise ValueError(f"temperature must be positive; got {temperature}")
        self.backbone = backbone
        self.metric = metric
        self.temperature = temperature
        self.fce: FullContextEmbedding | None = None
        if fce:
            if item_shape is None:
                raise ValueError(
                    "full-context embeddings size their LSTMs from the backbone's embedding size: pass "
                    "item_shape, the shape of one item (e.g. [1, 28, 28])"
                )
            self.fce = FullContextEmbedding(backbone.embedding_size(tuple(item_shape)), fce_steps)

    def _log_probabilities(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, n_way: int) -> Tensor:
        support, query = embed_tasks(self.backbone, support_x, query_x)
        if self.fce is not None:
            support = self.fce.embed_support(support)
            query = self.fce.embed_queries(query, support)
        labels = class_one_hot(support_y, n_way).to(support.dtype)
        probabilities = ops.episode_attention(query, support, labels, metric=self.metric, temperature=self.temperature)
        return probabilities.clamp_min(_MIN_PROBABILITY).log()

    def predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        """Class scores ``log P(ŷ | x̂, S)``.

        Args:
            support_x: ``[B, Ns, *item_shape]``.
            support_y: ``[B, Ns]`` labels in ``0..N-1``; N is ``max(support_y) + 1``.
            query_x: ``[B, Nq, *item_shape]``.

        Returns:
            ``[B, Nq, N]`` log-probabilities (clamped at ``log 1e-8``).
        """
        n_way = check_task_batch(support_x, support_y, query_x)
        return self._log_probabilities(support_x, support_y, query_x, n_way)

    def forward(self, episode: Episode) -> LearnerOutput:
        """Query log-probabilities ``[B, N*Q, N]`` as logits and their negative log-likelihood."""
        n_way = check_episode(episode)
        logits = self._log_probabilities(episode.support_x, episode.support_y, episode.query_x, n_way)
        loss = F.nll_loss(logits.flatten(0, 1), episode.query_y.flatten())
        return LearnerOutput(logits=logits, loss=loss)
