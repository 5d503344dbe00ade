"""Memory-augmented neural network (Santoro, Bartunov, Botvinick, Wierstra and Lillicrap 2016,
"Meta-Learning with Memory-Augmented Neural Networks").

An episode is a sequence: at step t the network sees an item x_t and the label of the previous
item, ``(x_t, y_{t−1})`` (one-hot, zeros at t = 1), and must output y_t. The label of an item
is revealed only after it has been classified, so the network learns to bind items to labels in
an external memory and to read the binding back when the class reappears. Labels are episode-
specific (the samplers assign classes to labels at random per episode), so nothing but the
memory can carry them.

Per step, with controller state h_t (an LSTM fed ``[φ(x_t); y_{t−1}; r_{t−1}]``, φ the backbone),
R read/write heads and memory ``M_t ∈ R^{S×(D+N)}`` (each slot a key of width D and a label part
of width N):

* key ``k_t = W_k [h_t; φ(x_t)] + b_k`` (per head, width D)
* cosine similarity ``K(k, M(i)) = k·M(i)_{:D} / (‖k‖ ‖M(i)_{:D}‖)``                 (eq. 2)
* read weights ``w^r_t(i) = softmax_i(β_t K(k_t, M_t(i)))``                         (eq. 3)
* read vector ``r_t = Σ_i w^r_t(i) M_t(i)``                                           (eq. 4)
* write weights (LRU access) ``w^w_t = σ(α_t) w^r_{t−1} + (1 − σ(α_t)) w^lu_{t−1}``  (eq. 7)
* write ``M_t(i) = M_{t−1}(i) + w^w_t(i) [k_{t−1}; y_{t−1}]``, after zeroing the least-used
  slot                                                                                 (eq. 8)
* usage ``w^u_t = γ w^u_{t−1} + w^r_t + w^w_t``                                       (eq. 5)
* least-used weights ``w^lu_t``: head j puts weight 1 on the j-th least used slot     (eq. 6)
* output ``p(y_t) = softmax(W_o [h_t; r_t] + b_o)``.

Where this departs from the paper, and why. With the paper's mechanics the model did not learn
to use its memory in short runs (accuracy flat across presentations); with the first two
changes below it reads labels back from the second presentation of a class on within a hundred
training steps (tests/plugins/test_mann.py):

* **What is written.** The paper writes the key, ``M_t += w^w_t k_t``. But the label of x_t
  arrives only at step t + 1, so a key written at step t cannot hold it, and one vector would
  have to be both the query for x_t and the record of the earlier item. Here each step writes
  the previous step's key together with the label that has just arrived, ``[k_{t−1}; y_{t−1}]``,
  and keys are compared with the key part of each slot only: a read returns the labels bound
  to similar earlier items. The controller still decides where to write (α_t) and how sharply
  to read (β_t), and shapes the keys.
* **Where keys come from.** Keys are computed from the controller output and the item's
  embedding, with the controller's weights starting at zero. A fresh LSTM's output is dominated
  by what all its inputs share (in a measured case, cosine 0.97 between keys of the same class
  and 0.92 between keys of different classes), so reads were nearly uniform and gave training
  no signal; the embedding tells classes apart from the first step.
* **Initial values.** The key strength β_t > 0 (softplus of a controller output) is taken from
  the Neural Turing Machine (Graves et al. 2014) and starts at 10; the paper's eq. 3 is β_t = 1,
  which leaves the softmax over S slots nearly flat. The write gate starts nearly closed
  (σ(α) ≈ 0.02: each item goes to a fresh least-used slot). An open gate adds the written vector
  to every slot the previous, still diffuse, read touched; cosine similarity ignores magnitude,
  so such faint copies of an average key match every key well and draw reads away from the
  real entries (seen in the memory of an untrained model). Empty slots are zeros (similarity 0).

Usage and the write term sum over heads.

Training follows the paper: each task's support and query items are presented in one random
order and the loss is the cross-entropy at every step. Evaluation (``predict``, and ``forward``
in eval mode) presents the support items in order, then reads each query from the memory left
by the support set, independently of the other queries (a query's input carries the last
support label as y_{t−1}, as every step of training does). The paper's evaluation protocol,
accuracy at the 1st, 2nd, 5th, 10th presentation of a class, is in
:mod:`fewcore.plugins.learners.mann_protocol`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewcore import Backbone, Episode, Learner, LearnerOutput
from fewcore.episodes import check_episode, check_task_batch

#: initial write-gate logit α: σ(−4) ≈ 0.02, writes go to the least used slot (see the module notes)
_WRITE_GATE_INIT = -4.0
#: initial key strength β = softplus(10) ≈ 10: reads favour the best-matching slots from the start
_KEY_STRENGTH_INIT = 10.0


@dataclass(frozen=True)
class MemoryState:
    """The memory of a batch of sequences.

    Attributes:
        memory: ``[B, S, W]`` slots M (in a MANN, a key of width D and a label part of width N).
        usage: ``[B, S]`` usage weights w^u.
        read_weights: ``[B, R, S]`` w^r of the last step, per head.
        least_used: ``[B, R, S]`` w^lu of the last step (head j: one-hot on the j-th least used slot).
    """

    memory: Tensor
    usage: Tensor
    read_weights: Tensor
    least_used: Tensor


@dataclass(frozen=True)
class RecurrentState:
    """Everything a MANN carries from one step to the next, for a batch of sequences.

    Attributes:
        h, c: ``[B, H]`` LSTM controller state.
        keys: ``[B, R, D]`` the read keys of the last step (written, with the next label, one step later).
        reads: ``[B, R, D + N]`` read vectors of the last step.
        memory: the external memory.
    """

    h: Tensor
    c: Tensor
    keys: Tensor
    reads: Tensor
    memory: MemoryState

    def repeat_interleave(self, repeats: int) -> RecurrentState:
        """Each sequence's state ``repeats`` times in a row (to continue it ``repeats`` ways)."""
        def each(t: Tensor) -> Tensor:
            return t.repeat_interleave(repeats, dim=0)

        memory = MemoryState(*(each(t) for t in (self.memory.memory, self.memory.usage, self.memory.read_weights, self.memory.least_used)))
        return RecurrentState(each(self.h), each(self.c), each(self.keys), each(self.reads), memory)


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
    """An empty memory: zero slots (cosine similarity 0 with any key), zero usage.

    Args:
        batch: B, the tasks.
        slots: S, the memory slots.
        width: D, the width of a slot.
        n_heads: R, the read heads.
        like: a tensor whose dtype and device the state takes.
    """
    memory = like.new_zeros(batch, slots, width)
    usage = like.new_zeros(batch, slots)
    return MemoryState(memory, usage, like.new_zeros(batch, n_heads, slots), least_used_weights(usage, n_heads))


