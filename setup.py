"""Builds ``fewcore._C``: CPU kernels always, CUDA kernels whenever nvcc is found.

Environment:
    FEWCORE_CUDA: ``0`` skips the CUDA kernels, ``1`` requires them (fails without nvcc);
        unset compiles them when a CUDA toolkit is found.
    TORCH_CUDA_ARCH_LIST: target architectures when no GPU is visible (default ``8.0;9.0+PTX``:
        the PTX lets the driver compile the kernels for GPUs newer than sm_90).
    CUDA_HOME: the toolkit root; found automatically otherwise (see ``_find_cuda_home``).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent.resolve()


def _find_cuda_home() -> str | None:
    """The CUDA toolkit root, or None.

    torch guesses the root from ``which nvcc``; where that nvcc is a wrapper script outside the
    toolkit the guess is wrong, so look for a directory that really holds a toolkit.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    for root in candidates:
        if root and (Path(root) / "bin" / "nvcc").exists() and (Path(root) / "include" / "cuda_runtime.h").exists():
            return root
    return None


def _want_cuda(cuda_home: str | None) -> bool:
    flag = os.environ.get("FEWCORE_CUDA", "").strip()
    if flag == "0":
        return False
    if flag == "1":
        if cuda_home is None:
            sys.exit("FEWCORE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME to the toolkit root")
        return True
    return cuda_home is not None


CUDA_HOME = _find_cuda_home()
WITH_CUDA = _want_cuda(CUDA_HOME)
if WITH_CUDA:
    # Must be set before torch.utils.cpp_extension is imported: it reads CUDA_HOME once.
    os.environ["CUDA_HOME"] = CUDA_HOME  # type: ignore[assignment]

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _cuda_arch_list() -> str:
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    if torch.cuda.is_available():
        # The newest visible architecture also gets PTX, so that the build runs on a newer GPU too.
        archs = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{major}.{minor}" for major, minor in archs) + "+PTX"
    return "8.0;9.0+PTX"


def _nvidia_pip_includes() -> list[str]:
    """Headers of the pip-installed NVIDIA packages (cusparse.h, ...) that torch's headers include."""
    found = []
    for site in sys.path:
        for include in glob.glob(os.path.join(site, "nvidia", "cu*", "include")):
            if os.path.isdir(include):
                found.append(include)
    return sorted(set(found))


class _BuildExtension(BuildExtension):
    """Also records what the extension was built against, for load errors and ``fewcore info``."""

    def run(self) -> None:
        super().run()
        info = {
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "with_cuda": WITH_CUDA,
            "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST", "") if WITH_CUDA else "",
            "cuda_home": CUDA_HOME if WITH_CUDA else None,
        }
        for target in {ROOT / "fewcore", Path(self.build_lib) / "fewcore"}:
            if target.is_dir():
                (target / "_build_info.json").write_text(json.dumps(info, indent=2) + "\n")


def _extension():
    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    include_dirs = [str(ROOT / "csrc" / "include")]
    # -fno-math-errno: with errno kept, std::sqrt in a loop stays a scalar call with an error check
    # (a loop of 16.7 M square roots measured 4x slower than vectorized); fewcore reads no errno.
    cxx_flags = ["-O3", "-fopenmp", "-fno-math-errno", "-DPy_LIMITED_API=0x03090000"]
    if not WITH_CUDA:
        return CppExtension(
            "fewcore._C", sources, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"], py_limited_api=True,
        )
    os.environ["TORCH_CUDA_ARCH_LIST"] = _cuda_arch_list()
    return CUDAExtension(
        "fewcore._C",
        sources + sorted(glob.glob("csrc/cuda/*.cu")),
        include_dirs=include_dirs + _nvidia_pip_includes(),
        define_macros=[("FEWCORE_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
        extra_link_args=["-fopenmp"],
        py_limited_api=True,
    )


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": _BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
