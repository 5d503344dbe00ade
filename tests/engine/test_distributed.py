"""Distributed training with 2 CPU processes (gloo): ranks agree, and a resume is exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fewcore.config import Config
from fewcore.engine import load_checkpoint, train
from tests.engine._fakes import fake_config_dict, fake_registry

WORLD = 2
STEPS = 12


class _Killed(Exception):
    pass


def _worker(rank: int, root: str) -> None:
    fakes = fake_registry()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{root}/store", rank=rank, world_size=WORLD)
    try:

        def keep_final(name: str):
            def on_step(step: int, learner: torch.nn.Module) -> None:
                if step == STEPS:
                    torch.save(learner.state_dict(), f"{root}/{name}-rank{rank}.pt")

            return on_step

        def kill(step: int, learner: torch.nn.Module) -> None:
            if step == 6:
                raise _Killed

        def config(name: str) -> Config:
            return Config.from_dict(fake_config_dict(f"{root}/{name}", steps=STEPS))

        train(config("whole"), progress=False, on_step=keep_final("whole"), registry=fakes)
        try:
            train(config("cut"), progress=False, on_step=kill, registry=fakes)
        except _Killed:
            pass
        train(config("cut"), resume=True, progress=False, on_step=keep_final("cut"), registry=fakes)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this build")
def test_two_process_training_agrees_across_ranks_and_resumes_exactly(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=WORLD, join=True)

    def final(name: str, rank: int) -> dict[str, torch.Tensor]:
        return torch.load(tmp_path / f"{name}-rank{rank}.pt", weights_only=True)

    whole0, whole1, cut0 = final("whole", 0), final("whole", 1), final("cut", 0)
    for key in whole0:
        # Averaged gradients keep the ranks' models identical...
        assert torch.equal(whole0[key], whole1[key]), key
        # ...and a killed-and-resumed distributed run ends where the uninterrupted one does.
        assert torch.equal(whole0[key], cut0[key]), key
    last = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")
    assert last["world_size"] == WORLD and len(last["ranks"]) == WORLD
    # Each rank draws its own episodes (seed + rank), so their RNG streams differ.
    assert not torch.equal(last["ranks"][0]["rng"]["torch"], last["ranks"][1]["rng"]["torch"])
    # Only rank 0 logs: each step appears once.
    steps = [line for line in (tmp_path / "whole" / "metrics.csv").read_text().splitlines()[1:] if ",train," in line]
    assert len(steps) == STEPS // 2
