"""Memory-augmented neural network (Santoro, Bartunov, Botvinick, Wierstra and Lillicrap 2016,
"Meta-Learning with Memory-Augmented Neural Networks").

An episode is a sequence: at step t the network sees an item x_t and the label of the previous
item, ``(x_t, y_{t−1})`` (one-hot, zeros at t = 1), and must output y_t. The label of an item
is revealed only after it has been classified, so the network learns to bind items to labels in
an external memory and to read the binding back when the class reappears. Labels are episode-
specific (the samplers assign classes to labels at random per episode), so nothing but the
memory can carry them.

Per step, with controller state h_t (an LSTM fed ``[φ(x_t); y_{t−1}; r_{t−1}]``, φ the backbone),
R read/write heads with keys ``k_t`` and memory ``M_t ∈ R^{S×D}``:

* cosine similarity ``K(k, M(i)) = k·M(i) / (‖k‖ ‖M(i)‖)``                       (eq. 2)
* read weights ``w^r_t(i) = softmax_i(β_t K(k_t, M_t(i)))``                         (eq. 3)
* read vector ``r_t = Σ_i w^r_t(i) M_t(i)``                                           (eq. 4)
* write weights (LRU access) ``w^w_t = σ(α_t) w^r_{t−1} + (1 − σ(α_t)) w^lu_{t−1}``  (eq. 7)
* write ``M_t(i) = M_{t−1}(i) + w^w_t(i) k_t``, after zeroing the least-used slot     (eq. 8)
* usage ``w^u_t = γ w^u_{t−1} + w^r_t + w^w_t``                                       (eq. 5)
* least-used weights ``w^lu_t``: head j puts weight 1 on the j-th least used slot     (eq. 6)
* output ``p(y_t) = softmax(W_o [h_t; r_t] + b_o)``.

The key strength β_t > 0 (softplus of a controller output) is taken from the Neural Turing
Machine (Graves et al. 2014); the paper's eq. 3 is β_t = 1, which leaves the softmax over S
slots nearly flat. Usage and the write term sum over heads.

Training follows the paper: each task's support and query items are presented in one random
order and the loss is the cross-entropy at every step. Evaluation (``predict``, and ``forward``
in eval mode) presents the support items in order, then reads each query from the memory left
by the support set, independently of the other queries (a query's input carries the last
support label as y_{t−1}, as every step of training does). :func:`accuracy_by_instance` gives
the paper's accuracy at the 1st, 2nd, 5th, 10th presentation of a class, and
:func:`evaluate_by_instance` measures it over a stream of episodes (K + Q ≥ 10 items per class
for the 10th presentation).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewcore import Backbone, Episode, Learner, LearnerOutput
from fewcore_plugins.learners._episode import check_episode, check_task_batch


@dataclass(frozen=True)
class MemoryState:
    """The memory of a batch of sequences.

    Attributes:
        memory: ``[B, S, D]`` slots M.
        usage: ``[B, S]`` usage weights w^u.
        read_weights: ``[B, R, S]`` w^r of the last step, per head.
        least_used: ``[B, R, S]`` w^lu of the last step (head j: one-hot on the j-th least used slot).
    """

    memory: Tensor
    usage: Tensor
    read_weights: Tensor
    least_used: Tensor


def least_used_weights(usage: Tensor, n_heads: int) -> Tensor:
    """w^lu: for head j, a one-hot vector on the j-th least used slot.

    Args:
        usage: ``[B, S]`` usage weights.
        n_heads: R ≤ S.

    Returns:
        ``[B, R, S]`` one-hot rows (ties broken towards the lower slot index).
    """
    order = usage.argsort(dim=1, stable=True)[:, :n_heads]  # [B, R]
    return F.one_hot(order, usage.shape[1]).to(usage.dtype)


def initial_memory(batch: int, slots: int, width: int, n_heads: int, like: Tensor) -> MemoryState:
    """An empty memory: tiny constant slots (so cosine similarity is defined), zero usage.

    Args:
        batch, slots, width, n_heads: B, S, D, R.
        like: a tensor whose dtype and device the state takes.
    """
    memory = like.new_full((batch, slots, width), 1e-6)
    usage = like.new_zeros(batch, slots)
    return MemoryState(memory, usage, like.new_zeros(batch, n_heads, slots), least_used_weights(usage, n_heads))


def memory_step(
    state: MemoryState, keys: Tensor, write_gate: Tensor, strength: Tensor, decay: float
) -> tuple[Tensor, MemoryState]:
    """One LRU write followed by one cosine-attention read (eq. 2-8 above).

    Args:
        state: the memory before the step.
        keys: ``[B, R, D]`` keys k_t, one per head (also the written content).
        write_gate: ``[B, R]`` α_t (pre-sigmoid).
        strength: ``[B, R]`` β_t > 0.
        decay: γ, the usage decay.

    Returns:
        ``[B, R, D]`` read vectors r_t and the memory after the step.
    """
    gate = torch.sigmoid(write_gate)[..., None]  # [B, R, 1]
    write_weights = gate * state.read_weights + (1 - gate) * state.least_used  # [B, R, S]
    least = F.one_hot(state.usage.argmin(dim=1), state.usage.shape[1]).to(state.memory.dtype)  # [B, S]
    memory = state.memory * (1 - least)[..., None] + write_weights.transpose(1, 2) @ keys
    similarity = F.cosine_similarity(keys[:, :, None, :], memory[:, None, :, :], dim=-1, eps=1e-8)  # [B, R, S]
    read_weights = torch.softmax(strength[..., None] * similarity, dim=-1)
    reads = read_weights @ memory  # [B, R, D]
    usage = decay * state.usage + read_weights.sum(dim=1) + write_weights.sum(dim=1)
    return reads, MemoryState(memory, usage, read_weights, least_used_weights(usage, keys.shape[1]))


def accuracy_by_instance(
    logits: Tensor, labels: Tensor, positions: Sequence[int] = (1, 2, 5, 10)
) -> dict[int, float]:
    """Accuracy at the k-th presentation of a class within each sequence (Santoro et al., table 1).

    Args:
        logits: ``[B, T, N]`` per-step class scores.
        labels: ``[B, T]`` the true labels.
        positions: presentation numbers k (1-based).

    Returns:
        k → accuracy over every step that is the k-th presentation of its class; positions that
        no sequence reaches are left out.
    """
    occurrence = (labels[:, :, None] == labels[:, None, :]).tril().sum(dim=2)  # [B, T]: k of each step
    correct = logits.argmax(dim=-1) == labels
    result = {}
    for k in positions:
        at_k = occurrence == k
        if at_k.any():
            result[k] = correct[at_k].float().mean().item()
    return result


def episode_sequences(episode: Episode, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Each task's support and query items as one sequence in a random order.

    Args:
        episode: B tasks.
        generator: draws the orders (the global RNG when None).

    Returns:
        ``x [B, T, *item_shape]``, ``y [B, T]`` with ``T = N·(K + Q)``, and ``order [B, T]``: step
        t of task b shows item ``order[b, t]`` of the support items followed by the queries.
    """
    x = torch.cat([episode.support_x, episode.query_x], dim=1)
    y = torch.cat([episode.support_y, episode.query_y], dim=1)
    steps = y.shape[1]
    order = torch.stack([torch.randperm(steps, generator=generator) for _ in range(y.shape[0])]).to(y.device)
    tasks = torch.arange(y.shape[0], device=y.device)[:, None]
    return x[tasks, order], y[tasks, order], order


