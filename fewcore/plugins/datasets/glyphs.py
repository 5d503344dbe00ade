"""Procedural glyphs: fewcore's embedded default dataset, generated from a seed, no download.

Like Omniglot (Lake et al., Science 2015), the data are alphabets of hand-drawn-looking
characters, each drawn many times. Every alphabet has a style (how many strokes its characters
have, how curved and how connected its strokes are, how thick its pen); every character is a few
quadratic Bézier strokes ``B(t) = (1-t)² p0 + 2(1-t)t p1 + t² p2``; every drawing of a character
moves the control points by Gaussian jitter, changes the pen width and applies a random affine
warp (rotation, scale, shear, translation). Splits are by alphabet, so test characters come from
alphabets never seen in training, as in Omniglot's background/evaluation protocol.

Each character is described by the parameters it was generated from (:data:`ATTRIBUTES`): its
stroke count, how curved and how connected its strokes are, its alphabet's pen width, and where
its strokes run (the share of its stroke skeleton in each cell of a coarse grid), so the dataset
poses a zero-shot problem (:mod:`fewcore.zeroshot`): recognise drawings of characters known only
by such a description.

Drawings are rasterized in batches with an anti-aliased round pen: each stroke is sampled densely
and a pixel's ink is ``clamp(w/2 + 1/2 - d, 0, 1)`` where ``d`` is its distance (in pixels) to
the nearest sample and ``w`` the pen width — a few tensor operations for thousands of drawings.
Each alphabet draws from its own generator seeded by ``(seed, alphabet)``, so the data are the
same on every machine and run, and asking for more alphabets keeps the first ones unchanged.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
from torch import Tensor

from fewcore.plugins._seed import generator
from fewcore.plugins.datasets._store import ClassStore, partition
from fewcore.zeroshot import AttributeTable

#: the most strokes a character has
_MAX_STROKES = 4
#: points per stroke when locating a character's bounding box
_SEGMENTS = 6
#: drawings rasterized per chunk (bounds the temporaries to a few MB)
_CHUNK = 256
#: cells per side of the grid a character's skeleton is located on in its description
_GRID = 6
#: the names of a character's description, in order (``ATTRIBUTES`` of every class)
ATTRIBUTES: tuple[str, ...] = (
    *(f"strokes={n}" for n in range(1, _MAX_STROKES + 1)),
    "curvature",
    "connected",
    "pen_width",
    *(f"ink_row{r}_col{c}" for r in range(_GRID) for c in range(_GRID)),
)


def _bezier(control: Tensor, t: Tensor) -> Tensor:
    """Points of quadratic Bézier curves.

    Args:
        control: ``[..., 3, 2]`` control points p0, p1, p2.
        t: ``[T]`` or ``[..., T]`` (broadcastable with the batch dims) curve parameters in [0, 1].

    Returns:
        ``[..., T, 2]`` points.
    """
    t = t[..., None]
    p0, p1, p2 = (control[..., i, None, :] for i in range(3))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _characters(gen: torch.Generator, n_characters: int) -> tuple[Tensor, Tensor, float]:
    """The characters of one alphabet, drawn in that alphabet's style.

    Returns:
        ``[C, S, 3, 2]`` stroke control points in [-1, 1] image coordinates (S = _MAX_STROKES),
        ``[C, S]`` bool mask of the strokes in use, and the alphabet's pen width in pixels at 28 px.
    """
    uniform = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731 - local shorthand
    fewest = int(torch.randint(1, 3, (), generator=gen))
    most = min(_MAX_STROKES, fewest + int(torch.randint(1, 3, (), generator=gen)))
    curvature = 0.1 + 0.7 * float(uniform(()))
    connectedness = 0.3 + 0.6 * float(uniform(()))
    reach = 0.7 + 0.5 * float(uniform(()))
    width = 1.6 + 1.0 * float(uniform(()))

    n_strokes = torch.randint(fewest, most + 1, (n_characters,), generator=gen)
    mask = torch.arange(_MAX_STROKES)[None, :] < n_strokes[:, None]
    strokes = torch.zeros(n_characters, _MAX_STROKES, 3, 2)
    for s in range(_MAX_STROKES):
        start = uniform(n_characters, 2) * 1.2 - 0.6
        if s > 0:
            # connected strokes start on the previous stroke, as pen strokes in real scripts do
            on_previous = _bezier(strokes[:, s - 1], uniform(n_characters, 1))[:, 0]
            connect = uniform(n_characters, 1) < connectedness
            start = torch.where(connect, on_previous, start)
        angle = uniform(n_characters) * 2 * math.pi
        length = reach * (0.5 + 0.5 * uniform(n_characters))
        direction = torch.stack([angle.cos(), angle.sin()], dim=-1)
        end = (start + length[:, None] * direction).clamp(-0.75, 0.75)
        normal = torch.stack([-direction[:, 1], direction[:, 0]], dim=-1)
        bend = curvature * 1.5 * (uniform(n_characters, 1) * 2 - 1) * length[:, None]
        strokes[:, s] = torch.stack([start, (start + end) / 2 + bend * normal, end], dim=1)
    # centre each character on its strokes' bounding box, as drawers centre what they write
    points = _bezier(strokes, torch.linspace(0, 1, _SEGMENTS + 1)).flatten(1, 2)
    used = mask.repeat_interleave(_SEGMENTS + 1, dim=1)[..., None]
    low = torch.where(used, points, torch.inf).amin(dim=1)
    high = torch.where(used, points, -torch.inf).amax(dim=1)
    strokes = strokes - ((low + high) / 2)[:, None, None, :]
    return strokes, mask, width


def _drawings(
    gen: torch.Generator, strokes: Tensor, n_drawings: int, jitter: float
) -> tuple[Tensor, Tensor]:
    """Jittered, affinely warped copies of each character.

    Args:
        strokes: ``[C, S, 3, 2]`` control points of the characters.
        n_drawings: D, drawings per character.
        jitter: scale of every perturbation (0 draws every copy identically).

    Returns:
        ``[C, D, S, 3, 2]`` control points of every drawing and ``[C, D]`` pen-width factors.
    """
    c = strokes.shape[0]
    uniform = lambda *shape: torch.rand(*shape, generator=gen) * 2 - 1  # noqa: E731 - in [-1, 1]
    points = strokes[:, None] + 0.045 * jitter * torch.randn(c, n_drawings, *strokes.shape[1:], generator=gen)
    angle = 0.2 * jitter * uniform(c, n_drawings)
    scale = 1.0 + 0.12 * jitter * uniform(c, n_drawings)
    shear = 0.2 * jitter * uniform(c, n_drawings)
    shift = 0.08 * jitter * uniform(c, n_drawings, 2)
    cos, sin = angle.cos(), angle.sin()
    # A = R(angle) @ [[scale, shear], [0, scale]]
    warp = torch.stack(
        [
            torch.stack([cos * scale, cos * shear - sin * scale], dim=-1),
            torch.stack([sin * scale, sin * shear + cos * scale], dim=-1),
        ],
        dim=-2,
    )
    points = torch.einsum("cdij,cdskj->cdski", warp, points) + shift[:, :, None, None, :]
    widths = 1.0 + 0.25 * jitter * uniform(c, n_drawings)
    return points, widths


def _rasterize(points: Tensor, mask: Tensor, width: Tensor, image_size: int) -> Tensor:
    """Anti-aliased images of stroke drawings.

    Each stroke is sampled at most half a pixel apart along its control polygon (which bounds
    the curve's length) and every sample stamps a round pen on the pixels around it; a pixel's
    ink is the maximum over the stamps, ``clamp(w/2 + 1/2 - d, 0, 1)`` with ``d`` the distance
    from its centre to the sample. This touches only the pixels near the strokes.

    Args:
        points: ``[M, S, 3, 2]`` control points in [-1, 1] image coordinates.
        mask: ``[M, S]`` strokes in use.
        width: ``[M]`` pen widths in pixels.
        image_size: H = W of the images.

    Returns:
        ``[M, H, W]`` ink in [0, 1].
    """
    m, pixels = points.shape[0], image_size * image_size
    drawing, stroke = mask.nonzero(as_tuple=True)
    control = (points[drawing, stroke] + 1) * (image_size / 2)  # [K, 3, 2] in pixels
    polygon = (control[:, 1:] - control[:, :-1]).norm(dim=-1).sum(dim=-1)
    counts = (polygon * 2).ceil().long().clamp_min(1) + 1
    which = torch.repeat_interleave(torch.arange(len(counts)), counts)
    first = torch.cumsum(counts, 0) - counts
    t = (torch.arange(len(which)) - first[which]) / (counts[which] - 1).clamp_min(1)
    samples = _bezier(control[which], t[:, None])[:, 0]  # [T, 2]
    owner = drawing[which]
    radius = width[owner] / 2 + 0.5
    reach = math.ceil(float(radius.max())) if len(radius) else 0
    offsets = torch.arange(-reach, reach + 1)
    corner = samples.floor()
    px = corner[:, 0:1] + offsets  # [T, R] pixel columns, centres at px + 0.5
    py = corner[:, 1:2] + offsets
    distance = torch.hypot((px + 0.5 - samples[:, 0:1])[:, None, :], (py + 0.5 - samples[:, 1:2])[:, :, None])
    ink = (radius[:, None, None] - distance).clamp_(0, 1)  # [T, R(y), R(x)]
    inside = ((px >= 0) & (px < image_size))[:, None, :] & ((py >= 0) & (py < image_size))[:, :, None]
    flat = owner[:, None, None] * pixels + py.long()[:, :, None] * image_size + px.long()[:, None, :]
    # samples' pixels outside the image go to one spare slot past the end
    flat = torch.where(inside, flat, m * pixels)
    out = torch.zeros(m * pixels + 1).scatter_reduce_(0, flat.flatten(), ink.flatten(), "amax")
    return out[:-1].view(m, image_size, image_size)


def _describe(strokes: Tensor, mask: Tensor, width: float) -> Tensor:
    """The descriptions (:data:`ATTRIBUTES`) of one alphabet's characters, from their generator parameters.

    Args:
        strokes: ``[C, S, 3, 2]`` centred control points, as :func:`_characters` returns them.
        mask: ``[C, S]`` strokes in use.
        width: the alphabet's pen width in pixels at 28 px.

    Returns:
        ``[C, len(ATTRIBUTES)]``: one-hot stroke count; mean bend of the strokes relative to
        their chord ``|p1 - (p0 + p2)/2| / |p2 - p0|``; share of strokes after the first that
        start on the stroke before; pen width / 2.6 (its largest value); share of the skeleton's
        points in each grid cell, row by row from the top left.
    """
    used = mask.float()
    n_strokes = mask.sum(dim=1)
    count = torch.nn.functional.one_hot(n_strokes - 1, _MAX_STROKES).float()
    p0, p1, p2 = strokes[..., 0, :], strokes[..., 1, :], strokes[..., 2, :]
    bend = (p1 - (p0 + p2) / 2).norm(dim=-1) / (p2 - p0).norm(dim=-1).clamp_min(1e-6)
    curvature = (bend * used).sum(dim=1) / n_strokes
    skeleton = _bezier(strokes, torch.linspace(0, 1, 33))  # [C, S, 33, 2]
    # a connected stroke starts exactly on its predecessor's curve (see _characters)
    gap = (skeleton[:, :-1] - p0[:, 1:, None, :]).norm(dim=-1).amin(dim=-1)  # [C, S-1]
    joined = ((gap < 0.02).float() * used[:, 1:]).sum(dim=1) / (n_strokes - 1).clamp_min(1)
    cell = ((skeleton + 1) / 2 * _GRID).floor().long().clamp(0, _GRID - 1)
    flat = torch.nn.functional.one_hot(cell[..., 1] * _GRID + cell[..., 0], _GRID * _GRID).float()
    ink = (flat * used[:, :, None, None]).sum(dim=(1, 2))
    ink = ink / ink.sum(dim=1, keepdim=True)
    pen = torch.full_like(curvature, width / 2.6)
    return torch.cat([count, curvature[:, None], joined[:, None], pen[:, None], ink], dim=1)


@functools.lru_cache(maxsize=4)
def _descriptions(seed: int, alphabets: int, characters: int) -> Tensor:
    """``[alphabets, characters, len(ATTRIBUTES)]`` every character's description."""
    # Each alphabet's generator draws its characters first, so replaying that draw gives the
    # very characters _generate drew.
    return torch.stack([_describe(*_characters(generator(seed, a), characters)) for a in range(alphabets)])


@functools.lru_cache(maxsize=4)
def _generate(seed: int, alphabets: int, characters: int, drawings: int, image_size: int, jitter: float) -> Tensor:
    """``[alphabets, characters, drawings, 1, H, W]`` uint8 glyph images (255 = ink)."""
    out = torch.empty(alphabets, characters, drawings, 1, image_size, image_size, dtype=torch.uint8)
    pixel_scale = image_size / 28
    for a in range(alphabets):
        gen = generator(seed, a)
        strokes, mask, width = _characters(gen, characters)
        points, widths = _drawings(gen, strokes, drawings, jitter)
        points = points.flatten(0, 1)
        masks = mask.repeat_interleave(drawings, dim=0)
        pens = (width * pixel_scale) * widths.flatten()
        images = out[a].view(-1, image_size, image_size)
        for lo in range(0, points.shape[0], _CHUNK):
            hi = lo + _CHUNK
            ink = _rasterize(points[lo:hi], masks[lo:hi], pens[lo:hi], image_size)
            images[lo:hi] = ink.mul_(255).round_().to(torch.uint8)
    return out


class Glyphs(ClassStore):
    """Procedurally generated alphabets of stroke-drawn characters; splits by alphabet.

    Class names are ``"alphabetAAA/characterCC"``. Items are ``[1, H, W]`` float32 images with
    ink 1 on background 0. Generation is deterministic: the same arguments give identical tensors.
    ``attributes`` describes every character by its generator parameters (:data:`ATTRIBUTES`).

    Args:
        alphabets: number of alphabets.
        characters: characters per alphabet (classes = alphabets × characters).
        drawings: drawings per character (items per class).
        image_size: H = W in pixels.
        seed: generation and split seed.
        fractions: (train, val, test) fractions of the alphabets; the rest is unused.
        jitter: scale of the per-drawing perturbations (stroke positions, pen width, affine warp);
            larger is harder, 0 draws every copy of a character identically. At the default 1.5,
            5-way test accuracy of nearest prototypes in pixel space is about 50% (1-shot) and
            78% (5-shot); a Conv4 Prototypical Network reaches about 85% and 95% after 400
            10-way 1-shot training episodes (3 CPU minutes).

    Example:
        >>> ds = fewcore.create("dataset", "glyphs", alphabets=10, characters=10)
        >>> ds.items(ds.classes("train")[0]).shape
        torch.Size([20, 1, 28, 28])
    """

    def __init__(
        self,
        alphabets: int = 50,
        characters: int = 20,
        drawings: int = 20,
        image_size: int = 28,
        seed: int = 0,
        fractions: Sequence[float] = (0.6, 0.2, 0.2),
        jitter: float = 1.5,
    ) -> None:
        for name, value in (("alphabets", alphabets), ("characters", characters), ("drawings", drawings)):
            if value < 1:
                raise ValueError(f"glyphs: {name} must be at least 1; got {value}")
        if image_size < 8:
            raise ValueError(f"glyphs: image_size must be at least 8 pixels; got {image_size}")
        if jitter < 0:
            raise ValueError(f"glyphs: jitter must be non-negative; got {jitter}")
        if len(fractions) != 3:
            raise ValueError(f"glyphs: fractions must be (train, val, test); got {list(fractions)}")
        images = _generate(seed, alphabets, characters, drawings, image_size, float(jitter))
        names = [f"alphabet{a:03d}" for a in range(alphabets)]
        items = {
            f"{names[a]}/character{c:02d}": images[a, c] for a in range(alphabets) for c in range(characters)
        }
        splits = {
            split: [f"{alphabet}/character{c:02d}" for alphabet in sorted(part) for c in range(characters)]
            for split, part in zip(("train", "val", "test"), partition(names, fractions, seed))
        }
        super().__init__(items, splits)
        self.attributes = AttributeTable(list(items), _descriptions(seed, alphabets, characters).flatten(0, 1))