def memory_step(
    state: MemoryState, keys: Tensor, contents: Tensor, write_gate: Tensor, strength: Tensor, decay: float
) -> tuple[Tensor, MemoryState]:
    """One LRU write followed by one cosine-attention read (eq. 2-8 above).

    Args:
        state: the memory before the step, ``[B, S, W]`` slots.
        keys: ``[B, R, D]`` read keys k_t, one per head, compared with the first D ≤ W columns
            of each slot.
        contents: ``[B, R, W]`` the vectors written, one per head.
        write_gate: ``[B, R]`` α_t (pre-sigmoid).
        strength: ``[B, R]`` β_t > 0.
        decay: γ, the usage decay.

    Returns:
        ``[B, R, W]`` read vectors r_t (whole slots) and the memory after the step.
    """
    gate = torch.sigmoid(write_gate)[..., None]  # [B, R, 1]
    write_weights = gate * state.read_weights + (1 - gate) * state.least_used  # [B, R, S]
    least = F.one_hot(state.usage.argmin(dim=1), state.usage.shape[1]).to(state.memory.dtype)  # [B, S]
    memory = state.memory * (1 - least)[..., None] + write_weights.transpose(1, 2) @ contents
    slot_keys = memory[:, None, :, : keys.shape[2]]
    similarity = F.cosine_similarity(keys[:, :, None, :], slot_keys, dim=-1, eps=1e-8)  # [B, R, S]
    read_weights = torch.softmax(strength[..., None] * similarity, dim=-1)
    reads = read_weights @ memory  # [B, R, W]
    usage = decay * state.usage + read_weights.sum(dim=1) + write_weights.sum(dim=1)
    return reads, MemoryState(memory, usage, read_weights, least_used_weights(usage, keys.shape[1]))


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


