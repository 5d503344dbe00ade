"""Learning curves of a run, rendered to PNG from its ``metrics.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path

from fewcore.engine._metrics import MetricsLog


def plot_run(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Plot training and validation loss and accuracy against the training step.

    Uses matplotlib's Agg canvas directly, so it works without a display and leaves the
    caller's pyplot backend alone.

    Args:
        run_dir: a run directory holding ``metrics.jsonl``.
        output: the PNG to write; ``run_dir/curves.png`` by default.

    Returns:
        The path written.

    Raises:
        FileNotFoundError: the run has no metrics yet.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    records = MetricsLog(run_dir).read()
    if not records:
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl records to plot (was it trained?)")
    output = Path(output) if output is not None else run_dir / "curves.png"
    labels = {"train": "train", "val": "val"}
    config_file = run_dir / "config.json"
    if config_file.is_file():  # name the episode settings: training often uses more ways
        config = json.loads(config_file.read_text())
        labels["train"] = f"train ({config['train']['n_way']}-way {config['train']['k_shot']}-shot)"
        labels["val"] = f"val ({config['val']['setting']})"

    figure = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(figure)
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    for phase, style in (("train", "-"), ("val", "o-")):
        rows = [r for r in records if r["phase"] == phase]
        if not rows:
            continue
        steps = [r["step"] for r in rows]
        loss_axes.plot(steps, [r["loss"] for r in rows], style, label=labels[phase], markersize=3)
        accuracy = [100 * r["accuracy"] for r in rows]
        accuracy_axes.plot(steps, accuracy, style, label=labels[phase], markersize=3)
        if phase == "val":
            ci = [100 * r.get("ci95", 0.0) for r in rows]
            accuracy_axes.fill_between(
                steps, [a - c for a, c in zip(accuracy, ci)], [a + c for a, c in zip(accuracy, ci)], alpha=0.2,
                label="val 95% CI",
            )
    loss_axes.set(xlabel="step", ylabel="loss", title="loss")
    accuracy_axes.set(xlabel="step", ylabel="accuracy (%)", title="episode accuracy")
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(run_dir.name)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120)
    return output
