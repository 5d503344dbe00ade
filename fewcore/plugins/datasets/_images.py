"""Decode a tree of class folders of images (a folder or a zip) once, into cached uint8 tensors.

A source is decoded on first use into ``class → [n, C, H, W] uint8`` and kept in memory for the
process; with a cache directory the result is also written to disk, in one file per source and
decoding setting, with a fingerprint of the source (a zip's size and modification time; a
folder's image paths, sizes and modification times). A changed source no longer matches its
fingerprint and is decoded again. Cache files are read with ``weights_only=True``: loading one
never unpickles arbitrary objects.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from fewcore.images import decode_image
from fewcore.paths import resolve_data_path

logger = logging.getLogger(__name__)

#: image file suffixes read from a class folder
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
#: bump when decoding changes, so that old cache files are not reused
_FORMAT = 1
_memory: dict[str, tuple[str, dict[str, Tensor]]] = {}


def default_cache_dir() -> Path:
    """``$FEWCORE_CACHE``, else ``$XDG_CACHE_HOME/fewcore``, else ``~/.cache/fewcore``."""
    if "FEWCORE_CACHE" in os.environ:
        return Path(os.environ["FEWCORE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fewcore"


def _read_member(archive: zipfile.ZipFile, name: str, source: Path) -> bytes:
    """The bytes of one member of a zip, or an error naming the zip when they are damaged."""
    try:
        return archive.read(name)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise ValueError(f"the zip {source} is damaged at {name} ({exc}); download it again") from None


def _class_of(parts: tuple[str, ...], depth: int) -> str | None:
    """The class of a file at ``parts`` below the root: its first ``depth`` folders, or None."""
    if len(parts) != depth + 1 or PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
        return None
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    return "/".join(parts[:depth])


def _zip_members(archive: zipfile.ZipFile, depth: int) -> dict[str, list[str]]:
    """class → member names of a zip. When the classes are not at the top, one top folder
    holding everything is skipped, as in Omniglot's ``images_background.zip``
    (``images_background/<alphabet>/<character>/...``)."""
    names = [n for n in archive.namelist() if not n.endswith("/")]
    for strip in (0, 1):
        members: dict[str, list[str]] = {}
        for name in names:
            cls = _class_of(tuple(name.split("/")[strip:]), depth)
            if cls is not None:
                members.setdefault(cls, []).append(name)
        if members or len({n.split("/", 1)[0] for n in names}) != 1:
            return members
    return {}


def _folder_files(root: Path, depth: int) -> dict[str, list[Path]]:
    """class → image files of a folder tree."""
    files: dict[str, list[Path]] = {}

    def unreadable(error: OSError) -> None:  # os.walk would otherwise skip such a folder silently
        raise ValueError(f"cannot list the image folder {error.filename}: {error.strerror}; fix its permissions") from None

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        dirnames.sort()
        rel = Path(dirpath).relative_to(root).parts
        for filename in filenames:
            cls = _class_of((*rel, filename), depth)
            if cls is not None:
                files.setdefault(cls, []).append(Path(dirpath) / filename)
    return files


def _fingerprint_of(source: Path, files: Iterable[Path] = ()) -> str:
    # The first look at a source, so it is where a bad one is reported: a file that is not a zip,
    # or a zip cut short (which loses the central directory at its end), or a broken link.
    if source.is_file():
        if not zipfile.is_zipfile(source):
            raise ValueError(
                f"image source {source} is a file but not a readable zip archive ({source.stat().st_size} bytes; "
                "a download cut short looks like this too); give a folder of class folders or a complete .zip of one"
            )
        stat = source.stat()
        return f"zip:{stat.st_size}:{stat.st_mtime_ns}"
    digest = hashlib.sha256()
    for path in files:
        try:
            stat = path.stat()
        except OSError as exc:
            raise ValueError(_broken_file(path, exc)) from None
        digest.update(f"{path.relative_to(source).as_posix()}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return "dir:" + digest.hexdigest()


def _broken_file(path: Path, error: OSError) -> str:
    """Why the image ``path`` cannot be read, and what to do, e.g. for a dangling symbolic link."""
    if path.is_symlink():
        target = os.readlink(path)
        problem = "loops back on itself" if error.errno == errno.ELOOP else f"cannot be read ({error.strerror})"
        if error.errno == errno.ENOENT:
            problem = "does not exist"
        return f"image {path} is a symbolic link to {target}, which {problem}; remove the link or restore its target"
    return f"cannot read image {path}: {error.strerror}; remove it or fix its permissions"


def _resolve_source(source: str | os.PathLike[str]) -> Path:
    """``source`` as an absolute path without symbolic links, or an error naming it."""
    given = resolve_data_path(source)
    try:
        return given.resolve(strict=True)
    except FileNotFoundError:
        link = f" (a symbolic link to {os.readlink(given)}, which is missing)" if given.is_symlink() else ""
        raise FileNotFoundError(f"image source {given}{link} does not exist (expected a folder or a .zip file)") from None
    except (OSError, RuntimeError) as exc:  # a link loop: RuntimeError before Python 3.13, OSError (ELOOP) after
        if isinstance(exc, RuntimeError) or exc.errno == errno.ELOOP:
            raise ValueError(f"image source {given} is a symbolic link loop; point it at a folder or a .zip file") from None
        raise ValueError(f"cannot read image source {given}: {exc.strerror}; fix its permissions") from None


def load_image_tree(
    source: str | os.PathLike[str],
    depth: int,
    image_size: int | tuple[int, int],
    channels: int,
    invert: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Tensor]:
    """Every image of a class-folder tree, decoded once.

    Args:
        source: a folder, or a zip file, whose images lie ``depth`` folders down; the class of
            an image is the path of those folders (``"Greek/character01"`` for depth 2). Inside a
            zip with no images at that depth, a single top folder holding everything is skipped.
        depth: folder levels that name a class (1 for ``<class>/*.png``, 2 for Omniglot's
            ``<alphabet>/<character>/*.png``).
        image_size: H = W, or (H, W), of the decoded images.
        channels: 1 (grayscale) or 3 (RGB).
        invert: store ``255 - value`` (dark strokes on white become ink on zero).
        cache_dir: where decoded sources are kept on disk; ``None`` keeps them in memory only.

    Returns:
        class → ``[n_images, channels, H, W]`` uint8, images in file-name order, classes sorted.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: no image lies ``depth`` folders down, or an image cannot be decoded.
    """
    source = _resolve_source(source)
    is_zip = source.is_file()
    files = {} if is_zip else {cls: sorted(paths) for cls, paths in _folder_files(source, depth).items()}
    tree = _load(source, files, f"tree:{depth}", depth if is_zip else None, image_size, channels, invert, cache_dir)
    if not tree:
        layout = "/".join(["<folder>"] * depth) + "/<image>.png"
        raise ValueError(f"no images found in {source}; expected the layout {layout}")
    return tree


def load_image_files(
    root: str | os.PathLike[str],
    files: Mapping[str, Sequence[str | os.PathLike[str]]],
    image_size: int | tuple[int, int],
    channels: int,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Tensor]:
    """Images listed per class (by an index file rather than by folders), decoded once.

    Decoding, caching and fingerprinting are those of :func:`load_image_tree`; the cache key
    includes the listing, so two listings of one folder are cached apart.

    Args:
        root: the folder every listed file lies under.
        files: class → its image files (absolute, or relative to ``root``), in item order.
        image_size: H = W, or (H, W), of the decoded images.
        channels: 1 (grayscale) or 3 (RGB).
        cache_dir: where decoded images are kept on disk; ``None`` keeps them in memory only.

    Returns:
        class → ``[n_images, channels, H, W]`` uint8, images in the listed order, classes sorted.

    Raises:
        FileNotFoundError: ``root`` or a listed file does not exist (the first few are named).
        ValueError: an image cannot be decoded.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    listed = {cls: [root / path for path in paths] for cls, paths in files.items()}
    missing = [path for paths in listed.values() for path in paths if not path.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        raise FileNotFoundError(f"{len(missing)} listed images are missing under {root}, e.g. {shown}")
    listing = hashlib.sha256(
        "\n".join(f"{cls}:{p.relative_to(root).as_posix()}" for cls, paths in sorted(listed.items()) for p in paths).encode()
    ).hexdigest()
    return _load(root, listed, f"list:{listing}", None, image_size, channels, False, cache_dir)


def _load(
    source: Path,
    files: Mapping[str, Sequence[Path]],
    layout: str,
    zip_depth: int | None,
    image_size: int | tuple[int, int],
    channels: int,
    invert: bool,
    cache_dir: str | os.PathLike[str] | None,
) -> dict[str, Tensor]:
    """Decode ``files`` (class → paths in item order), or, given ``zip_depth``, the images of the
    zip ``source`` that lie that many folders down — unless memory or the disk cache holds them
    for the source's fingerprint. ``layout`` tells different readings of one source apart in the
    cache key."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3; got {channels}")
    size = (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))
    fingerprint = _fingerprint_of(source, sorted(p for paths in files.values() for p in paths))
    key = hashlib.sha256(f"{_FORMAT}|{source}|{layout}|{size}|{channels}|{invert}".encode()).hexdigest()[:24]
    held = _memory.get(key)
    if held is not None and held[0] == fingerprint:
        return held[1]
    cache_file = Path(cache_dir).expanduser() / f"images-{key}.pt" if cache_dir is not None else None
    tree = _read_cache(cache_file, fingerprint) if cache_file is not None else None
    if tree is None:
        logger.info("decoding images of %s (once; cached after)", source)
        if zip_depth is not None:
            with zipfile.ZipFile(source) as archive:
                members = _zip_members(archive, zip_depth)
                tree = {
                    cls: torch.stack(
                        [
                            decode_image(_read_member(archive, m, source), size, channels, invert, name=f"{source}:{m}")
                            for m in sorted(names)
                        ]
                    )
                    for cls, names in sorted(members.items())
                }
        else:
            tree = {
                cls: torch.stack([decode_image(p, size, channels, invert) for p in paths])
                for cls, paths in sorted(files.items())
            }
        if cache_file is not None and tree:
            _write_cache(cache_file, fingerprint, tree)
    _memory[key] = (fingerprint, tree)
    return tree


def _read_cache(path: Path, fingerprint: str) -> dict[str, Tensor] | None:
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file is rebuilt, not trusted
        logger.warning("ignoring unreadable cache file %s (%s); decoding again", path, exc)
        return None
    if saved.get("fingerprint") != fingerprint:
        return None
    counts = saved["counts"].tolist()
    return dict(zip(saved["classes"], saved["images"].split(counts)))


def _write_cache(path: Path, fingerprint: str, tree: dict[str, Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "fingerprint": fingerprint,
        "classes": list(tree),
        "counts": torch.tensor([t.shape[0] for t in tree.values()]),
        "images": torch.cat(list(tree.values())),
    }
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(payload, partial)
    os.replace(partial, path)  # atomic: a reader never sees half a file