class MANN(Learner):
    """LSTM controller with an LRU-access external memory.

    Args:
        backbone: φ, the item encoder (its embedding feeds the controller).
        n_way: the most classes an episode may have (size of the label input and output).
        hidden_size: LSTM controller units.
        memory_slots: S.
        memory_width: D, the width of a key; a slot holds a key and a label, ``D + n_way``.
        read_heads: R.
        usage_decay: γ.
        item_shape: the shape of one item, to size the controller (the engine passes the
            dataset's); ``None`` uses the backbone's ``example_input_shape``.
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
        item_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("n_way", n_way), ("hidden_size", hidden_size), ("memory_width", memory_width), ("read_heads", read_heads)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1; got {value}")
        if memory_slots < read_heads:
            raise ValueError(f"memory_slots must be at least read_heads={read_heads}; got {memory_slots}")
        if not 0 <= usage_decay <= 1:
            raise ValueError(f"usage_decay must lie in [0, 1]; got {usage_decay}")
        shape = tuple(item_shape) if item_shape is not None else tuple(backbone.example_input_shape)
        self.backbone = backbone
        self.n_way = n_way
        self.memory_slots = memory_slots
        self.memory_width = memory_width
        self.read_heads = read_heads
        self.usage_decay = float(usage_decay)
        embedding = backbone.embedding_size(shape)
        read_size = read_heads * (memory_width + n_way)
        self.controller = nn.LSTMCell(embedding + n_way + read_size, hidden_size)
        # per head: key k (D), from the controller output and the item's embedding
        self.key = nn.Linear(hidden_size + embedding, read_heads * memory_width)
        # per head: write gate α (1), key strength β (1)
        self.gates = nn.Linear(hidden_size, read_heads * 2)
        with torch.no_grad():  # see the module notes: keys start as a projection of the embedding
            self.key.weight[:, :hidden_size] = 0.0
            self.key.bias.zero_()
            bias = self.gates.bias.view(read_heads, 2)
            bias[:, 0] = _WRITE_GATE_INIT
            bias[:, 1] = _KEY_STRENGTH_INIT
        self.output = nn.Linear(hidden_size + read_size, n_way)

    def _check_n_way(self, n_way: int) -> None:
        if n_way > self.n_way:
            raise ValueError(
                f"this MANN was built for at most {self.n_way} classes (n_way={self.n_way}) but the episode "
                f"has {n_way}; build it with n_way >= {n_way}"
            )

    def _embed(self, x: Tensor) -> Tensor:
        """``[B, T, *item_shape]`` → ``[B, T, E]``."""
        return self.backbone(x.flatten(0, 1)).unflatten(0, x.shape[:2])

    def _step(self, features: Tensor, previous_label: Tensor, state: RecurrentState) -> tuple[Tensor, RecurrentState]:
        """One time step for a batch: ``[n, n_way]`` logits and the next state."""
        h, c = self.controller(torch.cat([features, previous_label, state.reads.flatten(1)], dim=1), (state.h, state.c))
        keys = self.key(torch.cat([h, features], dim=1)).view(-1, self.read_heads, self.memory_width)
        gates = self.gates(h).view(-1, self.read_heads, 2)
        gate, strength = gates[..., 0], F.softplus(gates[..., 1])
        # The label that arrived with this step belongs to the previous item: bind it to the
        # key that item was read with.
        contents = torch.cat([state.keys, previous_label[:, None, :].expand(-1, self.read_heads, -1)], dim=2)
        reads, memory = memory_step(state.memory, keys, contents, gate, strength, self.usage_decay)
        logits = self.output(torch.cat([h, reads.flatten(1)], dim=1))
        return logits, RecurrentState(h, c, keys, reads, memory)

    def _initial_state(self, batch: int, like: Tensor) -> RecurrentState:
        hidden = like.new_zeros(batch, self.controller.hidden_size)
        keys = like.new_zeros(batch, self.read_heads, self.memory_width)
        reads = like.new_zeros(batch, self.read_heads, self.memory_width + self.n_way)
        memory = initial_memory(batch, self.memory_slots, self.memory_width + self.n_way, self.read_heads, like)
        return RecurrentState(hidden, hidden, keys, reads, memory)

    def _run(self, features: Tensor, labels: Tensor) -> tuple[Tensor, RecurrentState]:
        """Present ``[B, T, E]`` features with ``[B, T]`` labels (fed one step late)."""
        batch, steps = labels.shape
        previous = F.one_hot(labels, self.n_way).to(features.dtype)
        previous = torch.cat([previous.new_zeros(batch, 1, self.n_way), previous[:, :-1]], dim=1)
        state = self._initial_state(batch, features)
        outputs = []
        for t in range(steps):
            logits, state = self._step(features[:, t], previous[:, t], state)
            outputs.append(logits)
        return torch.stack(outputs, dim=1), state

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
        _, state = self._run(support, support_y)
        # Every query continues the same support sequence: repeat the state once per query.
        last_label = F.one_hot(support_y[:, -1], self.n_way).to(support.dtype)
        logits, _ = self._step(
            self._embed(query_x).flatten(0, 1), last_label.repeat_interleave(n_query, dim=0), state.repeat_interleave(n_query)
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
