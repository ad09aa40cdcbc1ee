"""The estimator protocol: what a method of RL on diffusion LMs supplies to the trainer, and what it is lent.

A method (JustGRPO, diffu-GRPO, AGRPO, ...) differs from the others in four places only:

1. how rollouts are sampled, and what the sampler records for later (`Estimator.rollout`);
2. how the per-token log-probs of a sampled completion are computed from the model (`Estimator.logps`), and, where
   they are sums over packed canvases, which canvases and per-token weights the loss uses (`Estimator.plan`);
3. any per-generation-batch state (`start_generation_batch`, `finish_generation_batch`);
4. any change to TRL's loss: an adjustment of its inputs, or an objective of its own (`Estimator.compute_loss`).

Everything else (rewards, advantages, TRL's loss types, KL, logging) is TRL's. A strategy imports nothing of the
trainer: it receives an `EstimatorContext` once (the config, the special tokens, the device and the collective
helpers), and, per call, the wrapped model call (`run`) and the batch. That keeps the import graph one-way:
trainer -> estimators -> decoding/collators -> model.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..collators import ARScoringCanvases
from ..decoding import DecodeOutput, SamplingFilter, block_decode, cut_at_stop
from ..models import SpecialTokens

if TYPE_CHECKING:
    from ..cache_correction import ImportanceCorrection
    from ..config import JustGRPOConfig

# `run(function, *args)` calls `function(unwrapped_module, *args)` inside one forward of the DDP/DeepSpeed/FSDP
# wrapper, however many forwards of the module `function` makes.
ModelRun = Callable[..., Any]
LogProbs = tuple[torch.Tensor, torch.Tensor]  # per-token log-probs and entropies, `[B, T]`


@dataclass
class EstimatorContext:
    """What the trainer lends a strategy once, at construction.

    Attributes:
        args: the trainer's `JustGRPOConfig` (read live: tests and callbacks may change it).
        tokens: the model family's special tokens (mask, stop, pad ids, logit shift).
        device: where per-row records become tensors.
        autocast: the accelerator's autocast context (bf16/fp16 forwards).
        sync_forward_count: the largest forward count over the ranks that must run as many forwards (ZeRO-3 and FSDP
            gather parameters collectively in every forward); the identity elsewhere.
        high_entropy_mask: TRL's `get_high_entropy_mask(entropies, mask, threshold)`.
        rollout_all_done: for samplers whose forward count depends on the data (early exit): given whether this
            process is done, whether every process that must run as many forwards is; None where forwards are not
            collective.
        gather: the accelerator's `gather` (concatenates a tensor over processes; the identity on one).
        loss_weights: `[B, T]` weight of each token's term in TRL's loss for a micro-batch's inputs (its
            `loss_type` normaliser, `chunked_backward.loss_weights`), for estimators that reweight it.
        policy_logps: `[B, T]` log-probs of a micro-batch's completions under the current policy (with gradient in
            training), scored once per micro-batch: TRL's `_compute_loss` reuses them.
        log_metric: appends a value to one of TRL's logged metrics (train or eval, as the model's mode says).
    """

    args: JustGRPOConfig
    tokens: SpecialTokens
    device: torch.device
    autocast: Callable[[], AbstractContextManager]
    sync_forward_count: Callable[[int], int]
    high_entropy_mask: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
    gather: Callable[[torch.Tensor], torch.Tensor] = lambda tensor: tensor
    loss_weights: Callable[[dict[str, Any]], torch.Tensor] | None = None
    rollout_all_done: Callable[[bool], bool] | None = None
    policy_logps: Callable[[dict[str, Any]], torch.Tensor] | None = None
    log_metric: Callable[[str, float], None] = lambda name, value: None


@dataclass(frozen=True)
class ScoringBatch:
    """One TRL scoring call: `[prompt | completion]` ids and mask, the prompt's width, TRL's temperature, and whether
    the policy is in training mode (TRL's old/reference passes run without gradient in training mode)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_width: int
    temperature: float
    training: bool

    @classmethod
    def from_inputs(cls, inputs: dict[str, Any], temperature: float, training: bool) -> ScoringBatch:
        """The scoring batch of one of TRL's micro-batches (its prompt and completion ids and masks)."""
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        return cls(input_ids, attention_mask, inputs["prompt_ids"].size(1), temperature, training)

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_width :]

    @property
    def completion_mask(self) -> torch.Tensor:
        return self.attention_mask[:, self.prompt_width :]


