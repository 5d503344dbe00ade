"""Using a trained model: load a checkpoint as a ready learner; classify folders of images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from fewcore._types import Learner
from fewcore.config import Config, ConfigError, apply_overrides, parse_override
from fewcore.engine._build import BuildError, build_dataset, build_learner, resolve_device
from fewcore.engine._checkpoint import MODEL_KEYS, load_checkpoint, load_weights, preserved_rng
from fewcore.engine._evaluate import EvalResult, evaluate
from fewcore.engine._precision import ComputeMode
from fewcore.engine._train import checkpoint_paths
from fewcore.images import decode_image

#: config sections that evaluation reads; an override of any other section would change nothing
EVAL_SECTIONS = ("dataset", "sampler", "backbone", "learner", "eval")
#: image files ``fewcore predict`` reads
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory's ``best.pt`` (its ``last.pt`` when there is no best)."""
    path = Path(path)
    if path.is_dir():
        last, best = checkpoint_paths(path)
        for candidate in (best, last):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"{path} is a directory without checkpoints/best.pt or checkpoints/last.pt")
    in_run = path.parent / "checkpoints" / path.name
    if not path.exists() and in_run.is_file():
        # `RUN/best.pt` for `RUN/checkpoints/best.pt` is the likeliest slip: name both right forms.
        raise FileNotFoundError(f"no checkpoint at {path}; pass the run directory {path.parent} (its best.pt) or the file {in_run}")
    return path


@dataclass(frozen=True)
class LoadedModel:
    """A checkpoint's learner with what is needed to feed it.

    Attributes:
        learner: the learner in eval mode.
        item_shape: the shape of one input item it was trained on, e.g. ``(1, 28, 28)``.
        config: the run's config.
        path: the checkpoint file read.
    """

    learner: Learner
    item_shape: tuple[int, ...]
    config: Config
    path: Path


def load_model(
    checkpoint: str | Path, device: torch.device | str = "cpu", overrides: Sequence[str] = ()
) -> LoadedModel:
    """Rebuild the learner of a checkpoint (see :func:`load`) and keep its item shape and config.

    Args:
        checkpoint: a ``.pt`` file, or a run directory (its ``best.pt``).
        device: where to put the model.
        overrides: ``section.key=value`` changes to the stored config before the learner is
            built, e.g. ``learner.metric=cosine``.

    Raises:
        CheckpointError: the file is not a checkpoint of a training run, or its weights do not
            fit the learner its config (with ``overrides``) builds.
    """
    path = resolve_checkpoint(checkpoint)
    payload = load_checkpoint(path, require=MODEL_KEYS)
    overrides = list(overrides)
    source = f"{path}" + (" (with overrides)" if overrides else "")
    config = Config.from_dict(apply_overrides(payload["config"], overrides), source=source)
    item_shape = tuple(payload["item_shape"])
    with preserved_rng():  # building initialises weights; do not move the caller's RNG
        learner = build_learner(config, item_shape)
    model_overrides = [text.partition("=")[0].strip() for text in overrides if text.split(".", 1)[0] in ("learner", "backbone")]
    if model_overrides:
        remedy = (
            f"the overrides of {', '.join(model_overrides)} change the architecture, so the trained weights do not "
            "fit; drop them (after training, only options that keep every weight's shape can change)"
        )
    else:
        remedy = "its learner or backbone changed since training; load it with the fewcore and plugins that trained it"
    load_weights(learner, payload["model"], path, remedy)
    learner.to(device).eval()
    return LoadedModel(learner, item_shape, config, path)


def load(checkpoint: str | Path, device: torch.device | str = "cpu") -> Learner:
    """The learner of a checkpoint, in eval mode, ready for inference on new classes.

    Loading never unpickles arbitrary objects (``torch.load(weights_only=True)``); the
    components are rebuilt from the registry with the config stored in the checkpoint.

    Args:
        checkpoint: a ``.pt`` file, or a run directory (its ``best.pt``).
        device: where to put the model.

    Example:
        >>> learner = fewcore.load("runs/demo")
        >>> scores = learner.predict(support_x, support_y, query_x)  # [B, Nq, N]
        >>> embeddings = learner.backbone(images)                      # [n, E]
    """
    return load_model(checkpoint, device).learner


