"""Results on disk and on screen: the run summary, `summary.json` / `samples.jsonl`, plots, and side-by-side tables.

Plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import datetime
import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..passk import mean_pass_at_k

SUMMARY_FILE, SAMPLES_FILE = "summary.json", "samples.jsonl"


def _versions() -> dict[str, str]:
    import torch
    import transformers

    from .. import __version__

    return {"justgrpo_trl": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def pass_at_k_table(records: Sequence[dict[str, Any]], ks: Sequence[int]) -> dict[str, float]:
    """Unbiased pass@k averaged over problems, from per-sample records with `problem_index` and `correct`."""
    samples, correct = defaultdict(int), defaultdict(int)
    for record in records:
        samples[record["problem_index"]] += 1
        correct[record["problem_index"]] += bool(record["correct"])
    problems = sorted(samples)
    n = [samples[p] for p in problems]
    c = [correct[p] for p in problems]
    return {str(k): mean_pass_at_k(n, c, k) for k in ks if k <= min(n)}


def reference_accuracy(records: Sequence[dict[str, Any]]) -> float | None:
    """Accuracy under the reference-compatible grader, or `None` when the records have no such verdict (code)."""
    verdicts = [r.get("correct_reference") for r in records]
    if not verdicts or any(v is None and r.get("gradable", True) for v, r in zip(verdicts, records)):
        return None
    return sum(bool(v) for v in verdicts) / len(verdicts)


def format_accuracy(summary: dict[str, Any]) -> str:
    """`"accuracy 45.20% (reference-compatible grader: 46.00%)"`, the second part for math tasks only."""
    text = f"accuracy {100 * summary['accuracy']:.2f}%"
    reference = summary.get("accuracy_reference")
    if reference is not None:
        text += f" (reference-compatible grader: {100 * reference:.2f}%)"
    return text


def build_summary(config, spec, num_problems: int, records, stats, tokens, duplicates: int = 0) -> dict[str, Any]:
    """Accuracy, pass@k, NFE, throughput and the full configuration of one run."""
    num_tokens = sum(r["num_tokens"] for r in records)
    decode_seconds = max(s["decode_seconds"] for s in stats)
    nfe = [r["nfe"] for r in records]
    return {
        "task": spec.name,
        "kind": spec.kind,
        "model": config.model,
        "decoder": config.decoder,
        "num_problems": num_problems,
        "num_samples": len(records),
        "n": config.n,
        "accuracy": sum(bool(r["correct"]) for r in records) / len(records),
        # The same samples under the reference-compatible grader (the JustGRPO paper's rules), math tasks only.
        "accuracy_reference": reference_accuracy(records),
        "pass_at_k": pass_at_k_table(records, config.ks),
        "nfe": {
            "mean_per_sample": statistics.fmean(nfe),
            "max_per_sample": max(nfe),
            "total_forward_passes": sum(s["forward_passes"] for s in stats),
        },
        "tokens": {
            "total": num_tokens,
            "mean_per_sample": num_tokens / len(records),
            # Completion tokens (up to the stop token) per second of decoding, all processes together.
            "per_second": num_tokens / decode_seconds if decode_seconds > 0 else None,
        },
        "seconds": {
            "decode": decode_seconds,
            "wall": max(s["wall_seconds"] for s in stats),
            "per_process_decode": [s["decode_seconds"] for s in sorted(stats, key=lambda s: s["rank"])],
        },
        "stopped_fraction": sum(r["stopped"] for r in records) / len(records),
        "mean_chosen_token_entropy": statistics.fmean(r["mean_entropy"] for r in records),
        "ungradable": sum(not r["gradable"] for r in records),
        "world_size": len(stats),
        "samples_per_process": [s["num_samples"] for s in sorted(stats, key=lambda s: s["rank"])],
        "duplicates_dropped": duplicates,
        "special_tokens": {"mask_id": tokens.mask_id, "stop_ids": list(tokens.stop_ids), "pad_id": tokens.pad_id},
        "config": config.describe(),
        "versions": _versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_outputs(output_dir: str | Path, summary: dict[str, Any], records: Sequence[dict[str, Any]]) -> None:
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    with open(directory / SAMPLES_FILE, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def load_summary(path: str | Path) -> dict[str, Any]:
    """A run's summary, from its `summary.json` or its output directory."""
    path = Path(path)
    return json.loads((path / SUMMARY_FILE if path.is_dir() else path).read_text(encoding="utf-8"))


