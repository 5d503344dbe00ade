"""Decoding image files into tensors.

The one decoder of fewcore: the image datasets (folders, zips, index files) decode their files
with it, and so do :func:`fewcore.engine.read_image` and ``fewcore predict``, so a model sees a
query image exactly as it saw its training images (same channels, resize filter and inversion).
"""

from __future__ import annotations

import io
import os

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = ["decode_image"]


def decode_image(
    data: bytes | str | os.PathLike[str],
    size: int | tuple[int, int],
    channels: int,
    invert: bool = False,
    name: str | None = None,
) -> Tensor:
    """One image as ``[channels, H, W]`` uint8, resized to ``size`` with bilinear antialiasing.

    Args:
        data: the image file's path, or its bytes (e.g. a member of a zip).
        size: H = W, or (H, W), of the result.
        channels: 1 (converted to grayscale) or 3 (converted to RGB).
        invert: return ``255 - value`` (dark strokes on white become ink on zero).
        name: how errors name the image; defaults to the path (required to be useful for bytes).

    Returns:
        ``[channels, H, W]`` uint8.

    Raises:
        ValueError: ``channels`` is not 1 or 3, or the data is not an image PIL can decode (the
            message names the image).

    Example:
        >>> import io
        >>> from PIL import Image
        >>> buffer = io.BytesIO()
        >>> Image.new("RGB", (8, 6), (255, 0, 0)).save(buffer, format="PNG")
        >>> decode_image(buffer.getvalue(), (3, 4), channels=1, name="red.png").shape
        torch.Size([1, 3, 4])
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3; got {channels}")
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    shown = name if name is not None else ("<image bytes>" if isinstance(data, bytes) else os.fspath(data))
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as opened:
            resized = opened.convert("L" if channels == 1 else "RGB").resize((width, height), Image.Resampling.BILINEAR)
            array = np.asarray(resized, dtype=np.uint8)
    except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
        raise ValueError(
            f"cannot decode image {shown} ({exc}); remove it or replace it with a PNG or JPEG file"
        ) from None
    if invert:
        array = 255 - array
    image = array[None] if channels == 1 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(image))
