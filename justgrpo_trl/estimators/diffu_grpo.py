"""diffu-GRPO (d1): block-diffusion rollouts; every completion token's log-prob read from one forward of its row with
the completion fully masked and each prompt token masked with probability `p_mask_prompt`.

The prompt-mask pattern is drawn from one seed per inner iteration (`num_iterations`), shared by the old, current
and reference log-probs of that iteration. In TRL's old/reference passes right after a rollout, the log-probs under
every iteration's seed are computed and handed to TRL as `[B, mu, T]` tensors, which it splits with the batch;
`compute_loss` then swaps in those of the iteration being trained.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from ..collators import one_step_canvas
from ..decoding import DecodeOutput
from .base import BlockRolloutEstimator, EstimatorContext, LogProbs, ModelRun, ScoringBatch
from .scoring import score_one_step

PER_ITERATION_KEYS = ("old_per_token_logps", "ref_per_token_logps")  # the order TRL computes them in


class DiffuGRPO(BlockRolloutEstimator):
    """d1's one-step estimator, with a fresh prompt mask per inner iteration."""

    name = "diffu_grpo"

    def __init__(self, context: EstimatorContext) -> None:
        super().__init__(context)
        self.seeds: list[int] = [0]
        self.iteration = 0
        self.stash: list[torch.Tensor] = []

    @property
    def sampling_logprobs_exact(self) -> bool:
        return False  # the sampler's log-probs are not the one-step estimate's

    def rollout(self, model, prompt_ids: list[list[int]], temperature: float) -> DecodeOutput:
        output = super().rollout(model, prompt_ids, temperature)
        self.seeds = torch.randint(0, 2**31 - 1, (self.context.args.num_iterations,)).tolist()
        return output

    def logps(self, run: ModelRun, batch: ScoringBatch) -> LogProbs:
        args, tokens = self.context.args, self.context.tokens
        width = batch.prompt_width
        rows_per_forward = max(1, args.logprob_chunk_size // 4)
        num_forwards = self.context.sync_forward_count(-(-batch.input_ids.size(0) // rows_per_forward))
        completion_mask = batch.completion_mask.bool()

        def under_seed(seed: int) -> LogProbs:
            canvas, canvas_mask = one_step_canvas(
                batch.input_ids[:, :width],
                batch.attention_mask[:, :width],
                args.max_completion_length,
                tokens.mask_id,
                args.p_mask_prompt,
                torch.Generator().manual_seed(seed),
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

        if not torch.is_grad_enabled() and batch.training and args.num_iterations > 1:
            per_seed = [under_seed(seed) for seed in self.seeds]
            self.stash.append(torch.stack([logps for logps, _ in per_seed], dim=1))  # [B, mu, T]
            return per_seed[0]
        return under_seed(self.seeds[self.iteration])

    def start_generation_batch(self) -> None:
        self.stash, self.iteration = [], 0

    def finish_generation_batch(self, output: dict[str, Any]) -> dict[str, Any]:
        stash = list(self.stash)
        for key in PER_ITERATION_KEYS:
            if stash and output.get(key) is not None:
                output[f"{key}_per_iteration"] = stash.pop(0)
        return output

    def loss_inputs(self, inputs: dict[str, Any], iteration: int) -> dict[str, Any]:
        """The current inner iteration's old/ref log-probs; the scoring that follows uses that iteration's masks."""
        self.iteration = iteration
        inputs = dict(inputs)
        for key in PER_ITERATION_KEYS:
            if f"{key}_per_iteration" in inputs:
                inputs[key] = inputs[f"{key}_per_iteration"][:, iteration]
        return inputs