def load_records(output_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(output_dir)
    path = path / SAMPLES_FILE if path.is_dir() else path.with_name(SAMPLES_FILE)
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------------------


def run_label(summary: dict[str, Any]) -> str:
    """A short name for a run: decoder and its knobs."""
    config = summary.get("config", {})
    decoder = summary.get("decoder", config.get("decoder", "?"))
    if decoder == "block":
        details = f"b{config.get('block_length')} s{config.get('steps')}"
        if config.get("remasking") == "random":
            details += " random"
    elif decoder == "eb":
        details = f"b{config.get('block_length')} g{config.get('gamma')}"
    else:
        details = ""
    return f"{decoder} L{config.get('gen_length')} {details} T{config.get('temperature')}".replace("  ", " ").strip()


def format_table(summaries: Sequence[dict[str, Any]], labels: Sequence[str] | None = None) -> str:
    """A Markdown table of several runs: accuracy (this project's grader, then the reference-compatible one), every
    pass@k any run has, NFE, tokens/s."""
    labels = list(labels) if labels else [run_label(s) for s in summaries]
    ks = sorted({int(k) for s in summaries for k in s.get("pass_at_k", {})})
    header = ["run", "task", "n", "accuracy", "accuracy (ref.)", *(f"pass@{k}" for k in ks), "NFE/sample", "tokens/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, summary in zip(labels, summaries):
        passk = summary.get("pass_at_k", {})
        speed = summary.get("tokens", {}).get("per_second")
        cells = [
            label,
            summary.get("task", "?"),
            str(summary.get("n", "?")),
            f"{100 * summary['accuracy']:.2f}",
            f"{100 * summary['accuracy_reference']:.2f}" if summary.get("accuracy_reference") is not None else "-",
            *(f"{100 * passk[str(k)]:.2f}" if str(k) in passk else "-" for k in ks),
            f"{summary['nfe']['mean_per_sample']:.1f}",
            f"{speed:.1f}" if speed else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _draw_pass_at_k(axis, summaries, labels) -> None:
    for label, summary in zip(labels, summaries):
        points = sorted((int(k), v) for k, v in summary.get("pass_at_k", {}).items())
        if points:
            axis.plot([k for k, _ in points], [100 * v for _, v in points], marker="o", label=label)
    axis.set_xscale("log", base=2)
    axis.set_xlabel("k")
    axis.set_ylabel("pass@k (%)")
    axis.set_ylim(-2, 102)
    axis.set_title("pass@k")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")


def _draw_accuracy_vs_nfe(axis, summaries, labels) -> None:
    for label, summary in zip(labels, summaries):
        axis.scatter(summary["nfe"]["mean_per_sample"], 100 * summary["accuracy"], label=label)
    axis.set_xlabel("NFE per sample")
    axis.set_ylabel("accuracy (%)")
    axis.set_ylim(-2, 102)
    axis.set_title("accuracy vs NFE")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")


def plot_run(summary: dict[str, Any], output_dir: str | Path) -> list[str]:
    """`pass_at_k.png` and `accuracy_vs_nfe.png` for one run; returns their paths."""
    plt = _pyplot()
    paths = []
    for name, draw in (("pass_at_k.png", _draw_pass_at_k), ("accuracy_vs_nfe.png", _draw_accuracy_vs_nfe)):
        figure, axis = plt.subplots(figsize=(5, 4))
        draw(axis, [summary], [run_label(summary)])
        figure.tight_layout()
        path = Path(output_dir) / name
        figure.savefig(path, dpi=120)
        plt.close(figure)
        paths.append(str(path))
    return paths


def plot_comparison(summaries: Sequence[dict[str, Any]], labels: Sequence[str], output: str | Path) -> str:
    """One figure: pass@k curves (left) and accuracy against NFE (right) of several runs."""
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    _draw_pass_at_k(left, summaries, labels)
    _draw_accuracy_vs_nfe(right, summaries, labels)
    figure.tight_layout()
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120)
    plt.close(figure)
    return str(output)