def evaluate_by_instance(
    learner: MANN,
    episodes: Iterable[Episode],
    count: int,
    positions: Sequence[int] = (1, 2, 5, 10),
    seed: int = 0,
) -> dict[int, float]:
    """Accuracy by presentation number over the first ``count`` episodes of a stream.

    Each episode's items are shown as one random-order sequence (seeded by ``seed``), as in
    training, with the learner in eval mode and without gradients.

    Args:
        learner: a trained :class:`MANN`.
        episodes: episode batches of one shape (e.g. a sampler over the test split), K + Q
            items per class.
        count: how many episodes (tasks) to use.
        positions: presentation numbers k.
        seed: seeds the presentation orders.

    Returns:
        k → accuracy, over every k-th presentation of a class in those episodes.
    """
    generator = torch.Generator().manual_seed(seed)
    all_logits, all_labels, seen = [], [], 0
    was_training = learner.training
    learner.eval()
    try:
        with torch.no_grad():
            for episode in itertools.takewhile(lambda _: seen < count, episodes):
                x, y, _ = episode_sequences(episode, generator)
                take = min(count - seen, y.shape[0])
                all_logits.append(learner.sequence_logits(x[:take], y[:take], episode.n_way))
                all_labels.append(y[:take])
                seen += take
    finally:
        learner.train(was_training)
    if seen < count:
        raise ValueError(f"the episode stream ended after {seen} episodes; {count} were asked for")
    return accuracy_by_instance(torch.cat(all_logits), torch.cat(all_labels), positions)


