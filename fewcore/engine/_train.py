"""Meta-training: episodes → learner → loss → optimizer, with validation, checkpoints and logs.

Exact resume: everything that decides what happens next — model, optimizer, LR schedule, the
float16 gradient scaler, every global RNG state and the sampler's position — is in ``last.pt``,
written atomically every ``train.checkpoint_every`` steps. A run killed at any point and resumed
from its last checkpoint replays the lost steps identically, so it ends with the same weights,
bit for bit, as a run that never stopped. Validation runs with the RNG states saved and
restored, so it does not perturb training either.

Precision and memory format (``train.precision``, ``train.channels_last``) are applied by a
:class:`~fewcore.engine._precision.ComputeMode`: the learner's forward runs under autocast, the
backward outside it; validation runs in the same mode.

Distributed: under ``torchrun`` (or with a process group already initialised) each rank draws
different episodes (sampler seed ``train.seed + rank``), gradients are averaged over ranks after
every backward, and only rank 0 validates and writes checkpoints and logs. Every rank's RNG and
sampler states are gathered into the checkpoint, so a distributed run resumes exactly too (with
the same number of processes).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from fewcore._plugins import Registry, use_registry
from fewcore._types import Learner
from fewcore.config import ComponentConfig, Config, ConfigError, parse_setting
from fewcore.engine._build import (
    build_dataset,
    build_learner,
    build_optimizer,
    build_sampler,
    build_scheduler,
    resolve_device,
)
from fewcore.engine._checkpoint import (
    RESUME_KEYS,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from fewcore.engine._evaluate import EvalResult, run_episodes
from fewcore.engine._metrics import LogWindow, MetricsLog, episode_accuracy
from fewcore.engine._precision import ComputeMode
from fewcore.engine._preflight import check_episodes
from fewcore.engine._rundir import clear_run_dir, run_lock

logger = logging.getLogger(__name__)

#: config keys that may change when a run is resumed (they do not change what is computed)
RESUMABLE_CHANGES = frozenset(
    {"train.steps", "train.device", "train.log_every", "run.dir", "eval.precision", "eval.channels_last"}
)
#: how runs saved before these options existed computed: such a run resumes with them set so
_BEFORE_OPTIONS = {"train.precision": "fp32", "train.channels_last": False}


class ResumeError(RuntimeError):
    """A run directory cannot be started or resumed as asked."""


class DivergedError(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced.

    Attributes:
        run_dir: the run directory.
        steps: the last step trained.
        best_step: the step kept in ``best.pt`` (highest validation accuracy).
        best_val: validation result of ``best_step``; None when validation is off.
        last_checkpoint: ``run_dir/checkpoints/last.pt`` (resumable).
        best_checkpoint: ``run_dir/checkpoints/best.pt`` (for evaluation and inference).
        train_seconds: training wall time over every session of the run, validation excluded.
        episodes_per_s: training episodes per second over the run (all ranks).
        rank: this process's rank (0 when not distributed; only rank 0 writes).
    """

    run_dir: Path
    steps: int
    best_step: int
    best_val: EvalResult | None
    last_checkpoint: Path
    best_checkpoint: Path
    train_seconds: float
    episodes_per_s: float
    rank: int = 0


def checkpoint_paths(run_dir: str | Path) -> tuple[Path, Path]:
    """``(last.pt, best.pt)`` of a run directory."""
    folder = Path(run_dir) / "checkpoints"
    return folder / "last.pt", folder / "best.pt"


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    old, new = {**_BEFORE_OPTIONS, **_flatten(saved)}, _flatten(current)
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)


def _distributed(device: torch.device) -> tuple[int, int, bool]:
    """``(rank, world_size, joined)``: ``joined`` when this call joined the process group that
    ``torchrun`` describes (the caller then leaves it at the end)."""
    if not dist.is_available():
        return 0, 1, False
    joined = False
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        joined = True
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), joined
    return 0, 1, False


