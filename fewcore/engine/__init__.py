"""The engine: meta-training, evaluation with confidence intervals, checkpoints, inference, plots.

Everything is built from a :class:`fewcore.config.Config` through the registry, so any
registered dataset, sampler, backbone or learner can be trained and evaluated.
"""

from __future__ import annotations

from fewcore.engine._build import BuildError, build_dataset, build_learner, build_sampler, resolve_device
from fewcore.engine._checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fewcore.engine._evaluate import EvalResult, evaluate, run_episodes
from fewcore.engine._inference import (
    LoadedModel,
    Prediction,
    evaluate_checkpoint,
    load,
    load_model,
    predict_folder,
    read_image,
    resolve_checkpoint,
)
from fewcore.engine._metrics import MetricsLog, episode_accuracy, mean_ci95
from fewcore.engine._plot import plot_run
from fewcore.engine._rundir import RunDirError
from fewcore.engine._train import DivergedError, ResumeError, TrainResult, checkpoint_paths, train

__all__ = [
    "BuildError",
    "CheckpointError",
    "DivergedError",
    "EvalResult",
    "LoadedModel",
    "MetricsLog",
    "Prediction",
    "ResumeError",
    "RunDirError",
    "TrainResult",
    "build_dataset",
    "build_learner",
    "build_sampler",
    "checkpoint_paths",
    "episode_accuracy",
    "evaluate",
    "evaluate_checkpoint",
    "load",
    "load_checkpoint",
    "load_model",
    "mean_ci95",
    "plot_run",
    "predict_folder",
    "read_image",
    "resolve_checkpoint",
    "resolve_device",
    "run_episodes",
    "save_checkpoint",
    "train",
]
