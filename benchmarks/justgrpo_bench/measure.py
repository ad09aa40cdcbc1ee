"""Measurement: synchronisation, peak memory (profiler, RSS, or a fresh subprocess per phase), gradient
flattening and error metrics."""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

CLI_SCRIPT = Path(__file__).resolve().parents[1] / "bench_justgrpo.py"  # re-run by the memory subprocesses

if TYPE_CHECKING:
    from .workload import Workload


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def zero_grads(model: nn.Module) -> None:
    """Allocate (once) and zero every gradient, so a phase's peak memory is its activations, not the grads."""
    for p in model.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        else:
            p.grad.zero_()


def flat_grads(model: nn.Module, limit: int = 200_000_000) -> torch.Tensor:
    """All gradients as one fp32 CPU vector; above `limit` elements, only the first block, the last block, the final
    norm and the output head (to keep an 8B comparison in memory)."""
    params = list(model.parameters())
    if sum(p.numel() for p in params) > limit:
        inner = model.model.model.transformer
        params = [
            *inner.blocks[0].parameters(),
            *inner.blocks[-1].parameters(),
            inner.ln_f.weight,
            model.model.output_head_weight(),
        ]
    return torch.cat([p.grad.detach().float().flatten().cpu() for p in params])


def _read_status() -> dict[str, int]:
    with open("/proc/self/status") as f:
        text = f.read()
    return {key: int(re.search(rf"{key}:\s+(\d+)", text).group(1)) * 1024 for key in ("VmRSS", "VmHWM")}


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_peak_profiler(run: Callable[[], Any]) -> int:
    """CPU: the peak of the profiler's "Total Allocated" counter while `run()` runs, i.e. the most bytes held by
    tensors allocated during the phase (counted from zero at its start). Exact and insensitive to other processes."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    return max([0, *totals])


def measure_peak_inprocess(run: Callable[[], Any], device: torch.device, method: str = "profiler") -> tuple[int, str]:
    """Peak memory of `run()` above what was allocated before it.

    CUDA: the caching allocator's `max_memory_allocated`. CPU: `method="profiler"` (default, see
    `measure_peak_profiler`), or `"rss"`: the process' peak RSS (VmHWM after resetting it; `ru_maxrss` when it cannot
    be reset), which also sees allocator caches and non-tensor memory but is page-granular.
    """
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before, "cuda.max_memory_allocated"
    if method == "profiler":
        return measure_peak_profiler(run), "profiler Total Allocated"
    if _reset_peak_rss():
        before = _read_status()["VmRSS"]
        run()
        return _read_status()["VmHWM"] - before, "VmHWM-reset"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    run()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before, "ru_maxrss"


def measure_peak_subprocess(
    args: argparse.Namespace, argv: list[str], phase: str, inputs_path: str
) -> tuple[int, str]:
    """Run one phase in a fresh interpreter (so that no allocator cache of another phase hides its peak)."""
    cmd = [sys.executable, str(CLI_SCRIPT), *argv, "--_phase", phase, "--_inputs", inputs_path]
    cmd += ["--memory", "rss", "--repeats", "0", "--warmup", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("PEAK_MEMORY "):
            record = json.loads(line[len("PEAK_MEMORY ") :])
            return record["bytes"], f"subprocess+{record['method']}"
    raise RuntimeError(f"Memory subprocess for {phase} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def save_inputs(work: Workload, path: str) -> None:
    keys = ("completions", "completion_mask", "rollout_logps", "rollout_entropies", "advantages", "fast_mask")
    torch.save({k: getattr(work, k).cpu() for k in keys}, path)


def load_inputs(work: Workload, path: str) -> None:
    device = work.prompt_ids.device
    for key, value in torch.load(path).items():
        setattr(work, key, value.to(device))


def max_abs_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    mask = mask.bool()
    return float((a.float()[mask] - b.float()[mask]).abs().max()) if bool(mask.any()) else 0.0


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None
