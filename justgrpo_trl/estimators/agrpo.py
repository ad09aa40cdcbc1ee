"""AGRPO: block-diffusion rollouts, each token scored in the partly masked state the sampler unmasked it in.

The trajectory log-prob is the sum over denoising steps of the log-probs of the tokens unmasked at that step. Per
update, `agrpo_num_steps` steps of each trajectory are sampled (stratified), their states rebuilt from the recorded
unmasking order and scored exactly; the estimate is importance-weighted so that its gradient is unbiased for the
full-trajectory gradient. TRL's clipped ratio is taken against the log-probs the sampler recorded.

`agrpo_objective='reference'` trains the AGRPO authors' objective instead of TRL's normaliser: the rollout hands TRL
the whole canvas (`decodes_past_stop`; the rewards still see each completion up to its first stop token), and each
row's clipped per-token terms are averaged over its denoising steps: weight `1 / (T + 1) / num_generations` on every
token unmasked at a step `<= T`, `T` being the last step that unmasked a token other than the end-of-text fill, 0 on
the later ones. As for JustGRPO's paper objective, the weights are applied by scaling each token's advantage by
`reference weight / loss_type weight` (the clipped term is positively homogeneous in the advantage).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from ..chunked_backward import CLIPPED_LOSS_TYPES
from ..decoding import DecodeOutput
from .base import ROW_INDEX_KEY, BlockRolloutEstimator, LogProbs, ModelRun, ScoringBatch, recorded
from .scoring import ar_canvases, exact_logps

if TYPE_CHECKING:
    from ..config import JustGRPOConfig


def stratified_step_weights(steps: list[int], k: int, generator: torch.Generator | None = None) -> dict[int, float]:
    """AGRPO's step sampling: split a trajectory's distinct denoising steps (in order) into `k` strata of near-equal
    size and draw one step uniformly from each. Returns `{chosen step: 1 / inclusion probability}` (the stratum's
    size), so that summing weighted per-step terms over the chosen steps is unbiased for the sum over all steps.
    With `k >= len(steps)` every step is chosen with weight 1."""
    distinct = sorted(set(steps))
    if k >= len(distinct):
        return dict.fromkeys(distinct, 1.0)
    base, extra = divmod(len(distinct), k)
    weights, start = {}, 0
    for stratum in range(k):
        size = base + (stratum < extra)
        pick = int(torch.randint(size, (1,), generator=generator))
        weights[distinct[start + pick]] = float(size)
        start += size
    return weights


def entropy_step_weights(
    steps: list[int], entropies: list[float], k: int, generator: torch.Generator | None = None
) -> dict[int, float]:
    """The AGRPO authors' step sampler: `k` draws, with replacement, of a trajectory's distinct denoising steps with
    probability proportional to the summed sampling entropy of the tokens unmasked at each step (plus 1e-8), by the
    inverse CDF of low-discrepancy uniforms `(permutation + U[0, 1)) / k`. Returns `{drawn step: times drawn /
    (k p_step)}`, so that summing weighted per-step terms over the drawn steps is unbiased for the sum over all
    steps. (The reference draws its low-discrepancy uniforms over the whole batch at once; here per trajectory.)"""
    distinct = sorted(set(steps))
    mass = torch.full((len(distinct),), 1e-8, dtype=torch.float64)
    index = {step: i for i, step in enumerate(distinct)}
    for step, entropy in zip(steps, entropies):
        mass[index[step]] += max(float(entropy), 0.0)
    probs = mass / mass.sum()
    u = (torch.randperm(k, generator=generator).double() + torch.rand(k, generator=generator, dtype=torch.float64)) / k
    drawn = torch.searchsorted(probs.cumsum(0), u).clamp(max=len(distinct) - 1).tolist()
    weights: dict[int, float] = {}
    for i in drawn:
        weights[distinct[i]] = weights.get(distinct[i], 0.0) + 1.0 / (k * float(probs[i]))
    return weights


class AGRPO(BlockRolloutEstimator):
    """Trajectory log-probs in the sampler's own order, `agrpo_num_steps` sampled steps per update."""

    name = "agrpo"
    requires_sampling_logprobs = True  # the clipped ratio is taken against the sampler's log-probs

    @classmethod
    def check_config(cls, args: JustGRPOConfig) -> None:
        super().check_config(args)
        if args.beta != 0.0:
            raise ValueError("estimator='agrpo' scores sampled steps only and has no KL term: set beta=0.")
        if args.agrpo_step_sampler not in ("stratified", "entropy"):
            raise ValueError(f"agrpo_step_sampler must be 'stratified' or 'entropy', got {args.agrpo_step_sampler!r}.")
        if args.agrpo_objective == "reference" and (
            args.loss_type not in CLIPPED_LOSS_TYPES or args.importance_sampling_level != "token"
        ):
            raise ValueError(
                "agrpo_objective='reference' needs a clipped token-level loss (loss_type in "
                f"{CLIPPED_LOSS_TYPES}, importance_sampling_level='token'); its normaliser is replaced."
            )

    @property
    def decodes_past_stop(self) -> bool:
        return self.context.args.agrpo_objective == "reference"

    def rollout(self, model, prompt_ids: list[list[int]], temperature: float) -> DecodeOutput:
        """The block decoder's rollout; under the reference objective, each completion is the whole canvas."""
        output = super().rollout(model, prompt_ids, temperature)
        if not self.decodes_past_stop:
            return output
        output = replace(
            output,
            completion_ids=output.canvas_ids,
            logprobs=output.canvas_logprobs,
            entropies=output.canvas_entropies,
            unmask_steps=output.canvas_steps,
        )
        self.records.store(prompt_ids, output)
        return output

    def reference_token_weights(self, completion_ids: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """The reference objective's `[B, T]` weights: `1 / (T_b + 1) / num_generations` on the tokens unmasked at a
        step `<= T_b`, `T_b` the last step of row b that unmasked a token other than the end-of-text fill."""
        fill = completion_ids == self.context.tokens.pad_id
        last = steps.masked_fill(fill, -1).max(-1).values
        weights = (steps >= 0) & (steps <= last[:, None])
        return weights.float() / (last[:, None].clamp(min=0) + 1).float() / self.context.args.num_generations

    def loss_inputs(self, inputs: dict[str, Any], iteration: int) -> dict[str, Any]:
        """Under the reference objective, each token's advantage scaled by `reference weight / loss_type weight`."""
        inputs = super().loss_inputs(inputs, iteration)
        if self.context.args.agrpo_objective != "reference":
            return inputs
        completion_ids, mask = inputs["completion_ids"], inputs["completion_mask"].float()
        rows = inputs[ROW_INDEX_KEY].tolist()
        steps = [self.records[row]["canvas_steps"] for row in rows]
        steps = torch.tensor(steps, device=completion_ids.device)[:, : completion_ids.size(1)]
        target = self.reference_token_weights(completion_ids, steps) * mask
        trl = self.context.loss_weights(inputs) * mask
        ratio = torch.where(trl > 0, target / trl.clamp(min=torch.finfo(trl.dtype).tiny), 0.0)
        advantages = inputs["advantages"]
        advantages = advantages[:, None] if advantages.dim() == 1 else advantages
        return {**inputs, "advantages": advantages * ratio.to(advantages.dtype)}

    def _trajectory(self, records: list[dict | None]) -> dict[str, torch.Tensor]:
        width, device = self.context.args.max_completion_length, self.context.device
        return {
            "canvas_ids": recorded(records, "canvas_ids", width, device, dtype=torch.long),
            "unmask_steps": recorded(records, "canvas_steps", width, device, dtype=torch.long, fill=-1),
        }

    def logps(self, run: ModelRun, batch: ScoringBatch) -> LogProbs:
        """With gradient: the sampled-steps estimate. Without (evaluation): the exact trajectory log-probs, every
        step scored."""
        records = self.recorded_rows(batch)
        if torch.is_grad_enabled():
            return self._sampled_steps_logps(run, batch, records)
        canvases = ar_canvases(self.context, batch, trajectory=self._trajectory(records))
        return exact_logps(self.context, run, canvases, batch.temperature)

    def _sampled_steps_logps(self, run: ModelRun, batch: ScoringBatch, records: list[dict | None]) -> LogProbs:
        """Sample `agrpo_num_steps` denoising steps per trajectory (`agrpo_step_sampler`: stratified uniform, or
        entropy-weighted with replacement), score the tokens unmasked at those steps in the state the sampler saw them
        in, with gradient weight 1 / inclusion probability (times drawn / expected draws); every other token keeps its
        constant sampling log-prob. The gradient is unbiased for the full-trajectory gradient."""
        args, device = self.context.args, self.context.device
        completion_mask = batch.completion_mask
        steps = recorded(records, "canvas_steps", args.max_completion_length, device, dtype=torch.long, fill=-1)
        entropies = recorded(records, "entropies", args.max_completion_length, device)
        weights = torch.zeros(completion_mask.shape, device=completion_mask.device)
        for row, length in enumerate(completion_mask.sum(1).tolist()):
            row_steps = steps[row, :length].tolist()
            if args.agrpo_step_sampler == "entropy":
                chosen = entropy_step_weights(row_steps, entropies[row, :length].tolist(), args.agrpo_num_steps)
            else:
                chosen = stratified_step_weights(row_steps, args.agrpo_num_steps)
            weights[row, :length] = torch.tensor([chosen.get(step, 0.0) for step in row_steps])
        selected = (weights > 0) & completion_mask.bool()
        canvases = ar_canvases(self.context, batch, selected.long(), trajectory=self._trajectory(records))
        logps, entropies = exact_logps(self.context, run, canvases, batch.temperature)
        sampling = recorded(records, "logprobs", completion_mask.size(1), device)
        weighted = weights * logps + (1 - weights) * logps.detach()  # value log p, gradient weight * grad log p
        return torch.where(selected, weighted, sampling + 0.0 * logps), entropies