def _average_gradients(parameters: list[torch.nn.Parameter], world_size: int) -> None:
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
            parameter.grad.div_(world_size)


def train(
    config: Config,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_step: Callable[[int, Learner], None] | None = None,
    registry: Registry | None = None,
) -> TrainResult:
    """Meta-train the learner of ``config``, validating on held-out classes and keeping the best.

    Writes to ``config.run.dir``: ``config.json``, ``metrics.jsonl``/``metrics.csv``,
    ``checkpoints/last.pt`` (every ``train.checkpoint_every`` steps and at the end) and
    ``checkpoints/best.pt`` (the step of highest validation accuracy).

    Args:
        config: the run config.
        resume: continue the run in ``config.run.dir`` from ``last.pt``; its config must equal
            ``config`` except for :data:`RESUMABLE_CHANGES` (e.g. ``train.steps`` to train longer).
        overwrite: start over: delete the run directory first when it holds a run (one with
            ``checkpoints/last.pt``), with everything in it (checkpoints, metrics, evaluations, plots).
        progress: show a progress bar (episodes/s, loss, running accuracy).
        on_step: called with the step number and the learner after each step is complete
            (checkpoint included), e.g. for custom monitoring.
        registry: build the components from this registry instead of the installed plugins'
            (e.g. a test's fakes; see :func:`fewcore.use_registry`).

    Raises:
        ResumeError: the run directory already holds a run and neither ``resume`` nor
            ``overwrite`` is set, the config differs from the one being resumed, or both
            ``resume`` and ``overwrite`` are set.
    """
    if resume and overwrite:
        raise ResumeError("resume and overwrite exclude each other: continue the run or start it over, not both")
    device = resolve_device(config.train.device)
    rank, world_size, joined = _distributed(device)
    try:
        # Only rank 0 writes, so only it holds the run directory.
        lock = run_lock(config.run.dir) if rank == 0 else contextlib.nullcontext()
        with lock, use_registry(registry):
            return _train(config, device, rank, world_size, resume, overwrite, progress, on_step)
    finally:
        if joined:
            dist.destroy_process_group()


