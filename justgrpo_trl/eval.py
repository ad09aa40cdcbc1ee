"""`justgrpo-eval`: evaluate masked diffusion LMs on GSM8K, MATH-500, HumanEval and MBPP, and compare runs.

```bash
# The paper's protocol (greedy, block 32, steps = gen length) on GSM8K:
justgrpo-eval --task gsm8k --model nzl-thu/LLaDA-Instruct-JustGRPO --gen_length 256 --output_dir runs/gsm8k
# AR order / entropy-bounded sampler, 16 samples at temperature 1 for pass@k:
justgrpo-eval --task math500 --decoder ar --temperature 1.0 --n 16 --k 1,4,16 --plot
justgrpo-eval --task humaneval --decoder eb --gamma 0.1 --block_length 256
# Several GPUs (every sample decoded exactly once, gathered on the main process):
accelerate launch --num_processes 8 -m justgrpo_trl.eval --task gsm8k --batch_size 16
# Runs side by side, and the paper's two analyses of decoding order:
justgrpo-eval compare runs/a runs/b/summary.json --output cmp.png
justgrpo-eval analyze-order --task gsm8k --n 16 --output_dir runs/order
justgrpo-eval analyze-entropy --task gsm8k --limit 200 --output_dir runs/entropy
```

On a machine without GPUs, launch several CPU processes with `accelerate launch --multi_gpu --num_processes 2`
(and `CUDA_VISIBLE_DEVICES=`): the harness then initialises torch.distributed over gloo.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

COMMANDS = ("run", "compare", "analyze-order", "analyze-entropy")
# Defaults of the analyses: sampling for pass@k, and arbitrary order over the whole canvas (one block).
ANALYSIS_DEFAULTS = {
    "analyze-order": {"temperature": 1.0, "n": 16, "block_length": None, "output_dir": "eval_results/order"},
    "analyze-entropy": {"temperature": 0.0, "n": 1, "block_length": None, "output_dir": "eval_results/entropy"},
}


def _config_parser(command: str):
    from transformers import HfArgumentParser

    from .evaluation.runner import EvalConfig

    parser = HfArgumentParser(
        EvalConfig,
        prog=f"justgrpo-eval{'' if command == 'run' else ' ' + command}",
        description=f"Commands: {', '.join(COMMANDS)} (default: run). `justgrpo-eval compare -h` for comparisons.",
    )
    parser.set_defaults(**ANALYSIS_DEFAULTS.get(command, {}))
    return parser


def _run(argv: Sequence[str]) -> int:
    from .evaluation.report import format_accuracy
    from .evaluation.runner import evaluate

    (config,) = _config_parser("run").parse_args_into_dataclasses(args=list(argv))
    result = evaluate(config)
    if result is not None:
        summary = result.summary
        passk = ", ".join(f"pass@{k} {100 * v:.2f}" for k, v in summary["pass_at_k"].items())
        print(
            f"{summary['task']} [{summary['decoder']}]: {format_accuracy(summary)} over "
            f"{summary['num_samples']} samples ({passk}); NFE/sample {summary['nfe']['mean_per_sample']:.1f}; "
            f"results in {config.output_dir}"
        )
    return 0


def _compare(argv: Sequence[str]) -> int:
    from .evaluation.report import format_table, load_summary, plot_comparison, run_label

    parser = argparse.ArgumentParser(
        prog="justgrpo-eval compare", description="Lay several runs side by side: a Markdown table and one plot."
    )
    parser.add_argument("runs", nargs="+", help="summary.json files or run output directories.")
    parser.add_argument("--labels", default=None, help="Comma-separated run names (default: decoder and knobs).")
    parser.add_argument("--output", default=None, help="PNG with pass@k curves and accuracy against NFE.")
    parser.add_argument("--table", default=None, help="Also write the Markdown table to this file.")
    args = parser.parse_args(list(argv))
    summaries = [load_summary(path) for path in args.runs]
    labels = args.labels.split(",") if args.labels else [run_label(s) for s in summaries]
    if len(labels) != len(summaries):
        parser.error(f"--labels names {len(labels)} runs, but {len(summaries)} were given.")
    table = format_table(summaries, labels)
    print(table)
    if args.table:
        Path(args.table).write_text(table + "\n", encoding="utf-8")
    if args.output:
        print(f"plot: {plot_comparison(summaries, labels, args.output)}")
    return 0


def _analyze(command: str, argv: Sequence[str]) -> int:
    from .evaluation.analysis import analyze_entropy, analyze_order

    (config,) = _config_parser(command).parse_args_into_dataclasses(args=list(argv))
    report = (analyze_order if command == "analyze-order" else analyze_entropy)(config)
    if report is not None:
        if "table" in report:
            print(report["table"])
        else:
            print(json.dumps({name: order["entropy"] for name, order in report["orders"].items()}, indent=2))
        print(f"report in {config.output_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `justgrpo-eval` and `python -m justgrpo_trl.eval`: `[command] [options]`, where command is
    one of run (the default), compare, analyze-order, analyze-entropy."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "run"
    if command == "run":
        status = _run(argv)
        import torch.distributed

        if torch.distributed.is_initialized():  # left to interpreter shutdown, a gloo group can abort a rank
            torch.distributed.destroy_process_group()
        return status
    if command == "compare":
        return _compare(argv)
    return _analyze(command, argv)


if __name__ == "__main__":
    sys.exit(main())
