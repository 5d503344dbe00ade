"""The third-party example plugin, installed as its own distribution, is discovered and works."""

from __future__ import annotations

import ast
from pathlib import Path

import torch

import fewcore

REPO_ROOT = Path(__file__).resolve().parent.parent


def _clustered_episode(generator: torch.Generator, n_way: int = 5, k_shot: int = 2, q_query: int = 3) -> fewcore.Episode:
    """Items around class centres in 784 dims; labels in shuffled order."""
    centres = torch.randn(n_way, 784, generator=generator) * 2
    support_y = torch.randperm(n_way * k_shot, generator=generator) % n_way
    query_y = torch.randperm(n_way * q_query, generator=generator) % n_way

    def items(labels: torch.Tensor) -> torch.Tensor:
        return centres[labels] + torch.randn(len(labels), 784, generator=generator)

    return fewcore.Episode(
        items(support_y)[None], support_y[None], items(query_y)[None], query_y[None], n_way, k_shot
    )


def test_example_components_are_listed_with_their_distribution() -> None:
    registry = fewcore.registry(reload=True)
    backbone = registry.get("backbone", "flat-linear")
    learner = registry.get("learner", "nearest-neighbour")
    for component in (backbone, learner):
        assert component.plugin.name == "example"
        assert component.plugin.distribution == "fewcore-plugin-example"


def test_example_learner_classifies_unseen_classes() -> None:
    torch.manual_seed(0)
    backbone = fewcore.create("backbone", "flat-linear", item_shape=(784,), out_features=32)
    learner = fewcore.create("learner", "nearest-neighbour", backbone=backbone)
    generator = torch.Generator().manual_seed(1)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    for _ in range(20):
        output = learner(_clustered_episode(generator))
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
    episodes = [_clustered_episode(generator) for _ in range(20)]
    with torch.no_grad():
        accuracy = torch.stack(
            [(learner(e).logits.argmax(-1) == e.query_y).float().mean() for e in episodes]
        ).mean()
    assert accuracy > 0.8, f"5-way accuracy {accuracy:.2f} (chance 0.20)"


def _fewcore_imports(path: Path) -> list[str]:
    """Every ``fewcore...`` module and name that the file at ``path`` imports, dotted."""
    imported = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported += [f"{node.module}.{alias.name}" for alias in node.names]
    return [name for name in imported if name == "fewcore" or name.startswith("fewcore.")]


def test_first_party_plugins_import_only_public_fewcore_names() -> None:
    sources = sorted((REPO_ROOT / "plugins").rglob("*.py"))
    assert sources, "no first-party plugin sources found under plugins/"
    private = {
        f"{path.relative_to(REPO_ROOT)}: {name}"
        for path in sources
        for name in _fewcore_imports(path)
        if any(part.startswith("_") for part in name.split("."))
    }
    assert not private, f"first-party plugins must use public names only; private imports: {sorted(private)}"
    used = {name for path in sources for name in _fewcore_imports(path)}
    assert "fewcore.episodes.embed_tasks" in used  # the check sees real imports, not nothing
