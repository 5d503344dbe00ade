"""Hook specifications: what a fewcore plugin can implement.

A plugin is any module or object registered under the ``fewcore`` entry-point group whose
functions are marked with :data:`fewcore.hookimpl`. Each hook receives a ``register`` callback
built by the core, so the core knows which plugin registered which name; a name registered
twice (by the same or another plugin) is an error that names both plugins.

Every ``register`` callback has the signature ``register(name: str, factory: Callable[..., T])``,
where ``factory(**config)`` builds the component; usually ``factory`` is the class itself.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import pluggy

hookspec = pluggy.HookspecMarker("fewcore")
hookimpl = pluggy.HookimplMarker("fewcore")


class Register(Protocol):
    """The callback a hook receives: ``register(name, factory)``."""

    def __call__(self, name: str, factory: Callable[..., Any]) -> None: ...


@hookspec
def fewcore_register_backbones(register: Register) -> None:
    """Register backbones: networks that map inputs to embeddings.

    :param register: call ``register(name, factory)`` once per backbone. The engine calls
        ``factory(item_shape=..., **config)`` with the dataset's item shape (``item_shape=None``
        without a dataset); it returns a :class:`fewcore.Backbone` (an ``nn.Module`` mapping
        ``[B, *input_shape]`` to ``[B, E]`` that reports ``E`` through
        ``embedding_size(input_shape)``, and optionally hands out feature maps
        ``[B, *feature_shape]`` through ``forward_features``).

    Added in fewcore 0.1.
    """


@hookspec
def fewcore_register_samplers(register: Register) -> None:
    """Register episode samplers: iterables of :class:`fewcore.Episode` batches.

    :param register: call ``register(name, factory)`` once per sampler. ``factory(dataset=...,
        split=..., n_way=..., k_shot=..., q_query=..., batch_size=..., seed=..., **config)``
        returns a :class:`fewcore.EpisodeSampler` yielding episodes with ``support_x
        [B, N*K, ...]``, ``support_y [B, N*K]``, ``query_x [B, N*Q, ...]``, ``query_y [B, N*Q]``.

    Added in fewcore 0.1.
    """


@hookspec
def fewcore_register_learners(register: Register) -> None:
    """Register learners: few-shot methods that turn an episode batch into query logits and a loss.

    :param register: call ``register(name, factory)`` once per learner. The engine calls
        ``factory(backbone=..., item_shape=..., **config)`` with the dataset's item shape; it
        returns a :class:`fewcore.Learner` that keeps ``backbone`` as its ``.backbone`` and
        whose ``forward(episode)`` returns a :class:`fewcore.LearnerOutput` with
        ``logits [B, N*Q, N]`` and a scalar ``loss``. :mod:`fewcore.episodes` has the input
        checks and batched embedding most learners need.

    Added in fewcore 0.1.
    """


@hookspec
def fewcore_register_datasets(register: Register) -> None:
    """Register datasets: mappings from class to items, with class splits.

    :param register: call ``register(name, factory)`` once per dataset. ``factory(**config)``
        returns a :class:`fewcore.FewShotDataset`.

    Added in fewcore 0.1.
    """