class MANN(Learner):
    """LSTM controller with an LRU-access external memory.

    Args:
        backbone: φ, the item encoder (its embedding feeds the controller).
        n_way: the most classes an episode may have (size of the label input and output).
        hidden_size: LSTM controller units.
        memory_slots: S.
        memory_width: D.
        read_heads: R.
        usage_decay: γ.
        input_shape: item shape, to size the controller; ``None`` uses the backbone's
            ``example_input_shape``.
    """

    def __init__(
        self,
        backbone: Backbone,
        n_way: int = 5,
        hidden_size: int = 200,
        memory_slots: int = 128,
        memory_width: int = 40,
        read_heads: int = 4,
        usage_decay: float = 0.95,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("n_way", n_way), ("hidden_size", hidden_size), ("memory_width", memory_width), ("read_heads", read_heads)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1; got {value}")
        if memory_slots < read_heads:
            raise ValueError(f"memory_slots must be at least read_heads={read_heads}; got {memory_slots}")
        if not 0 <= usage_decay <= 1:
            raise ValueError(f"usage_decay must lie in [0, 1]; got {usage_decay}")
        shape = tuple(input_shape) if input_shape is not None else tuple(backbone.example_input_shape)
        self.backbone = backbone
        self.n_way = n_way
        self.memory_slots = memory_slots
        self.memory_width = memory_width
        self.read_heads = read_heads
        self.usage_decay = float(usage_decay)
        self.controller = nn.LSTMCell(backbone.embedding_size(shape) + n_way + read_heads * memory_width, hidden_size)
        # per head: key (D), write gate α (1), key strength β (1)
        self.interface = nn.Linear(hidden_size, read_heads * (memory_width + 2))
        with torch.no_grad():  # start with sharp reads: β = softplus(5) ≈ 5 (a flat softmax over S slots learns slowly)
            self.interface.bias.view(read_heads, memory_width + 2)[:, -1] = 5.0
        self.output = nn.Linear(hidden_size + read_heads * memory_width, n_way)

    def _check_n_way(self, n_way: int) -> None:
        if n_way > self.n_way:
            raise ValueError(
                f"this MANN was built for at most {self.n_way} classes (n_way={self.n_way}) but the episode "
                f"has {n_way}; build it with n_way >= {n_way}"
            )

    def _embed(self, x: Tensor) -> Tensor:
        """``[B, T, *item_shape]`` → ``[B, T, E]``."""
        return self.backbone(x.flatten(0, 1)).unflatten(0, x.shape[:2])

    def _step(
        self, features: Tensor, previous_label: Tensor, reads: Tensor, controller: tuple[Tensor, Tensor], memory: MemoryState
    ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor], MemoryState]:
        """One time step for a batch: returns ``[n, n_way]`` logits, the reads and both states."""
        h, c = self.controller(torch.cat([features, previous_label, reads.flatten(1)], dim=1), controller)
        interface = self.interface(h).view(-1, self.read_heads, self.memory_width + 2)
        keys, gate, strength = interface[..., :-2], interface[..., -2], F.softplus(interface[..., -1])
        reads, memory = memory_step(memory, keys, gate, strength, self.usage_decay)
        logits = self.output(torch.cat([h, reads.flatten(1)], dim=1))
        return logits, reads, (h, c), memory

    def _initial_state(self, batch: int, like: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor], MemoryState]:
        hidden = like.new_zeros(batch, self.controller.hidden_size)
        reads = like.new_zeros(batch, self.read_heads, self.memory_width)
        memory = initial_memory(batch, self.memory_slots, self.memory_width, self.read_heads, like)
        return reads, (hidden, hidden), memory

    def _run(
        self, features: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor], MemoryState]:
        """Present ``[B, T, E]`` features with ``[B, T]`` labels (fed one step late)."""
        batch, steps = labels.shape
        previous = F.one_hot(labels, self.n_way).to(features.dtype)
        previous = torch.cat([previous.new_zeros(batch, 1, self.n_way), previous[:, :-1]], dim=1)
        reads, controller, memory = self._initial_state(batch, features)
        outputs = []
        for t in range(steps):
            logits, reads, controller, memory = self._step(features[:, t], previous[:, t], reads, controller, memory)
            outputs.append(logits)
        return torch.stack(outputs, dim=1), reads, controller, memory

    def sequence_logits(self, x: Tensor, y: Tensor, n_way: int) -> Tensor:
        """The paper's task: classify each item of a sequence, its label revealed one step later.

        Args:
            x: ``[B, T, *item_shape]`` items.
            y: ``[B, T]`` labels in ``0..n_way-1``.
            n_way: N ≤ the learner's ``n_way``.

        Returns:
            ``[B, T, N]`` logits; step t has seen the labels of steps before t only.
        """
        self._check_n_way(n_way)
        return self._run(self._embed(x), y)[0][..., :n_way]

    def predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        """Present the support set, then read every query independently from the memory.

        Args:
            support_x: ``[B, Ns, *item_shape]``.
            support_y: ``[B, Ns]`` labels in ``0..N-1``; N is ``max(support_y) + 1``.
            query_x: ``[B, Nq, *item_shape]``.

        Returns:
            ``[B, Nq, N]`` logits.
        """
        return self._query_logits(support_x, support_y, query_x, check_task_batch(support_x, support_y, query_x))

    def _query_logits(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, n_way: int) -> Tensor:
        self._check_n_way(n_way)
        batch, n_query = query_x.shape[:2]
        support = self._embed(support_x)
        _, reads, (h, c), memory = self._run(support, support_y)
        # Every query continues the same support sequence: repeat the state once per query.
        def per_query(t: Tensor) -> Tensor:
            return t.repeat_interleave(n_query, dim=0)

        memory = MemoryState(*(per_query(t) for t in (memory.memory, memory.usage, memory.read_weights, memory.least_used)))
        last_label = F.one_hot(support_y[:, -1], self.n_way).to(support.dtype)
        logits, *_ = self._step(
            self._embed(query_x).flatten(0, 1), per_query(last_label), per_query(reads), (per_query(h), per_query(c)), memory
        )
        return logits.view(batch, n_query, -1)[..., :n_way]

    def forward(self, episode: Episode) -> LearnerOutput:
        """Training: one random-order sequence of all items, loss at every step. Evaluation: as
        :meth:`predict`. Logits ``[B, N*Q, N]`` are the queries' either way."""
        n_way = check_episode(episode)
        if not self.training:
            logits = self._query_logits(episode.support_x, episode.support_y, episode.query_x, n_way)
            return LearnerOutput(logits, F.cross_entropy(logits.flatten(0, 1), episode.query_y.flatten()))
        x, y, order = episode_sequences(episode)
        logits = self.sequence_logits(x, y, n_way)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        # Back to item order; the queries come after the support items.
        tasks = torch.arange(y.shape[0], device=y.device)[:, None]
        unordered = torch.empty_like(logits)
        unordered[tasks, order] = logits
        return LearnerOutput(unordered[:, episode.support_x.shape[1] :], loss)
