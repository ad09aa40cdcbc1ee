"""The benchmark run: arguments, setup, interleaved timing of every phase, the exactness checks and the targets."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

import torch

from justgrpo_trl.models.modeling_llada import LLaDAModelLM

from . import __doc__ as package_doc
from .measure import (
    flat_grads,
    load_inputs,
    max_abs_diff,
    measure_peak_inprocess,
    measure_peak_subprocess,
    median,
    relative_error,
    save_inputs,
    synchronize,
    zero_grads,
)
from .models import DEFAULT_SIZES, MODEL_SHAPES, build_model, count_params, forward_flops
from .phases import fill_scoring_inputs, phase_table
from .report import format_report
from .workload import Workload, make_workload


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=package_doc.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", choices=sorted(MODEL_SHAPES), default="tiny")
    parser.add_argument("--batch_size", type=int, default=None, help="Rows (completions) per batch.")
    parser.add_argument("--prompt_length", type=int, default=None, help="Prompt tokens per row (no padding).")
    parser.add_argument("--gen_length", type=int, default=None, help="L = max_completion_length (canvas slots).")
    parser.add_argument("--chunk_size", type=int, nargs="+", default=None, help="Scoring canvases per chunk (sweep).")
    parser.add_argument("--mean_fraction", type=float, default=0.6, help="Mean used fraction of gen_length.")
    parser.add_argument("--fast_quantile", type=float, default=0.25, help="JustGRPO-Fast: fraction of positions kept.")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument(
        "--baseline",
        choices=["plain", "reference"],
        default="plain",
        help="plain: the naive loops, sampling/scoring only the read slot. reference: also the reference code's\n"
        "whole-[B, S, V] work (LLaDA generate()'s float64 Gumbel + softmax; logits / temperature in the loss).",
    )
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="Weights (cuda: bf16).")
    parser.add_argument("--autocast", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default 1: stable on a shared host; see README)."
    )
    parser.add_argument("--repeats", type=int, default=3, help="Timed rounds; every phase once per round.")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed rounds first.")
    parser.add_argument(
        "--clock",
        choices=["auto", "wall", "cpu"],
        default="auto",
        help="Which time the speedups use. auto: wall on GPU; on CPU with 1 thread the process CPU time, which other\n"
        "tenants of a shared host do not inflate (both are always reported).",
    )
    parser.add_argument(
        "--checkpointed",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Also time the checkpointed path (ZeRO-3/FSDP).",
    )
    parser.add_argument(
        "--memory",
        choices=["auto", "profiler", "rss", "off"],
        default="auto",
        help="Peak memory per phase. auto: the CUDA allocator's peak on GPU, the profiler's tensor-allocation peak on "
        "CPU (profiler); rss: each phase in a fresh subprocess, peak RSS above the RSS after setup.",
    )
    parser.add_argument("--peak_tflops", type=float, default=None, help="For MFU (default 989 on cuda: H100 bf16).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="Write the results here.")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--_phase", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_inputs", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    batch, prompt, gen, chunks = DEFAULT_SIZES[args.model]
    args.batch_size = args.batch_size or batch
    args.prompt_length = args.prompt_length or prompt
    args.gen_length = args.gen_length or gen
    args.chunk_size = args.chunk_size or chunks
    on_cuda = torch.device(args.device).type == "cuda"
    args.dtype = args.dtype or ("bfloat16" if on_cuda else "float32")
    args.autocast = on_cuda if args.autocast is None else args.autocast
    if args.peak_tflops is None and on_cuda:
        args.peak_tflops = 989.0
    if args.memory == "auto":
        args.memory = "profiler"
    if args.clock == "auto":
        args.clock = "cpu" if not on_cuda and (args.threads or 1) == 1 else "wall"
    return args


def setup(args: argparse.Namespace) -> tuple[Workload, torch.device]:
    if args.threads or torch.device(args.device).type == "cpu":
        torch.set_num_threads(args.threads or 1)
    device = torch.device(args.device)
    model, tokens = build_model(args.model, device, getattr(torch, args.dtype), seed=args.seed)
    model.requires_grad_(True)
    return make_workload(args, model, tokens, device), device


def run_memory_child(args: argparse.Namespace) -> None:
    """`--_phase`: build the model and inputs, then measure one phase's peak and print it for the parent."""
    work, device = setup(args)
    load_inputs(work, args._inputs)
    phases = phase_table(work, args.chunk_size, args.fast_quantile, checkpointed=True)
    zero_grads(work.model)
    peak, method = measure_peak_inprocess(phases[args._phase], device, method="rss")
    print("PEAK_MEMORY " + json.dumps({"bytes": peak, "method": method}), flush=True)