def read_image(path: str | Path, item_shape: Sequence[int], invert: str = "auto") -> Tensor:
    """One image as a model input: ``[C, H, W]`` float32 in [0, 1], resized to ``item_shape``.

    Args:
        path: an image file.
        item_shape: ``(C, H, W)`` with C = 1 (grayscale) or 3 (RGB).
        invert: ``"yes"`` maps v → 1 - v; ``"auto"`` does so for grayscale images that are
            mostly bright, so that dark strokes on white paper become the bright-ink-on-black
            drawings that stroke datasets (glyphs, Omniglot) train on; ``"no"`` never inverts.

    Raises:
        ValueError: ``item_shape`` is not an image shape, ``invert`` is not yes/no/auto, or the
            file cannot be decoded (:func:`fewcore.images.decode_image`).
    """
    if len(item_shape) != 3 or item_shape[0] not in (1, 3):
        raise ValueError(f"the model takes items of shape {tuple(item_shape)}, not images (C, H, W) with C = 1 or 3")
    if invert not in ("yes", "no", "auto"):
        raise ValueError(f"invert must be yes, no or auto; got {invert!r}")
    channels, height, width = item_shape
    # Decoded as the image datasets decode their files, so a query looks like the training images.
    image = decode_image(path, (height, width), channels)
    if invert == "yes" or (invert == "auto" and channels == 1 and float(image.float().mean()) > 127.5):
        image = 255 - image
    return image.float().div_(255.0)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_support(folder: str | Path, item_shape: Sequence[int], invert: str = "auto") -> tuple[Tensor, Tensor, list[str]]:
    """A labelled support set from ``folder/<class>/<image>``.

    Returns:
        ``[Ns, C, H, W]`` images, ``[Ns]`` labels (index into the class names), and the class
        names (sorted subfolder names).

    Raises:
        ValueError: no class subfolders, or a class folder without images.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"support folder {folder} does not exist")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"support folder {folder} has no class subfolders; expected {folder}/<class>/<image>")
    images, labels = [], []
    for label, name in enumerate(classes):
        files = _images_in(folder / name)
        if not files:
            raise ValueError(f"support class folder {folder / name} has no images ({', '.join(IMAGE_SUFFIXES)})")
        images += [read_image(f, item_shape, invert) for f in files]
        labels += [label] * len(files)
    return torch.stack(images), torch.tensor(labels), classes


@dataclass(frozen=True)
class Prediction:
    """The predicted class of one query image.

    Attributes:
        path: the image.
        label: the predicted class name.
        score: its softmax probability over the support classes.
    """

    path: Path
    label: str
    score: float


def predict_folder(
    learner: Learner,
    item_shape: Sequence[int],
    support: str | Path,
    query: str | Path,
    device: torch.device | str = "cpu",
    invert: str = "auto",
    precision: str = "auto",
    channels_last: bool | str = "auto",
) -> list[Prediction]:
    """Classify every image of the ``query`` folder among the classes of ``support/<class>/``.

    Args:
        learner: a trained learner (e.g. :func:`load`), on ``device``.
        item_shape: the item shape it was trained on.
        support: a folder with one subfolder of images per class.
        query: a folder of images (or a single image file).
        device: where to compute.
        invert: see :func:`read_image`.
        precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"auto"``, as ``eval.precision``.
        channels_last: True, False or ``"auto"``, as ``eval.channels_last`` (the learner is
            converted in place).

    Returns:
        One prediction per query image, in file-name order.
    """
    support_x, support_y, classes = read_support(support, item_shape, invert)
    query = Path(query)
    files = [query] if query.is_file() else _images_in(query) if query.is_dir() else []
    if not files:
        raise ValueError(f"no query images found at {query}")
    query_x = torch.stack([read_image(f, item_shape, invert) for f in files])
    compute = ComputeMode.resolve(precision, channels_last, device)
    compute.prepare(learner)
    with torch.no_grad(), compute.autocast():
        scores = learner.predict(support_x[None].to(device), support_y[None].to(device), query_x[None].to(device))
    probabilities = scores[0].float().softmax(dim=-1).cpu()
    best, index = probabilities.max(dim=-1)
    return [Prediction(f, classes[int(i)], float(p)) for f, i, p in zip(files, index, best)]


def evaluate_checkpoint(
    checkpoint: str | Path,
    overrides: Sequence[str] = (),
    device: str = "auto",
    progress: bool = False,
) -> tuple[list[EvalResult], Config]:
    """Evaluate a checkpoint on its config's ``[eval]`` settings, with optional overrides.

    Args:
        checkpoint: a ``.pt`` file or a run directory (its ``best.pt``).
        overrides: ``section.key=value`` changes to the stored config, e.g.
            ``eval.episodes=1000``, a different ``dataset`` option for the test classes, or a
            learner option that keeps the weights' shapes (sections: :data:`EVAL_SECTIONS`).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        progress: show a progress bar per setting.

    Returns:
        The results per setting and the config they were computed with.

    Raises:
        ConfigError: an override of a section evaluation does not read (e.g. ``train.lr``).
        BuildError: the evaluation dataset's items differ in shape from the training items.
        CheckpointError: see :func:`load_model`.
    """
    for text in overrides:
        section = parse_override(text)[0][0]
        if section not in EVAL_SECTIONS:
            raise ConfigError(
                f"override {text!r}: [{section}] does not affect evaluation, which reads only "
                f"[{'], ['.join(EVAL_SECTIONS)}]; remove it"
            )
    target = resolve_device(device)
    model = load_model(checkpoint, target, overrides)
    config = model.config
    dataset = build_dataset(config)
    if tuple(dataset.item_shape) != model.item_shape:
        raise BuildError(
            f"[dataset] the model was trained on items of shape {model.item_shape} but the evaluation dataset has "
            f"items of shape {tuple(dataset.item_shape)}; evaluate on items of the training shape"
        )
    results = evaluate(
        model.learner,
        dataset,
        config.eval.settings,
        episodes=config.eval.episodes,
        q_query=config.eval.q_query,
        batch_size=config.eval.batch_size,
        split=config.eval.split,
        seed=config.eval.seed,
        sampler=config.sampler,
        device=target,
        progress=progress,
        precision=config.eval.precision,
        channels_last=config.eval.channels_last,
    )
    return results, config
