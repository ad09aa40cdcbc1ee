"""diffu-GRPO (d1): block-diffusion rollouts; every completion token's log-prob read from one forward of its row with
the completion fully masked and each prompt token masked with probability `p_mask_prompt`.

As in d1, every row has its own prompt-mask pattern, drawn afresh for every inner iteration (`num_iterations`) and
shared by the old, current and reference log-probs of that row and iteration. The patterns are drawn right after the
rollout, `[B, num_iterations, P]` over the left-padded prompts of the generation batch, and travel with the rows in
TRL's generation output (key `diffu_grpo_prompt_masks`), so TRL's shuffle and split into micro-batches keep each row
with its own patterns. In TRL's old/reference passes right after a rollout, the log-probs under every iteration's
patterns are computed and handed to TRL as `[B, mu, T]` tensors; `loss_inputs` then swaps in those of the iteration
being trained.

A deliberate difference from d1: the scorer divides the logits by `temperature`, as TRL's own scorer does for its
old, current and reference log-probs; d1 scores at temperature 1 whatever it samples at (0.9 in its recipe). With
`temperature: 1.0` the two agree.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from ..collators import draw_prompt_mask_patterns, one_step_canvas
from ..decoding import DecodeOutput
from .base import BlockRolloutEstimator, EstimatorContext, LogProbs, ModelRun, ScoringBatch
from .scoring import score_one_step

PER_ITERATION_KEYS = ("old_per_token_logps", "ref_per_token_logps")  # the order TRL computes them in
PATTERNS_KEY = "diffu_grpo_prompt_masks"


class DiffuGRPO(BlockRolloutEstimator):
    """d1's one-step estimator: one fresh prompt mask per row and inner iteration."""

    name = "diffu_grpo"

    def __init__(self, context: EstimatorContext) -> None:
        super().__init__(context)
        self.patterns: torch.Tensor | None = None  # [B, mu, P] of the last rollout, in its row order
        self.loss_patterns: torch.Tensor | None = None  # [B, P] of the micro-batch being trained
        self.stash: list[torch.Tensor] = []

    @property
    def sampling_logprobs_exact(self) -> bool:
        return False  # the sampler's log-probs are not the one-step estimate's

    def rollout(self, model, prompt_ids: list[list[int]], temperature: float) -> DecodeOutput:
        output = super().rollout(model, prompt_ids, temperature)
        args = self.context.args
        width = max(len(p) for p in prompt_ids)
        self.patterns = draw_prompt_mask_patterns(len(prompt_ids), args.num_iterations, width, args.p_mask_prompt)
        return output

    def _patterns_for(self, batch: ScoringBatch) -> torch.Tensor:
        """`[B, mu, P]` patterns of the batch's rows: the micro-batch's own while training it (one iteration), the
        rollout's for TRL's passes right after it. Refuses a batch whose rows it cannot match."""
        rows, width = batch.input_ids.size(0), batch.prompt_width
        for patterns in (self.loss_patterns, self.patterns):
            if patterns is not None and patterns.size(0) == rows and patterns.size(-1) == width:
                return patterns if patterns.dim() == 3 else patterns[:, None]
        raise RuntimeError(
            "estimator='diffu_grpo' scores each row under the prompt masks drawn for it after the rollout; this batch "
            f"({rows} rows, prompt width {width}) matches neither the rollout nor the micro-batch being trained."
        )

    def logps(self, run: ModelRun, batch: ScoringBatch) -> LogProbs:
        args, tokens = self.context.args, self.context.tokens
        width = batch.prompt_width
        rows_per_forward = max(1, args.logprob_chunk_size // 4)
        num_forwards = self.context.sync_forward_count(-(-batch.input_ids.size(0) // rows_per_forward))
        completion_mask = batch.completion_mask.bool()
        patterns = self._patterns_for(batch)

        def under(pattern: torch.Tensor) -> LogProbs:
            canvas, canvas_mask = one_step_canvas(
                batch.input_ids[:, :width],
                batch.attention_mask[:, :width],
                args.max_completion_length,
                tokens.mask_id,
                pattern,
            )
            score = partial(
                score_one_step,
                prompt_width=width - tokens.logit_shift,
                mask_id=tokens.mask_id,
                temperature=batch.temperature,
                rows_per_forward=rows_per_forward,
                num_forwards=num_forwards,
                autocast=self.context.autocast,
            )
            logps, entropies = run(score, canvas, canvas_mask, batch.completion_ids)
            return logps.masked_fill(~completion_mask, 0.0), entropies.masked_fill(~completion_mask, 0.0)

        if patterns.size(1) > 1 and not torch.is_grad_enabled() and batch.training:
            per_iteration = [under(patterns[:, i]) for i in range(patterns.size(1))]
            self.stash.append(torch.stack([logps for logps, _ in per_iteration], dim=1))  # [B, mu, T]
            return per_iteration[0]
        return under(patterns[:, 0])

    def start_generation_batch(self) -> None:
        self.stash, self.loss_patterns, self.patterns = [], None, None

    def finish_generation_batch(self, output: dict[str, Any]) -> dict[str, Any]:
        output = super().finish_generation_batch(output)
        stash = list(self.stash)
        for key in PER_ITERATION_KEYS:
            if stash and output.get(key) is not None:
                output[f"{key}_per_iteration"] = stash.pop(0)
        if self.patterns is not None:
            output[PATTERNS_KEY] = self.patterns.to(output["completion_ids"].device)
        return output

    def loss_inputs(self, inputs: dict[str, Any], iteration: int) -> dict[str, Any]:
        """The current inner iteration's old/ref log-probs and prompt masks (used by the scoring that follows)."""
        if PATTERNS_KEY in inputs:
            self.loss_patterns = inputs[PATTERNS_KEY][:, iteration]
        inputs = dict(super().loss_inputs(inputs, iteration))
        for key in PER_ITERATION_KEYS:
            if f"{key}_per_iteration" in inputs:
                inputs[key] = inputs[f"{key}_per_iteration"][:, iteration]
        return inputs