def phase_flops(model: LLaDAModelLM, name: str, work: Workload, seq: int, counters: dict) -> float:
    """Model FLOPs of one run of a phase (recomputation under checkpointing not counted, as MFU requires)."""
    if name == "rollout/baseline":
        return counters["canvases"] * forward_flops(model, seq, seq)
    if name == "rollout/ours":
        return counters["canvases"] * forward_flops(model, seq, 1)
    if name == "scoring/baseline":
        return 3 * counters["canvases"] * forward_flops(model, seq, seq)
    # ours: every canvas is scored once with gradient; checkpointed, each is run twice, counted once
    scored = counters["logit_rows"] // (2 if name.startswith("scoring/ckpt") else 1)
    return 3 * scored * forward_flops(model, seq, 1)


def run(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns (and optionally writes) the results as a dict."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args._phase is not None:
        run_memory_child(args)
        return {}
    work, device = setup(args)
    fill_scoring_inputs(work, args.fast_quantile)
    model = work.model
    inner: LLaDAModelLM = model.model
    phases = phase_table(work, args.chunk_size, args.fast_quantile, args.checkpointed)
    seq = args.prompt_length + args.gen_length

    wall: dict[str, list[float]] = {name: [] for name in phases}
    cpu: dict[str, list[float]] = {name: [] for name in phases}
    counters: dict[str, dict] = {}
    outputs: dict[str, Any] = {}
    grads: dict[str, torch.Tensor] = {}
    for round_index in range(args.warmup + max(args.repeats, 1)):
        timed = round_index >= args.warmup
        order = list(phases) if round_index % 2 == 0 else list(reversed(phases))  # interleaved, alternating order
        for name in order:
            if name.startswith("scoring/"):
                zero_grads(model)
            model.reset_counters()
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            result = phases[name]()
            synchronize(device)
            if timed:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
            if name not in outputs:
                outputs[name] = result
                counters[name] = dict(
                    calls=model.calls,
                    canvases=model.canvases,
                    canvas_tokens=model.canvas_tokens,
                    logit_rows=model.logit_rows,
                )
                if name.startswith("scoring/"):
                    grads[name] = flat_grads(model)

    peaks: dict[str, int | None] = {name: None for name in phases}
    memory_method = None
    if args.memory != "off":
        with tempfile.TemporaryDirectory() as tmp:
            inputs_path = os.path.join(tmp, "inputs.pt")
            save_inputs(work, inputs_path)
            for name in phases:
                if name.startswith("scoring/"):
                    zero_grads(model)
                if args.memory == "rss" and device.type == "cpu":
                    peaks[name], memory_method = measure_peak_subprocess(args, argv, name, inputs_path)
                else:
                    peaks[name], memory_method = measure_peak_inprocess(phases[name], device)

    # ---- exactness
    mask = work.completion_mask
    width = mask.size(1)
    base_logps = outputs["scoring/baseline"][:, :width]
    checks: dict[str, float] = {
        "rollout_sampling_logps_vs_baseline_exact_max_abs": max_abs_diff(work.rollout_logps, base_logps, mask)
    }
    for name in phases:
        if name.startswith("scoring/") and name != "scoring/baseline":
            selected = work.fast_mask if name.startswith("scoring/fast") else mask
            checks[f"{name} logps_max_abs_diff"] = max_abs_diff(outputs[name], base_logps, selected)
            if not name.startswith("scoring/fast"):
                checks[f"{name} grad_rel_err"] = relative_error(grads[name], grads["scoring/baseline"])

    # ---- summary
    num_valid = work.num_valid
    results: dict[str, dict] = {}
    clock = cpu if args.clock == "cpu" else wall
    for name in phases:
        t = median(clock[name])
        flops = phase_flops(inner, name, work, seq, counters[name])
        achieved = flops / t if t else None
        results[name] = dict(
            time_s=t,
            wall_s=median(wall[name]),
            cpu_s=median(cpu[name]),
            wall_times_s=wall[name],
            cpu_times_s=cpu[name],
            tokens_per_s=num_valid / t if t else None,
            **counters[name],
            peak_memory_bytes=peaks[name],
            model_flops=flops,
            achieved_tflops=achieved / 1e12 if achieved else None,
            mfu=achieved / (args.peak_tflops * 1e12) if achieved and args.peak_tflops else None,
        )

    def speedup(name: str, base: str, key: str = "time_s") -> float | None:
        a, b = results[name][key], results[base][key]
        return b / a if a and b else None

    def memory_ratio(name: str, base: str) -> float | None:
        a, b = results[name]["peak_memory_bytes"], results[base]["peak_memory_bytes"]
        return a / b if a is not None and b else None

    ratios: dict[str, dict] = {}
    for name in phases:
        if name.endswith("baseline"):
            continue
        base = "rollout/baseline" if name.startswith("rollout/") else "scoring/baseline"
        ratios[name] = dict(
            speedup=speedup(name, base),
            speedup_wall=speedup(name, base, "wall_s"),
            speedup_cpu=speedup(name, base, "cpu_s"),
            memory=memory_ratio(name, base),
        )

    targets: dict[str, dict] = {"rollout >= 2x": dict(value=ratios["rollout/ours"]["speedup"], target=2.0)}
    for c in args.chunk_size:
        targets[f"scoring c={c} >= 2.5x"] = dict(value=ratios[f"scoring/ours[c={c}]"]["speedup"], target=2.5)
        targets[f"fast c={c} >= 3x"] = dict(
            value=ratios[f"scoring/fast[q={args.fast_quantile:g},c={c}]"]["speedup"], target=3.0
        )
        targets[f"scoring memory c={c} <= baseline"] = dict(
            value=ratios[f"scoring/ours[c={c}]"]["memory"], target=1.0, lower_is_better=True
        )
    targets["rollout memory <= baseline"] = dict(
        value=ratios["rollout/ours"]["memory"], target=1.0, lower_is_better=True
    )
    if device.type == "cuda":
        targets["scoring MFU >= 40%"] = dict(
            value=max(results[f"scoring/ours[c={c}]"]["mfu"] or 0 for c in args.chunk_size), target=0.4
        )
    for entry in targets.values():
        value, lower = entry["value"], entry.pop("lower_is_better", False)
        entry["met"] = None if value is None else (value <= entry["target"] if lower else value >= entry["target"])

    params = count_params(inner)
    report = dict(
        config=dict(
            model=args.model,
            params=params,
            batch_size=args.batch_size,
            prompt_length=args.prompt_length,
            gen_length=args.gen_length,
            chunk_sizes=args.chunk_size,
            dtype=args.dtype,
            autocast=args.autocast,
            device=str(device),
            device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            threads=torch.get_num_threads(),
            repeats=args.repeats,
            clock=args.clock,
            warmup=args.warmup,
            temperature=args.temperature,
            baseline=args.baseline,
            fast_quantile=args.fast_quantile,
            lengths=work.lengths.tolist(),
            used_fraction=num_valid / (args.batch_size * args.gen_length),
            fast_selected=int(work.fast_mask.sum()),
            valid_tokens=num_valid,
            memory_method=memory_method,
            peak_tflops=args.peak_tflops,
            torch=torch.__version__,
        ),
        results=results,
        ratios=ratios,
        checks=checks,
        targets=targets,
    )
    if not args.quiet:
        print(format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report
