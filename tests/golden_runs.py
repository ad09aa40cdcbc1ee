"""Golden runs: fixed-seed 3-step trainings of every estimator path, reduced to weight hashes and timing-free logs.

A refactor that moves code without changing behaviour must leave every line of the output unchanged:

    python tests/golden_runs.py --output tests/golden/golden_runs.json            # record
    python tests/golden_runs.py --check tests/golden/golden_runs.json             # compare (exit 1 on a difference)

The runs are bitwise reproducible on one machine and one torch build (one thread); another CPU may round
differently (grad norms in the 4th digit), so this is a tool for a refactor, not a test of the suite. On another
machine, record the baseline there from the commit before the refactor, then check the refactor against it:

    git worktree add /tmp/before <commit>
    (cd /tmp/before && PYTHONPATH=. python tests/golden_runs.py --output /tmp/g.json)
    python tests/golden_runs.py --check /tmp/g.json
"""

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")

import torch  # noqa: E402
from conftest import load_stop_heavy  # noqa: E402  (this script's folder, tests/, is on sys.path)
from datasets import Dataset  # noqa: E402

from justgrpo_trl import JustGRPOConfig, JustGRPOTrainer  # noqa: E402
from justgrpo_trl.models.tiny import save_tiny_checkpoint  # noqa: E402

PROMPTS = ["hello", "the quick brown", "what is 12 + 30?", "fox"]
# The paths a refactor of the trainer and the estimators can change.
RUNS = {
    "ar_exact": {},
    "ar_exact_paper": {"objective": "paper"},
    "ar_exact_checkpointed_mu2": {"chunked_backward": False, "num_iterations": 2},
    "ar_exact_fast": {"justgrpo_fast": True, "top_entropy_quantile": 0.25},
    "ar_exact_rollout_cache": {"rollout_cache": "dual", "rollout_cache_refresh": 4},
    "diffu_grpo_spg2": {"estimator": "diffu_grpo", "steps_per_generation": 2, "block_length": 4},
    "agrpo": {"estimator": "agrpo", "block_length": 4, "agrpo_num_steps": 3},
}
TIMING_KEYS = ("runtime", "per_second", "time", "flos")


def ascii_fraction(prompts, completions, **kwargs) -> list[float]:
    """Share of printable ASCII characters (random byte-level tokens often decode to U+FFFD, so this varies)."""
    return [sum(" " <= ch <= "~" for ch in text) / len(text) if text else 0.0 for text in completions]


def weight_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, parameter in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(parameter.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def golden_run(checkpoint: Path, output_dir: Path, overrides: dict) -> dict:
    torch.manual_seed(0)
    model, _, _ = load_stop_heavy(str(checkpoint))  # completions that end at varied lengths: every path is used
    config = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        max_steps=3,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=16,
        logging_steps=1,
        learning_rate=5e-3,
        logprob_chunk_size=8,
        seed=0,
        disable_tqdm=True,
        **overrides,
    )
    trainer = JustGRPOTrainer(
        model=model,
        reward_funcs=ascii_fraction,
        args=JustGRPOConfig(**config),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS * 4}),
    )
    trainer.train()
    logs = [
        {key: value for key, value in entry.items() if not any(part in key for part in TIMING_KEYS)}
        for entry in trainer.state.log_history
    ]
    return {"weights": weight_hash(trainer.model), "logs": logs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, help="write the results here")
    parser.add_argument("--check", type=Path, help="compare with these recorded results")
    parser.add_argument("--runs", nargs="*", default=list(RUNS), choices=list(RUNS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = save_tiny_checkpoint(Path(tmp) / "tiny")
        results = {name: golden_run(checkpoint, Path(tmp) / name, RUNS[name]) for name in args.runs}
    text = json.dumps(results, indent=1, sort_keys=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n", encoding="utf-8")
    if args.check:
        recorded = json.loads(args.check.read_text(encoding="utf-8"))
        differing = [name for name in results if recorded.get(name) != results[name]]
        for name in args.runs:
            print(f"{name}: {'DIFFERS' if name in differing else 'identical'} ({results[name]['weights'][:16]})")
        return 1 if differing else 0
    if not args.output:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
