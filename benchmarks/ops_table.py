"""Run the kernel benchmarks and write their table into benchmarks/README.md.

    python benchmarks/ops_table.py            # episode shapes (~15 minutes on 2 busy cores)
    python benchmarks/ops_table.py --large    # the large shapes, with peak memory (~10 minutes)

Each writes its own block of the README.
Times are medians from one pytest-benchmark run, so every ratio compares implementations
measured side by side in the same process.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
MARKERS = "<!-- ops-table-{}:start -->", "<!-- ops-table-{}:end -->"

_PEAK_SCRIPT = """
import resource, sys, torch
torch.set_num_threads({threads})
sys.path.insert(0, {here!r})
import test_bench_ops as bench
inputs = bench._inputs("attention", bench.LARGE_ATTENTION, bench.LARGE_C, False)
fn = bench.IMPLEMENTATIONS["attention"][{impl!r}]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.no_grad():
    fn(*inputs)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def peak_extra_mib(impl: str, threads: int) -> float:
    """Peak resident memory an implementation adds at the large attention shape (own process)."""
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT.format(here=str(HERE), impl=impl, threads=threads)],
                         check=True, capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1]) / 1024


def run_benchmarks(large: bool, threads: int | None) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "ops.json"
        subprocess.run(
            [sys.executable, "-m", "pytest", str(HERE / "test_bench_ops.py"), "-q", "-p", "no:cacheprovider",
             "--benchmark-enable", "--benchmark-only", "--benchmark-max-time=0.5",
             f"--benchmark-json={report}", "-m", "large" if large else "not large"],
            check=True,
            env={**os.environ, **({"FEWCORE_BENCH_THREADS": str(threads)} if threads else {})},
        )
        return json.loads(report.read_text())["benchmarks"]


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g}"


def table(benchmarks: list[dict], peaks: dict[str, float]) -> str:
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    for bench in benchmarks:
        groups[bench["group"]][bench["extra_info"]["impl"]] = bench
    lines = []
    episode_rows, large_rows = [], []
    eager_ratios: list[float] = []
    compiled_ratios: dict[str, list[float]] = defaultdict(list)
    for name in sorted(groups, key=lambda g: (g.split()[0], g.split()[1], [int(x) for x in re.findall(r"=(\d+)", g)])):
        impls = groups[name]
        info = impls["fewcore"]["extra_info"]
        median = {impl: b["stats"]["median"] for impl, b in impls.items()}
        ours = median["fewcore"]
        ratios = {impl: median[impl] / ours for impl in median if impl not in ("fewcore", "gemm")}
        shape = f"{info['B']}×{info['N']}×{info['M']}×{info['D']}"
        row = (f"| {info['op']} | {info['direction']} | {shape} | {_ms(ours)} | "
               + " | ".join(f"{_ms(median[i])} ({ratios[i]:.2f}×)" if i in median else "–"
                            for i in ("eager", "compiled", "sdpa")) + " |")
        if info["N"] == 75:
            episode_rows.append(row)
            if info["direction"] == "forward+backward":
                eager_ratios.append(ratios["eager"])
            compiled_ratios[info["direction"]].append(ratios["compiled"])
        else:
            large_rows.append(row)
            if "gemm" in median:
                flops = 2 * info["B"] * info["N"] * info["M"] * info["D"]
                gemm_rate, our_rate = flops / median["gemm"] / 1e9, flops / ours / 1e9
                large_rows.append(f"| | GEMM rate | same operands | {gemm_rate:.0f} GFLOP/s (bmm {_ms(median['gemm'])} ms) | "
                                  f"fewcore: {our_rate:.0f} GFLOP/s = {100 * our_rate / gemm_rate:.0f}% of GEMM | | |")
    header = ["| op | direction | B×N×M×D | fewcore ms | eager ms (speed-up) | torch.compile ms (speed-up) | SDPA ms (speed-up) |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    lines.append("Speed-up = baseline median / fewcore median (> 1: fewcore is faster).")
    if episode_rows:
        geo = {d: math.exp(sum(map(math.log, r)) / len(r)) for d, r in compiled_ratios.items() if r}
        lines += [
            "", *header, *episode_rows, "",
            f"Forward+backward: smallest speed-up over eager {min(eager_ratios):.2f}× (target ≥ 3×); over "
            f"torch.compile smallest {min(compiled_ratios['forward+backward']):.2f}×, geometric mean "
            f"{geo['forward+backward']:.2f}× (target > 1× everywhere, ≥ 1.5× mean). Forward only: geometric mean "
            f"over torch.compile {geo['forward']:.2f}×.",
        ]
    if large_rows:
        lines += ["", *header, *large_rows]
    if peaks:
        lines += ["", "Peak extra resident memory at 1×16384×16384×256 (each in its own process): "
                  + ", ".join(f"{impl} {mib:.0f} MiB" for impl, mib in peaks.items())
                  + f"; fewcore / eager = {100 * peaks['fewcore'] / peaks['eager']:.2f}% (target < 5%)."]
    return "\n".join(lines)


def machine() -> str:
    load = os.getloadavg()
    return (f"Machine: {cpu_model()}, {os.cpu_count()} cores, torch.get_num_threads() = {torch.get_num_threads()}, "
            f"torch {torch.__version__}, Python {platform.python_version()}; "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; load average {load[0]:.1f} at the end "
            "of the run (the machine is shared: absolute times are noisy, ratios are from one run).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", action="store_true", help="the large shapes and peak memory instead")
    parser.add_argument("--threads", type=int, help="intra-op threads for every implementation (default: torch's)")
    parser.add_argument("--print-only", action="store_true", help="print the table instead of updating README.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # so that the machine line reports it
    benchmarks = run_benchmarks(args.large, args.threads)
    threads = torch.get_num_threads()
    peaks = {impl: peak_extra_mib(impl, threads) for impl in ("fewcore", "eager", "sdpa")} if args.large else {}
    text = "\n\n".join([machine(), table(benchmarks, peaks)])
    command = "python benchmarks/ops_table.py" + (" --large" if args.large else "") + (
        f" --threads {args.threads}" if args.threads else "")
    text += f"\n\nRegenerate: `{command}`."
    if args.print_only:
        print(text)
        return
    readme = README.read_text() if README.exists() else ""
    start, end = (marker.format("large" if args.large else "episode") for marker in MARKERS)
    block = f"{start}\n{text}\n{end}"
    if start in readme:
        readme = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, readme, flags=re.S)
    else:
        readme += ("\n" if readme else "") + block + "\n"
    README.write_text(readme)
    print(text)


if __name__ == "__main__":
    main()
