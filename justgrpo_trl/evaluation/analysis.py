"""The paper's two analyses of decoding order, on one model and one task.

* `analyze_order`: pass@k when decoding in AR order against arbitrary (low-confidence) order. The paper finds the
  AR curve above the arbitrary-order one at large k: arbitrary order narrows the reasoning paths explored.
* `analyze_entropy`: the entropy of each token's predictive distribution at the moment it is decoded. Arbitrary order
  defers the uncertain "fork" tokens until the context has made them easy, so it decodes fewer high-entropy tokens.

Both run the same evaluation twice (outputs in `<output_dir>/ar` and `<output_dir>/low_confidence`) and then write
their report next to them. With several processes every process decodes; the main process reports.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from .report import _draw_pass_at_k, _pyplot, format_table
from .runner import EvalConfig, EvalResult, evaluate, load_model_and_tokenizer, partial_state

ORDERS: dict[str, dict[str, Any]] = {
    "ar": {"decoder": "ar"},
    "low_confidence": {"decoder": "block", "remasking": "low_confidence"},
}
ORDER_LABELS = {"ar": "AR order", "low_confidence": "arbitrary (low-confidence) order"}


def run_orders(config: EvalConfig, model=None, tokenizer=None, **overrides) -> dict[str, EvalResult | None]:
    """Evaluate `config` once per decoding order, loading the model once."""
    state = partial_state(config)
    if model is None:
        model, tokenizer = load_model_and_tokenizer(config, state.device)
    results = {}
    for name, order in ORDERS.items():
        run = replace(config, output_dir=str(Path(config.output_dir) / name), **order, **overrides)
        results[name] = evaluate(run, model, tokenizer, state)
    return results


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------------------------
# pass@k by order
# --------------------------------------------------------------------------------------------------------------


def analyze_order(config: EvalConfig, model=None, tokenizer=None) -> dict[str, Any] | None:
    """pass@k of AR order against low-confidence order; writes `order_analysis.json` and `order_pass_at_k.png`."""
    results = run_orders(config, model, tokenizer)
    if any(result is None for result in results.values()):
        return None
    summaries = [result.summary for result in results.values()]
    labels = [ORDER_LABELS[name] for name in results]
    output_dir = Path(config.output_dir)
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    _draw_pass_at_k(axis, summaries, labels)
    axis.set_title(f"pass@k by decoding order ({summaries[0]['task']})")
    figure.tight_layout()
    plot = output_dir / "order_pass_at_k.png"
    figure.savefig(plot, dpi=120)
    plt.close(figure)
    report = {
        "task": summaries[0]["task"],
        "model": config.model,
        "orders": {
            name: {
                "accuracy": result.summary["accuracy"],
                "pass_at_k": result.summary["pass_at_k"],
                "nfe_mean": result.summary["nfe"]["mean_per_sample"],
                "output_dir": str(output_dir / name),
            }
            for name, result in results.items()
        },
        "table": format_table(summaries, labels),
        "plot": str(plot),
        "config": config.describe(),
    }
    _write_json(output_dir / "order_analysis.json", report)
    return report


# --------------------------------------------------------------------------------------------------------------
# Entropy of the chosen tokens by order
# --------------------------------------------------------------------------------------------------------------


def entropy_statistics(values: list[float], high: float = 1.0) -> dict[str, float]:
    """Summary statistics of chosen-token entropies (nats); `high_fraction` is the share above `high`."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def quantile(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "count": len(values),
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "p90": quantile(0.9),
        "p99": quantile(0.99),
        "max": ordered[-1],
        "high_threshold": high,
        "high_fraction": sum(v > high for v in values) / len(values),
    }


def entropy_by_progress(records: list[dict[str, Any]], bins: int = 10) -> list[float | None]:
    """Mean chosen-token entropy per decile (by default) of decoding progress: a token unmasked at step s of a
    sample whose last token came at step S falls in bin `floor(bins * s / (S + 1))`."""
    sums, counts = [0.0] * bins, [0] * bins
    for record in records:
        steps, entropies = record["unmask_steps"], record["entropies"]
        if not steps:
            continue
        last = max(steps) + 1
        for step, entropy in zip(steps, entropies):
            index = min(bins - 1, bins * step // last)
            sums[index] += entropy
            counts[index] += 1
    return [s / c if c else None for s, c in zip(sums, counts)]


def analyze_entropy(config: EvalConfig, model=None, tokenizer=None, high: float = 1.0) -> dict[str, Any] | None:
    """Entropy of the tokens chosen at decode time in AR and low-confidence order; writes `entropy_analysis.json`
    and `entropy.png` (histograms, and mean entropy against decoding progress)."""
    results = run_orders(config, model, tokenizer, save_token_stats=True)
    if any(result is None for result in results.values()):
        return None
    output_dir = Path(config.output_dir)
    values = {name: [h for r in result.records for h in r["entropies"]] for name, result in results.items()}
    progress = {name: entropy_by_progress(result.records) for name, result in results.items()}
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    top = max((max(v) for v in values.values() if v), default=1.0)
    for name, entropies in values.items():
        left.hist(entropies, bins=40, range=(0, max(top, 1e-3)), alpha=0.5, density=True, label=ORDER_LABELS[name])
        points = [(i, p) for i, p in enumerate(progress[name]) if p is not None]
        right.plot([(i + 0.5) / len(progress[name]) for i, _ in points], [p for _, p in points], marker="o")
    left.set_xlabel("entropy of the chosen token's distribution (nats)")
    left.set_ylabel("density")
    left.set_yscale("log")
    left.legend(fontsize="small")
    left.set_title("chosen-token entropy")
    right.set_xlabel("decoding progress")
    right.set_ylabel("mean entropy (nats)")
    right.set_title("entropy along the decoding")
    right.legend([ORDER_LABELS[n] for n in values], fontsize="small")
    figure.tight_layout()
    plot = output_dir / "entropy.png"
    figure.savefig(plot, dpi=120)
    plt.close(figure)
    report = {
        "task": results["ar"].summary["task"],
        "model": config.model,
        "orders": {
            name: {
                "entropy": entropy_statistics(values[name], high),
                "entropy_by_progress": progress[name],
                "accuracy": result.summary["accuracy"],
                "output_dir": str(output_dir / name),
            }
            for name, result in results.items()
        },
        "plot": str(plot),
        "config": config.describe(),
    }
    _write_json(output_dir / "entropy_analysis.json", report)
    return report
