"""What keeps a long run alive and its checkpoints trustworthy: guarded reward functions, non-finite gradient and
loss handling, and checkpoints that only appear once complete.

The trainer wires these in; each piece is small and testable on its own.
"""

import inspect
import math
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps

import torch
from transformers.utils import logging
from trl.trainer.utils import RepeatSampler

logger = logging.get_logger(__name__)

REWARD_ERROR_POLICIES = ("raise", "skip")
STAGING_PREFIX = "tmp-checkpoint"


class RewardFunctionError(RuntimeError):
    """A reward function failed on a row; the message names the function, the row and the fix."""


def _row_kwargs(kwargs: dict, row: int, batch: int) -> dict:
    """The arguments of one row: every per-row list is sliced, everything else (trainer_state, ...) is passed as is."""
    return {k: [v[row]] if isinstance(v, list) and len(v) == batch else v for k, v in kwargs.items()}


def guard_reward_function(func: Callable, on_error: str, failures: Counter) -> Callable:
    """Wrap a synchronous reward function so a failure is either reported precisely or contained.

    On an exception the batch is re-run row by row to find the rows at fault. With `on_error="raise"` the error
    names the function and the first failing row; with `"skip"` those rows score `None` (TRL ignores them in the
    advantage) and `failures[name]` counts them. A wrong number of values, or a value that is not a finite number
    or `None`, is treated the same way.
    """
    if on_error not in REWARD_ERROR_POLICIES:
        raise ValueError(f"reward_errors must be one of {REWARD_ERROR_POLICIES}, got {on_error!r}.")
    name = getattr(func, "__name__", type(func).__name__)

    def check(values, batch: int) -> list:
        if not isinstance(values, (list, tuple)) or len(values) != batch:
            count = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
            raise RewardFunctionError(
                f"Reward function {name!r} returned {count} values for {batch} completions; it must return a list "
                "with one float (or None) per completion."
            )
        for row, value in enumerate(values):
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise RewardFunctionError(
                    f"Reward function {name!r} returned {value!r} for row {row}; rewards must be finite numbers, or "
                    "None for a row it cannot judge."
                )
        return list(values)

    @wraps(func)
    def guarded(*args, **kwargs):
        batch = len(kwargs["completions"])
        try:
            return check(func(*args, **kwargs), batch)
        except Exception as batch_error:  # noqa: BLE001  (the per-row pass below says which row and why)
            values = []
            for row in range(batch):
                try:
                    values.append(check(func(**_row_kwargs(kwargs, row, batch)), 1)[0])
                except Exception as error:  # noqa: BLE001
                    if on_error == "raise":
                        raise RewardFunctionError(
                            f"Reward function {name!r} failed on row {row} of the batch (prompt "
                            f"{str(kwargs['prompts'][row])[:200]!r}): {type(error).__name__}: {error}. Fix the "
                            "function, or set `reward_errors='skip'` to score such rows None and go on."
                        ) from error
                    failures[name] += 1
                    values.append(None)
            if on_error == "raise":  # every row passed alone: the batch call itself is at fault
                message = f"Reward function {name!r} failed on the batch but on no row alone: {batch_error}"
                raise RewardFunctionError(message) from batch_error
            return values

    return guarded


def guard_reward_functions(funcs, on_error: str, failures: Counter) -> list:
    """Guard every plain synchronous function; reward models and async functions are left to TRL."""
    funcs = funcs if isinstance(funcs, list) else [funcs]
    guarded = []
    for func in funcs:
        plain = callable(func) and not isinstance(func, (str, torch.nn.Module))
        if plain and not inspect.iscoroutinefunction(func):
            func = guard_reward_function(func, on_error, failures)
        guarded.append(func)
    return guarded


@torch.no_grad()
def zero_nonfinite_gradients(parameters: Iterator[torch.nn.Parameter]) -> int:
    """Replace NaN/inf gradient entries by 0 in place; return how many there were."""
    count = 0
    for param in parameters:
        if param.grad is not None:
            bad = ~torch.isfinite(param.grad)
            if bad.any():
                count += int(bad.sum())
                param.grad.masked_fill_(bad, 0.0)
    return count


@contextmanager
def staged_checkpoint_names(*modules) -> Iterator[None]:
    """Make transformers (and TRL) write `tmp-checkpoint-N` instead of `checkpoint-N` for the duration."""
    saved = [(module, module.PREFIX_CHECKPOINT_DIR) for module in modules]
    try:
        for module, _ in saved:
            module.PREFIX_CHECKPOINT_DIR = STAGING_PREFIX
        yield
    finally:
        for module, prefix in saved:
            module.PREFIX_CHECKPOINT_DIR = prefix


def _fsync_tree(path: str) -> None:
    for directory, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(directory, name), "rb") as handle:
                os.fsync(handle.fileno())
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def publish_checkpoint(staging: str, final: str) -> None:
    """Flush a fully written staging directory to disk, then rename it into place (one atomic `rename`)."""
    _fsync_tree(staging)
    if os.path.isdir(final):  # a re-save of the same step (e.g. after a resume) replaces the old one
        shutil.rmtree(final)
    os.replace(staging, final)
    descriptor = os.open(os.path.dirname(os.path.abspath(final)), os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class EpochSeededRepeatSampler(RepeatSampler):
    """TRL's `RepeatSampler` whose shuffle depends only on (seed, epoch).

    TRL's sampler draws each epoch's order from one generator that advances across epochs, so a run resumed in a
    later epoch replays the first epoch's order. transformers calls `set_epoch` at every epoch start (resumes
    included), which here reseeds the generator: the resumed run sees exactly the prompts the uninterrupted run saw.
    """

    def set_epoch(self, epoch: int) -> None:
        if self.shuffle and self.seed is not None:
            self.generator.manual_seed(self.seed + epoch)