@dataclass
class ScoringPlan:
    """The packed canvases of a batch whose loss is a sum of per-token terms, as the chunked backward needs it.

    Attributes:
        canvases: the (row, position) pairs to score, packed in chunks.
        entropies: `[B, T]` entropies to report instead of the scored ones (JustGRPO-Fast: the rollout's), or None.
        policy_mask: `[B, T]` multiplier of the policy term (JustGRPO-Fast's entropy mask), or None.
        token_weights: `[B, T]` per-token loss weights replacing the loss type's normaliser, or None for TRL's.
    """

    canvases: ARScoringCanvases
    entropies: torch.Tensor | None = None
    policy_mask: torch.Tensor | None = None
    token_weights: torch.Tensor | None = None


def pad_lists(rows: list[list], width: int, device, dtype=torch.float32, fill=0) -> torch.Tensor:
    """Per-row lists cut or right-padded into a `[B, width]` tensor on `device`."""
    out = torch.full((len(rows), width), fill, dtype=dtype)
    for index, row in enumerate(rows):
        out[index, : len(row[:width])] = torch.tensor(row[:width], dtype=dtype)
    return out.to(device)


ROW_INDEX_KEY = "rollout_row_index"  # each row's index in its rollout, carried with the row through TRL's shuffle


class RolloutRecords:
    """What the last rollout recorded per completion (entropies, log-probs, a parallel sampler's trajectory), kept
    per row, in the rollout's order, and found again by row, never by text: two identical completions of one prompt
    keep their own records (a parallel sampler may have unmasked them in different orders).

    TRL scores a rollout twice: right after it (old/reference log-probs, rows in the rollout's order) and per
    micro-batch in the loss (rows shuffled and split). The estimator puts each row's rollout index in TRL's generation
    output (`ROW_INDEX_KEY`), and `select`s a micro-batch's indices before its loss is computed.
    """

    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] = []
        self._selected: list[int] | None = None

    def store(self, prompt_ids: list[list[int]], output: DecodeOutput) -> None:
        self._selected = None
        self._rows = [
            {
                "prompt": tuple(prompt),
                "completion": tuple(output.completion_ids[i]),
                "entropies": output.entropies[i],
                "logprobs": output.logprobs[i],
                "canvas_ids": output.canvas_ids[i] if output.canvas_ids else None,
                "canvas_steps": output.canvas_steps[i] if output.canvas_steps else None,
            }
            for i, prompt in enumerate(prompt_ids)
        ]

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._rows[index]

    def select(self, indices: torch.Tensor | None) -> None:
        """The rollout indices of the rows of the micro-batch scored next (None: the rollout's own order)."""
        self._selected = None if indices is None else [int(i) for i in indices.tolist()]

    def rows(self, batch: ScoringBatch, who: str) -> list[dict | None]:
        """The record of each row of `batch` (None for rows with nothing to score); `who` names the estimator in the
        error raised for a row this rollout did not sample."""
        width, size = batch.prompt_width, batch.input_ids.size(0)
        if self._selected is not None and len(self._selected) == size:
            indices = self._selected
        elif size == len(self._rows):
            indices = list(range(size))
        else:
            indices = [None] * size
        lengths = batch.completion_mask.sum(1).tolist()
        records = []
        for index, ids, mask, length in zip(indices, batch.input_ids.tolist(), batch.attention_mask.tolist(), lengths):
            if not length:
                records.append(None)
                continue
            prompt = tuple(t for t, m in zip(ids[:width], mask[:width]) if m)
            record = self._rows[index] if index is not None else None
            if record is None or (record["prompt"], record["completion"]) != (
                prompt,
                tuple(ids[width : width + length]),
            ):
                raise RuntimeError(
                    f"{who} needs what the rollout recorded, but this completion was not sampled by this trainer's "
                    "rollout (or its row cannot be matched with the rollout's)."
                )
            records.append(record)
        return records


def recorded(records: list[dict | None], name: str, width: int, device, dtype=torch.float32, fill=0) -> torch.Tensor:
    """One recorded per-token list per row (empty for rows without a record) as a `[B, width]` tensor."""
    return pad_lists([[] if r is None else r[name] for r in records], width, device, dtype=dtype, fill=fill)


