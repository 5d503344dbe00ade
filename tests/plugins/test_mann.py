"""MANN: memory read/write shapes, least-recently-used writes, label offset, accuracy by instance, learning."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import fewcore
from fewcore import Episode
from fewcore.plugins.learners.mann import (
    MANN,
    episode_sequences,
    initial_memory,
    least_used_weights,
    memory_step,
)
from fewcore.plugins.learners.mann_protocol import accuracy_by_instance, evaluate_by_instance

# Tiny models: a second intra-op thread only adds synchronisation (see tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def test_least_used_weights_put_head_j_on_the_jth_least_used_slot() -> None:
    usage = torch.tensor([[0.5, 0.1, 0.3, 0.0], [0.0, 0.0, 2.0, 1.0]])
    expected = torch.tensor(
        [[[0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]], [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]]
    )
    assert torch.equal(least_used_weights(usage, 2), expected)


def test_memory_step_shapes() -> None:
    # slots of width 6: keys of width 4 and two more columns (a MANN's label)
    state = initial_memory(batch=3, slots=7, width=6, n_heads=2, like=torch.zeros(()))
    reads, after = memory_step(state, torch.randn(3, 2, 4), torch.randn(3, 2, 6), torch.zeros(3, 2), torch.ones(3, 2), decay=0.9)
    assert reads.shape == (3, 2, 6)
    assert after.memory.shape == (3, 7, 6) and after.usage.shape == (3, 7)
    assert after.read_weights.shape == after.least_used.shape == (3, 2, 7)
    torch.testing.assert_close(after.read_weights.sum(-1), torch.ones(3, 2))
    torch.testing.assert_close(reads, after.read_weights @ after.memory)  # r_t = Σ_i w^r_t(i) M_t(i)


def _orthogonal_keys(count: int, width: int) -> Tensor:
    return torch.eye(width)[:count] * 3.0


def test_lru_writes_fill_free_slots_in_order_then_overwrite_the_least_recently_used() -> None:
    slots, width, decay = 3, 4, 0.5
    keys = _orthogonal_keys(4, width)
    state = initial_memory(1, slots, width, 1, torch.zeros(()))
    never_previous = torch.full((1, 1), -math.inf)  # σ(α) = 0: write only to the least used slot
    sharp = torch.full((1, 1), 50.0)
    for t in range(3):
        _, state = memory_step(state, keys[t].view(1, 1, width), keys[t].view(1, 1, width), never_previous, sharp, decay)
        # the t-th key went to the t-th free slot, untouched otherwise
        torch.testing.assert_close(state.memory[0, t], keys[t], atol=1e-5, rtol=0)
    assert state.usage[0].argmin().item() == 0  # slot 0, written first, is now the least recently used
    _, state = memory_step(state, keys[3].view(1, 1, width), keys[3].view(1, 1, width), never_previous, sharp, decay)
    torch.testing.assert_close(state.memory[0, 0], keys[3], atol=1e-6, rtol=0)  # erased, then overwritten
    torch.testing.assert_close(state.memory[0, 1:], keys[1:3], atol=1e-5, rtol=0)  # the others are kept


def test_gate_open_writes_to_the_previously_read_slot() -> None:
    width = 4
    keys = _orthogonal_keys(2, width)
    state = initial_memory(1, 3, width, 1, torch.zeros(()))
    sharp = torch.full((1, 1), 50.0)
    _, state = memory_step(state, keys[0].view(1, 1, width), keys[0].view(1, 1, width), torch.full((1, 1), -math.inf), sharp, 0.9)
    read_slot = state.read_weights[0, 0].argmax().item()
    assert read_slot == 0  # the key just written is the best match
    _, state = memory_step(state, keys[1].view(1, 1, width), keys[1].view(1, 1, width), torch.full((1, 1), math.inf), sharp, 0.9)
    torch.testing.assert_close(state.memory[0, 0], keys[0] + keys[1], atol=1e-4, rtol=0)  # added to slot 0


def test_keys_address_the_key_columns_and_reads_return_the_bound_label() -> None:
    width, n_way = 4, 3
    keys = _orthogonal_keys(3, width)
    labels = torch.eye(n_way)[[2, 0, 1]]  # key i is bound to label (2, 0, 1)[i]
    state = initial_memory(1, 5, width + n_way, 1, torch.zeros(()))
    lru, sharp = torch.full((1, 1), -math.inf), torch.full((1, 1), 50.0)
    for key, label in zip(keys, labels):
        _, state = memory_step(state, key.view(1, 1, width), torch.cat([key, label]).view(1, 1, -1), lru, sharp, 0.9)
    # a noisy version of key 1 reads back slot 1 whole: the key and the label bound to it
    query = (keys[1] + 0.3 * keys[0]).view(1, 1, width)
    reads, _ = memory_step(state, query, torch.zeros(1, 1, width + n_way), lru, sharp, 0.9)
    torch.testing.assert_close(reads[0, 0, width:], labels[1], atol=1e-3, rtol=0)


def test_accuracy_by_instance_counts_presentations_per_class() -> None:
    labels = torch.tensor([[0, 1, 0, 0, 1, 1]])
    predicted = torch.tensor([[1, 0, 0, 1, 1, 1]])
    logits = torch.nn.functional.one_hot(predicted, 2).float()
    # 1st presentations: steps 0, 1 (both wrong); 2nd: steps 2, 4 (both right); 3rd: steps 3 (wrong), 5 (right)
    result = accuracy_by_instance(logits, labels, (1, 2, 3, 10))
    assert {k: v.tolist() for k, v in result.items()} == {1: [0.0], 2: [1.0], 3: [0.5]}


def test_accuracy_by_instance_is_per_sequence() -> None:
    labels = torch.tensor([[0, 1, 1, 0], [1, 1, 0, 1]])
    predicted = torch.tensor([[0, 0, 1, 1], [1, 0, 0, 1]])
    logits = torch.nn.functional.one_hot(predicted, 2).float()
    result = accuracy_by_instance(logits, labels, (1, 2, 3))
    # sequence 0: 1st presentations at steps 0, 1 (right, wrong), 2nd at steps 2, 3 (right, wrong);
    # sequence 1: 1st at steps 0, 2 (both right), 2nd at step 1 (wrong), 3rd at step 3 (right)
    assert {k: v.tolist() for k, v in result.items()} == {1: [0.5, 1.0], 2: [0.5, 0.0], 3: [1.0]}


def _mann(**config: object) -> MANN:
    backbone = fewcore.create("backbone", "mlp", in_features=6, hidden_features=[], out_features=8)
    return MANN(backbone, n_way=3, hidden_size=16, memory_slots=8, memory_width=5, read_heads=2, **config)


def test_a_label_is_seen_only_one_step_after_its_item() -> None:
    torch.manual_seed(0)
    learner = _mann()
    x, y = torch.randn(2, 6, 6), torch.randint(0, 3, (2, 6))
    logits = learner.sequence_logits(x, y, 3)
    assert logits.shape == (2, 6, 3)
    changed = y.clone()
    changed[:, 3] = (y[:, 3] + 1) % 3
    again = learner.sequence_logits(x, changed, 3)
    torch.testing.assert_close(again[:, :4], logits[:, :4])  # steps ≤ 3 never saw y_3
    assert not torch.allclose(again[:, 4:], logits[:, 4:])  # step 4 did


def test_queries_are_read_independently_and_shapes_follow_the_contract() -> None:
    torch.manual_seed(1)
    learner = _mann().eval()
    support_x, support_y = torch.randn(2, 3, 6), torch.tensor([[2, 0, 1], [0, 1, 2]])
    query_x = torch.randn(2, 4, 6)
    scores = learner.predict(support_x, support_y, query_x)
    assert scores.shape == (2, 4, 3)
    alone = learner.predict(support_x, support_y, query_x[:, 2:3])
    torch.testing.assert_close(alone[:, 0], scores[:, 2])
    with pytest.raises(ValueError, match="n_way >= 4"):
        learner.predict(torch.randn(1, 4, 6), torch.tensor([[0, 1, 2, 3]]), query_x[:1])


def test_bad_configuration_is_reported() -> None:
    with pytest.raises(ValueError, match="memory_slots"):
        _mann_config(memory_slots=1, read_heads=2)
    with pytest.raises(ValueError, match="usage_decay"):
        _mann_config(usage_decay=1.5)


def _mann_config(**config: object) -> MANN:
    backbone = fewcore.create("backbone", "mlp", in_features=6, hidden_features=[], out_features=8)
    return MANN(backbone, **config)


def _new_class_sequences(generator: torch.Generator, batch: int, n_way: int, per_class: int, features: int) -> Episode:
    """Episodes of classes never seen before (a fresh Gaussian mean per class and task)."""
    means = torch.randn(batch, n_way, features, generator=generator)

    def part(count: int) -> tuple[Tensor, Tensor]:
        y = torch.stack([torch.randperm(n_way * count, generator=generator) % n_way for _ in range(batch)])
        x = means[torch.arange(batch)[:, None], y] + 0.1 * torch.randn(batch, n_way * count, features, generator=generator)
        return x, y

    (support_x, support_y), (query_x, query_y) = part(1), part(per_class - 1)
    return Episode(support_x, support_y, query_x, query_y, n_way, 1)


def test_mann_learns_to_read_labels_back_from_memory() -> None:
    # Santoro et al.'s signature of memory use: accuracy rises with the presentation number. The
    # first presentation of a class can only be guessed (a little better than chance, from the
    # labels not yet revealed); later ones are right only if the label bound to the earlier items
    # is read back.
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    backbone = fewcore.create("backbone", "mlp", in_features=8, hidden_features=[], out_features=16)
    learner = MANN(backbone, n_way=3, hidden_size=32, memory_slots=24, memory_width=8, read_heads=1)
    test = [_new_class_sequences(torch.Generator().manual_seed(1), 100, 3, 6, 8)]

    def by_instance() -> dict[int, float]:
        return {r.position: r.accuracy for r in evaluate_by_instance(learner, iter(test), 100, positions=(1, 2, 3, 4, 5, 6))}

    before = by_instance()
    optimizer = torch.optim.Adam(learner.parameters(), lr=3e-3)
    for _ in range(100):
        optimizer.zero_grad()
        learner(_new_class_sequences(generator, 16, 3, 6, 8)).loss.backward()
        optimizer.step()
    after = by_instance()
    later = sum(after[k] for k in range(2, 7)) / 5
    message = f"accuracy by presentation before {before}, after {after} (chance 0.33)"
    assert later > 0.75 and later > after[1] + 0.15, message
    assert later > sum(before[k] for k in range(2, 7)) / 5 + 0.3, message


def test_evaluate_by_instance_over_an_episode_stream() -> None:
    torch.manual_seed(2)
    learner = _mann()
    stream = [_new_class_sequences(torch.Generator().manual_seed(i), 4, 3, 5, 6) for i in range(3)]
    result = evaluate_by_instance(learner, iter(stream), count=10, positions=(1, 2, 5, 6))
    assert [r.position for r in result] == [1, 2, 5]  # 5 presentations per class: no 6th
    assert all(0.0 <= r.accuracy <= 1.0 and r.ci95 >= 0.0 and r.episodes == 10 for r in result)
    assert learner.training  # the mode is restored
    x, y, _ = episode_sequences(stream[0], torch.Generator().manual_seed(0))
    assert sorted(y[0].tolist()) == sorted(torch.cat([stream[0].support_y[0], stream[0].query_y[0]]).tolist())
    with pytest.raises(ValueError, match="ended after 12 episodes"):
        evaluate_by_instance(learner, iter(stream), count=13)