def _train(
    config: Config,
    device: torch.device,
    rank: int,
    world_size: int,
    resume: bool,
    overwrite: bool,
    progress: bool,
    on_step: Callable[[int, Learner], None] | None,
) -> TrainResult:
    """:func:`train` on this process's ``rank`` of ``world_size``."""
    if world_size > 1 and device.type == "cuda" and device.index is None:
        # One GPU per process, as torchrun numbers them on each node.
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    run_dir = Path(config.run.dir)
    last_path, best_path = checkpoint_paths(run_dir)
    if overwrite and rank == 0 and last_path.exists():
        logger.warning("overwrite: deleting the run in %s to start it over", run_dir)
        clear_run_dir(run_dir)
    saved = None if overwrite else _read_resume_state(config, last_path, resume)
    if saved is not None and saved["world_size"] != world_size:
        raise ResumeError(
            f"{last_path} was written by {saved['world_size']} processes; resume it with the same number, not {world_size}"
        )

    seed_everything(config.train.seed)
    dataset = build_dataset(config)
    item_shape = tuple(dataset.item_shape)
    learner = build_learner(config, item_shape).to(device)
    compute = ComputeMode.resolve(config.train.precision, config.train.channels_last, device)
    compute.prepare(learner)
    parameters = [p for p in learner.parameters() if p.requires_grad]
    optimizer = build_optimizer(config.train, parameters)
    scheduler = build_scheduler(config.train, optimizer)
    scaler = compute.grad_scaler()
    train_sampler = build_sampler(
        ComponentConfig(config.sampler.name, {**config.sampler.options, **config.train.sampler_options}),
        dataset,
        "train",
        config.train.n_way,
        config.train.k_shot,
        config.train.q_query,
        config.train.batch_size,
        config.train.seed + rank,
    )
    check_episodes(config, dataset)
    # Per-rank global RNG streams (dropout, augmentation inside learners) after a shared init.
    seed_everything(config.train.seed + rank)

    step = 0
    elapsed = 0.0
    best: dict[str, Any] | None = None
    if saved is not None:
        learner.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved.get("grad_scaler", {}))  # absent before float16 training existed
        scheduler.load_state_dict(saved["scheduler"])
        own = saved["ranks"][rank]
        train_sampler.load_state_dict(own["sampler"])
        set_rng_state(own["rng"])
        step, elapsed, best = saved["step"], saved["elapsed_s"], saved["best"]
        if rank == 0:
            logger.info("resuming %s from step %d", run_dir, step)

    log = MetricsLog(run_dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        log.truncate(step)

    val_n_way, val_k_shot = parse_setting(config.val.setting)

    def validate() -> EvalResult:
        sampler = build_sampler(
            config.sampler, dataset, "val", val_n_way, val_k_shot, config.val.q_query, config.val.batch_size, config.val.seed
        )
        return run_episodes(learner, sampler, config.val.episodes, device, compute=compute)

    def payload(with_state: bool) -> dict[str, Any]:
        data: dict[str, Any] = {
            "config": config.to_dict(),
            "item_shape": list(item_shape),
            "step": step,
            "model": learner.state_dict(),
            "best": best,
        }
        if with_state:
            data.update(
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                grad_scaler=scaler.state_dict(),
                ranks=ranks_state,
                world_size=world_size,
                elapsed_s=elapsed,
                log_window=window.state_dict(),
            )
        return data

    total = config.train.steps
    learner.train()
    iterator = iter(train_sampler)
    window = LogWindow()
    if saved is not None and "log_window" in saved:  # absent from a last.pt of an older development tree
        window.load_state_dict(saved["log_window"])
    recent: deque[tuple[float, float, int, float]] = deque(maxlen=50)  # loss, accuracy, episodes, seconds
    bar = tqdm(
        total=total,
        initial=step,
        desc="train",
        unit="step",
        disable=not progress or rank != 0,
        dynamic_ncols=True,
    )
    try:
        while step < total:
            started = time.perf_counter()
            try:
                episode = next(iterator)
            except StopIteration:
                raise RuntimeError(f"the training sampler ended after {step} steps; {total} were asked for") from None
            episode = episode.to(device)
            with compute.autocast():
                output = learner(episode)
            loss = output.loss.item()  # the step's one device sync: checked here, logged below
            if not math.isfinite(loss):
                raise DivergedError(
                    f"the training loss is {loss} at step {step + 1} of the run in {run_dir}, so training "
                    "cannot go on: lower train.lr or set train.grad_clip (e.g. 10), then start the run over with "
                    "--overwrite (train(..., overwrite=True))"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(output.loss).backward()
            if world_size > 1:
                _average_gradients(parameters, world_size)
            if config.train.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(parameters, config.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            accuracies = episode_accuracy(output.logits.detach(), episode.query_y)
            seconds = time.perf_counter() - started
            elapsed += seconds
            window.add(loss, accuracies, seconds)
            recent.append((loss, float(accuracies.mean()), accuracies.numel(), seconds))

            if rank == 0:
                bar.update(1)
                bar.set_postfix(
                    {
                        "ep/s": f"{sum(r[2] for r in recent) * world_size / max(sum(r[3] for r in recent), 1e-9):.1f}",
                        "loss": f"{sum(r[0] for r in recent) / len(recent):.3f}",
                        "acc": f"{100 * sum(r[1] for r in recent) / len(recent):.1f}%",
                    },
                    refresh=False,
                )
                if step % config.train.log_every == 0 or step == total:
                    log.write(
                        {
                            "step": step,
                            "phase": "train",
                            "loss": window.loss / window.steps,
                            "accuracy": window.correct / window.episodes,
                            "episodes": step * config.train.batch_size * world_size,
                            "episodes_per_s": window.episodes * world_size / max(window.seconds, 1e-9),
                            "lr": optimizer.param_groups[0]["lr"],
                            "elapsed_s": elapsed,
                        }
                    )
                    window = LogWindow()
                if config.val.every and (step % config.val.every == 0 or step == total):
                    result = validate()
                    log.write(
                        {
                            "step": step,
                            "phase": "val",
                            "loss": result.loss,
                            "accuracy": result.accuracy,
                            "ci95": result.ci95,
                            "episodes": step * config.train.batch_size * world_size,
                            "elapsed_s": elapsed,
                        }
                    )
                    if best is None or result.accuracy > best["accuracy"]:
                        best = {"step": step, "accuracy": result.accuracy, "ci95": result.ci95, "loss": result.loss}
                        save_checkpoint(best_path, payload(with_state=False))
                    message = f"step {step}: val {result}" + (" (best)" if best["step"] == step else "")
                    if progress:
                        bar.write(message)
                    else:
                        logger.info(message)

            if step % config.train.checkpoint_every == 0 or step == total:
                own_state = {"sampler": train_sampler.state_dict(), "rng": rng_state()}
                if world_size > 1:
                    ranks_state: list[Any] = [None] * world_size
                    dist.all_gather_object(ranks_state, own_state)
                else:
                    ranks_state = [own_state]
                if rank == 0:
                    if not config.val.every and step == total:
                        save_checkpoint(best_path, payload(with_state=False))
                    save_checkpoint(last_path, payload(with_state=True))
            if on_step is not None:
                on_step(step, learner)
    finally:
        bar.close()

    best_val = None
    if best is not None:
        n_way, k_shot = parse_setting(config.val.setting)
        best_val = EvalResult(n_way, k_shot, config.val.episodes, best["accuracy"], best["ci95"], best["loss"])
    episodes = step * config.train.batch_size * world_size
    return TrainResult(
        run_dir=run_dir,
        steps=step,
        best_step=best["step"] if best is not None else step,
        best_val=best_val,
        last_checkpoint=last_path,
        best_checkpoint=best_path,
        train_seconds=elapsed,
        episodes_per_s=episodes / elapsed if elapsed > 0 else math.nan,
        rank=rank,
    )


def _read_resume_state(config: Config, last_path: Path, resume: bool) -> dict[str, Any] | None:
    """The checkpoint to resume from, or None to start at step 0; checks the run directory."""
    if not last_path.exists():
        if resume:
            logger.warning("no checkpoint in %s yet: starting the run from step 0", last_path.parent)
        return None
    saved = load_checkpoint(last_path, require=RESUME_KEYS)
    if not resume:
        raise ResumeError(
            f"{last_path.parent.parent} already holds a run (last checkpoint at step {saved['step']}); "
            "resume it with --resume (train(..., resume=True)), start it over with --overwrite "
            "(train(..., overwrite=True), which deletes it) or choose another run directory (--run-dir)"
        )
    changes = _config_changes(saved["config"], config.to_dict())
    if config.train.scheduler == "cosine" and saved["config"]["train"]["steps"] != config.train.steps:
        changes.append("train.steps (the cosine schedule spans train.steps, so it cannot change)")
    if changes:
        raise ResumeError(
            f"cannot resume {last_path}: the config differs in {', '.join(changes)} "
            f"(only {', '.join(sorted(RESUMABLE_CHANGES))} may change on resume); to change the others, start the "
            "run over with --overwrite (train(..., overwrite=True)) or use another run directory (--run-dir)"
        )
    try:
        Config.from_dict(saved["config"], source=str(last_path))
    except ConfigError as exc:
        raise ResumeError(f"{last_path} holds a config this fewcore cannot read: {exc}") from exc
    return saved