class Estimator:
    """Base class of the strategies. Subclasses set `name` and implement `rollout` and `logps`.

    Class attributes:
        name: the `JustGRPOConfig.estimator` value that selects it.
        chunkable: its loss is a sum of per-token terms over `plan`'s canvases, so the trainer may backpropagate
            it chunk by chunk (`chunked_backward.py`).
        requires_sampling_logprobs: the objective needs the sampler's log-probs as TRL's old log-probs, whatever
            `reuse_sampling_logprobs` says (AGRPO clips against them).
    """

    name: ClassVar[str]
    chunkable: ClassVar[bool] = False
    requires_sampling_logprobs: ClassVar[bool] = False
    # The importance correction of an approximate sampler's tokens (`cache_correction.py`), read by the chunked
    # backward too; None: the rollout samples from the policy itself.
    correction: ImportanceCorrection | None = None

    def __init__(self, context: EstimatorContext) -> None:
        self.context = context
        self.records = RolloutRecords()
        self._past_stop: tuple[list[list[int]], list[list[float]]] | None = None
        self._sampling_logps: tuple[list[list[float]], list[list[int]]] | None = None

    @classmethod
    def check_config(cls, args: JustGRPOConfig) -> None:
        """Refuse option combinations this estimator cannot honour (called by `estimator_for`, from the trainer,
        before any model is loaded)."""

    @property
    def decodes_past_stop(self) -> bool:
        """Whether rollouts return (and the loss trains) every slot of the canvas, past the first stop token. TRL
        then decodes and rewards each completion up to its first stop token only (`completions_for_trl`,
        `restore_past_stop`, `rewarded_ids`)."""
        return False

    def completions_for_trl(self, output: DecodeOutput) -> tuple[list[list[int]], list[list[float]]]:
        """What the trainer's `_generate_single_turn` hands TRL for a rollout: completions and log-probs. Past the stop
        token, each completion up to its first stop token (TRL decodes it into the text the rewards see); the whole
        canvases are kept for `restore_past_stop`."""
        if not self.decodes_past_stop:
            return output.completion_ids, output.logprobs
        self._past_stop = (output.completion_ids, output.logprobs)
        cut = self.rewarded_ids(output.completion_ids)
        return cut, [logps[: len(ids)] for ids, logps in zip(cut, output.logprobs)]

    def restore_past_stop(self, generated: tuple) -> tuple:
        """TRL's `_generate` output, with the whole canvases of a rollout past the stop token swapped back in (for the
        loss) after TRL decoded the text up to the first stop token."""
        past_stop, self._past_stop = self._past_stop, None
        if past_stop is None:
            return generated
        prompt_ids, _, tool_mask, completions, _, *rest = generated
        return (prompt_ids, past_stop[0], tool_mask, completions, past_stop[1], *rest)

    def rewarded_ids(self, completion_ids: list[list[int]]) -> list[list[int]]:
        """The completions the rewards see: what decodes past the first stop token is trained, not rewarded."""
        if not self.decodes_past_stop:
            return completion_ids
        return [cut_at_stop(ids, self.context.tokens.stop_ids) for ids in completion_ids]

    @property
    def sampling_logprobs_exact(self) -> bool:
        """Whether the rollout's recorded log-probs are this estimator's exact log-probs under the sampling weights,
        so that TRL's old-log-prob pass may reuse them. An approximate sampler (a cached rollout) must say False."""
        return True

    def keep_sampling_logps(self, output: DecodeOutput, training: bool) -> None:
        """Keep a training rollout's log-probs for TRL's old-log-prob pass, which then reuses them instead of scoring
        (`take_sampling_logps`), when they are the exact ones and the options ask for it."""
        args = self.context.args
        old_logps_needed = args.gradient_accumulation_steps % (args.steps_per_generation * args.num_iterations) != 0
        reuse = args.reuse_sampling_logprobs or self.requires_sampling_logprobs
        keep = reuse and self.sampling_logprobs_exact and old_logps_needed and training
        self._sampling_logps = (output.logprobs, output.completion_ids) if keep else None

    def take_sampling_logps(self, input_ids: torch.Tensor, width: int) -> torch.Tensor | None:
        """The kept rollout log-probs `[B, width]`, if this call is TRL's old-log-prob pass (no gradient) over exactly
        that rollout; None otherwise. They are handed out once."""
        pending, self._sampling_logps = self._sampling_logps, None
        if pending is None or torch.is_grad_enabled():
            return None
        logps, completions = pending
        if input_ids.size(0) != len(completions):
            return None
        for row, ids in zip(input_ids[:, input_ids.size(1) - width :].tolist(), completions):
            if row[: len(ids)] != ids:
                return None
        return pad_lists(logps, width, self.context.device)

    @property
    def sampling(self) -> SamplingFilter | None:
        """The truncation of the sampling distribution the scorer re-applies (None: the full distribution)."""
        return None

    def rollout(self, model, prompt_ids: list[list[int]], temperature: float) -> DecodeOutput:
        """Sample one completion per prompt with the unwrapped `model` (no gradient, already in autocast) and record
        what `logps` will need."""
        raise NotImplementedError

    def recorded_rows(self, batch: ScoringBatch) -> list[dict | None]:
        """What the last rollout recorded for each row of `batch` (None for rows with nothing to score)."""
        args = self.context.args
        return self.records.rows(batch, who=f"estimator={args.estimator!r} (justgrpo_fast={args.justgrpo_fast})")

    def logps(self, run: ModelRun, batch: ScoringBatch) -> LogProbs:
        """Per-token log-probs and entropies `[B, T]` of the batch's completions, 0 where the completion mask is 0."""
        raise NotImplementedError

    def plan(self, batch: ScoringBatch) -> ScoringPlan:
        """The packed canvases of `batch` and the loss's per-token modifiers (only for `chunkable` estimators)."""
        raise NotImplementedError(f"estimator={self.name!r} is not chunkable.")

    def start_generation_batch(self) -> None:
        """Called before TRL generates and scores a new generation batch."""

    def finish_generation_batch(self, output: dict[str, Any]) -> dict[str, Any]:
        """TRL's generation output, with whatever this estimator adds for its loss (split with the batch by TRL): at
        least each row's rollout index, so that its records are found again by row. Overrides call this."""
        rows = output["completion_ids"].size(0)
        if len(self.records) == rows:
            output[ROW_INDEX_KEY] = torch.arange(rows, device=output["completion_ids"].device)
        return output

    def loss_inputs(self, inputs: dict[str, Any], iteration: int) -> dict[str, Any]:
        """The inputs of TRL's loss for one micro-batch, as this estimator adjusts them (unchanged by default). Both
        loss paths use them: `compute_loss` (checkpointed) and the trainer's chunked backward. Returns a new dict;
        `inputs` is not modified. Overrides call this: it selects the micro-batch's rollout records."""
        self.records.select(inputs.get(ROW_INDEX_KEY))
        return inputs

    def compute_loss(
        self, trl_loss: Callable[[dict[str, Any]], torch.Tensor], inputs: dict[str, Any], iteration: int
    ) -> torch.Tensor:
        """The loss of one micro-batch: TRL's `_compute_loss` (`trl_loss`) on `loss_inputs` by default. `iteration`
        is the inner iteration (of `num_iterations`) being trained. Override to replace the objective."""
        return trl_loss(self.loss_inputs(inputs, iteration))


