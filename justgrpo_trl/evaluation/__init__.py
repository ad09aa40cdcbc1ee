"""Evaluation harness: benchmarks (`tasks`), the sharded run (`runner`), reports and plots (`report`), and the
decoding-order analyses (`analysis`). The command line lives in `justgrpo_trl.eval`."""

from .runner import EvalConfig, EvalResult, evaluate, merge_shards, shard_indices
from .tasks import TASKS, Grader, Problem, load_problems

__all__ = [
    "TASKS",
    "EvalConfig",
    "EvalResult",
    "Grader",
    "Problem",
    "evaluate",
    "load_problems",
    "merge_shards",
    "shard_indices",
]
