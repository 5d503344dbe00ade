"""The built extension: its CUDA kernels carry PTX, so that GPUs newer than the architectures it
was compiled for can still run them (the driver compiles the PTX; without it such a GPU has no
kernel image). Needs no GPU: cuobjdump reads the library."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import fewcore


def _cuobjdump() -> str | None:
    """cuobjdump from the CUDA toolkit, or the copy the triton wheel ships."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    candidates = [Path(cuda_home) / "bin" / "cuobjdump"]
    triton = importlib.util.find_spec("triton")
    if triton is not None and triton.submodule_search_locations:
        for location in triton.submodule_search_locations:
            candidates.append(Path(location) / "backends" / "nvidia" / "bin" / "cuobjdump")
    return next((str(path) for path in candidates if path.is_file()), None)


def test_cuda_kernels_carry_ptx() -> None:
    info_path = Path(fewcore.__file__).parent / "_build_info.json"
    if not info_path.is_file():
        pytest.skip("no _build_info.json: the extension was not built from this tree")
    info = json.loads(info_path.read_text())
    if not info["with_cuda"]:
        pytest.skip("the extension was built without CUDA kernels (FEWCORE_CUDA=0 or no toolkit)")
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found (CUDA toolkit or triton wheel)")
    spec = importlib.util.find_spec("fewcore._C")
    assert spec is not None and spec.origin is not None
    listing = subprocess.run([tool, "--list-ptx", spec.origin], capture_output=True, text=True, check=True).stdout
    ptx_archs = {part for line in listing.splitlines() for part in line.replace(".", " ").split() if part.startswith("sm_")}
    assert ptx_archs, f"no PTX in {spec.origin} (built for {info['cuda_arch_list']!r}):\n{listing}"
    # the PTX is that of the newest architecture the build targets
    archs = [arch.split("+")[0] for arch in info["cuda_arch_list"].replace(" ", ";").split(";") if arch]
    newest = max(archs, key=lambda arch: tuple(int(part.rstrip("af")) for part in arch.split(".")))
    assert f"sm_{newest.replace('.', '')}" in ptx_archs, listing
