"""What keeps a long run alive and its checkpoints trustworthy: guarded reward functions, non-finite gradient and
loss handling, a resumable prompt order, and checkpoints that only appear once complete.

Each piece is small and testable on its own; `RunReliabilityMixin` wires them into a `GRPOTrainer` subclass through
the Trainer's own hooks (sampler, training step, optimizer, logging, checkpoint saving), so the trainer that
inherits it carries none of this code.
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
import transformers.trainer
import trl.trainer.grpo_trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
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
    if funcs is None:
        return []  # TRL then says "No reward source provided"
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


def publish_on_every_machine(
    staging: str, final: str, process_index: int, local_process_index: int, barrier: Callable[[], None]
) -> bool:
    """Publish a checkpoint every process has finished writing to `staging`, on shared and on per-machine disks.

    The first process publishes first. Where `output_dir` is not shared storage, the other machines' processes wrote
    their part (under DeepSpeed, their ZeRO partitions) to a `staging` of their own disk, which that publish did not
    touch: each machine's first process then publishes the one it still sees. On shared storage nothing is left to
    see by then, so nothing is published twice. Every process must call this (it holds barriers). Returns whether
    this process published a machine's own staging directory (the disk is then not shared with the first process).
    """
    barrier()  # every part written
    if process_index == 0:
        publish_checkpoint(staging, final)
    barrier()  # the first publish is done: on shared storage `staging` is gone everywhere
    local = process_index != 0 and local_process_index == 0 and os.path.isdir(staging)
    if local:
        publish_checkpoint(staging, final)
    barrier()  # every machine's checkpoint is in place before any process goes on (or resumes from it)
    return local


class EpochSeededRepeatSampler(RepeatSampler):
    """TRL's `RepeatSampler` whose shuffle depends only on (seed, epoch).

    TRL's sampler draws each epoch's order from one generator that advances across epochs, so a run resumed in a
    later epoch replays the first epoch's order. transformers calls `set_epoch` at every epoch start (resumes
    included), which here reseeds the generator: the resumed run sees exactly the prompts the uninterrupted run saw.
    """

    def set_epoch(self, epoch: int) -> None:
        if self.shuffle and self.seed is not None:
            self.generator.manual_seed(self.seed + epoch)


class RunReliabilityMixin:
    """Run health for a `GRPOTrainer` subclass (put it first among the bases).

    * reward functions guarded (`reward_errors`): a failure names the function and the row, or is contained;
    * a non-finite micro-batch loss on any process cancels the optimizer step on every process
      (`skip_nonfinite_loss_steps`), and non-finite gradient entries are zeroed before clipping
      (`zero_nonfinite_grads`);
    * the counters of both, and of reward failures, logged summed over processes;
    * a prompt order that depends only on (seed, epoch), so a resumed run replays the uninterrupted one;
    * checkpoints written under `tmp-checkpoint-N` and renamed to `checkpoint-N` once complete.
    """

    def _init_run_health(self, reward_funcs, args) -> list:
        """Set the counters up and return the guarded reward functions; call before `GRPOTrainer.__init__`."""
        self._reward_failures: Counter = Counter()
        self._nonfinite_grad_elements = 0
        self._skipped_steps = 0
        self._skip_optimizer_step = False
        reward_funcs = guard_reward_functions(reward_funcs, args.reward_errors, self._reward_failures)
        self._guarded_reward_names = list(dict.fromkeys(f.__name__ for f in reward_funcs if hasattr(f, "__wrapped__")))
        return reward_funcs

    def _get_train_sampler(self, dataset=None):
        """TRL's prompt sampler, made resumable: each epoch's order depends only on (seed, epoch)."""
        sampler = super()._get_train_sampler(dataset)
        sampler.__class__ = EpochSeededRepeatSampler
        return sampler

    def training_step(self, model, inputs, num_items_in_batch):
        """TRL's step, then: agree across processes whether this micro-batch's loss was finite (a non-finite one
        cancels the optimizer step), and zero non-finite gradient entries before clipping."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.is_deepspeed_enabled:
            return loss
        if self.args.skip_nonfinite_loss_steps:
            nonfinite = torch.tensor(float(not torch.isfinite(loss).all()), device=self.accelerator.device)
            if self.accelerator.reduce(nonfinite, reduction="sum").item() > 0:
                self._skip_optimizer_step = True
        if self.args.zero_nonfinite_grads:
            self._nonfinite_grad_elements += zero_nonfinite_gradients(model.parameters())
        return loss

    def create_optimizer(self, *args, **kwargs):
        """The usual optimizer, whose `step` is skipped for an accumulation window that saw a non-finite loss."""
        optimizer = super().create_optimizer(*args, **kwargs)
        if self.is_deepspeed_enabled or getattr(optimizer, "_justgrpo_guarded", False):
            return optimizer
        step = optimizer.step

        def guarded_step(*step_args, **step_kwargs):
            if self._skip_optimizer_step:
                self._skip_optimizer_step = False
                self._skipped_steps += 1
                logger.warning(f"Skipped optimizer step {self.state.global_step + 1}: a loss was not finite.")
                return None
            return step(*step_args, **step_kwargs)

        optimizer.step = guarded_step
        optimizer._justgrpo_guarded = True
        return optimizer

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """TRL's logging, plus the run-health counters (summed over processes, cumulative)."""
        if self.model.training:
            names = self._guarded_reward_names  # the same list on every process, so the reduce lines up
            counts = [self._nonfinite_grad_elements, self._skipped_steps, *(self._reward_failures[n] for n in names)]
            totals = self.accelerator.reduce(torch.tensor(counts, dtype=torch.float64, device=self.accelerator.device))
            logs["nonfinite_grad_elements"] = totals[0].item()
            logs["skipped_steps"] = totals[1].item()
            for name, total in zip(names, totals[2:].tolist()):
                logs[f"reward_failures/{name}"] = total
        super().log(logs, start_time)

    def _save_checkpoint(self, model, trial):
        """Write the checkpoint under `tmp-checkpoint-N`, then rename it to `checkpoint-N` once complete, so a crash
        while saving never leaves a directory that `--resume_from_checkpoint` would take for a checkpoint; on every
        machine whose `output_dir` is its own disk, too (`publish_on_every_machine`)."""
        run_dir = self._get_output_dir(trial=trial)
        step = self.state.global_step
        staging = os.path.join(run_dir, f"{STAGING_PREFIX}-{step}")
        final = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")
        with staged_checkpoint_names(transformers.trainer, trl.trainer.grpo_trainer):
            super()._save_checkpoint(model, trial)
        own_disk = publish_on_every_machine(
            staging, final, self.args.process_index, self.args.local_process_index, self.accelerator.wait_for_everyone
        )
        if own_disk and not self.args.save_on_each_node and not getattr(self, "_warned_unshared_output_dir", False):
            self._warned_unshared_output_dir = True
            logger.warning(
                f"output_dir is not shared with the first machine: {final} on this machine holds only what its own "
                "processes wrote (e.g. their ZeRO partitions). To resume from per-machine disks, set "
                "save_on_each_node=True (and DeepSpeed's checkpoint.use_node_local_storage=true) so that every "
                "machine also has the model, trainer state and DeepSpeed's `latest` tag (docs/engines.md#multi-node)."
            )
        if self.state.best_model_checkpoint == staging:
            self.state.best_model_checkpoint = final