class BlockRolloutEstimator(Estimator):
    """Base of the methods whose rollouts use LLaDA's semi-AR block decoder (`decoding.block_decode`), recording the
    trajectory (every slot's token and the step it was unmasked at)."""

    @classmethod
    def check_config(cls, args: JustGRPOConfig) -> None:
        args.diffusion_steps = args.diffusion_steps or args.max_completion_length // 2
        truncation = {"top_k": args.top_k or None, "top_p": args.top_p < 1.0 or None, "min_p": args.min_p}
        named = [name for name, value in truncation.items() if value is not None]
        if named:
            raise ValueError(
                f"estimator={cls.name!r} does not apply {', '.join(named)}: its block-decoding rollouts sample from "
                "the full temperature-scaled distribution, and its scoring could not re-apply a truncation decided "
                "in other canvases. Leave top_k=0, top_p=1.0 and min_p=None, or use estimator='ar_exact'."
            )

    def rollout(self, model, prompt_ids: list[list[int]], temperature: float) -> DecodeOutput:
        args = self.context.args
        output = block_decode(
            model,
            prompt_ids,
            block_length=args.block_length,
            steps=args.diffusion_steps,
            remasking=args.remasking,
            gen_length=args.max_completion_length,
            temperature=temperature,
            **self.context.tokens.decode_kwargs(),
        )
        self.records.store(prompt_ids, output)
        return output
