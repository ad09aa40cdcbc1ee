"""JustGRPO's estimator: rollouts in AR order and the exact AR-order log-prob of every trained token.

Rollout: canvas `[prompt | MASK x L]`, one forward per token, each sampled token written into the next slot
(`decoding.ar_decode`). Scoring: token j of a completion is read at position `P + j` of
`[prompt | c_<j | MASK x (L - j)]`, the same canvas the sampler saw, so the log-prob is exact. The (row, position)
pairs are packed in chunks (`collators.ARScoringCanvases`), and the loss over them is a sum of per-token terms, so the
trainer may backpropagate it chunk by chunk.

JustGRPO-Fast (`justgrpo_fast=True`): only the `top_entropy_quantile` highest-entropy positions, chosen from the
entropies the rollout recorded, are scored and trained; the others are never computed.

The objective (`JustGRPOConfig.objective`):

* `'trl'`: TRL's loss with its `loss_type` normaliser, on the tokens up to each completion's first stop token.
* `'paper'`: the reference `grpo.py`. Rollouts decode all L slots (`ar_decode(stop_early=False)`), every slot is
  trained, and token t of sample b weighs `1 / L / n_valid`, `n_valid` being the number of samples with a non-zero
  advantage in the generation batch, per micro-batch, averaged over processes (`finish_generation_batch`). The
  clipped per-token term `-min(r A, clip(r) A)` is positively homogeneous in A, so the paper's weights are applied by
  scaling each row's advantage by `paper weight / loss_type weight` (both constant along a row for the clipped loss
  types): TRL's own `_compute_loss` then computes, and logs, the paper's loss, and the chunked backward sees the same
  terms.
* `'paper_early_stop'`: the same weights on the tokens up to the first stop token, with early-stopping rollouts.
Rollout cache (`rollout_cache`, off by default): approximate rollouts (`cached_decoding.cached_ar_decode`), whose
sampling log-probs are then not the exact ones; each token's policy term is weighted by its importance ratio
(`cache_correction.py`): in `compute_loss` here, and term by term in the chunked backward.

Sampling options (`top_k`, `top_p`, `min_p`) truncate the rollout's distribution, and the scorer applies the same
truncation, so the log-probs trained on are those of the distribution each token was drawn from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..cached_decoding import cached_ar_decode
from ..chunked_backward import CLIPPED_LOSS_TYPES
from ..decoding import DecodeOutput, SamplingFilter, ar_decode
from .base import Estimator, EstimatorContext, LogProbs, ModelRun, ScoringBatch, ScoringPlan, recorded
from .scoring import ar_canvases, exact_logps

if TYPE_CHECKING:
    from ..config import JustGRPOConfig

N_VALID_KEY = "paper_n_valid"  # per-row copy of the generation batch's n_valid, split with the batch by TRL


def paper_token_weights(completion_mask: torch.Tensor, n_valid: torch.Tensor, gen_length: int) -> torch.Tensor:
    """The reference's per-token weight `1 / L / n_valid` on the completion mask `[B, T]` (`n_valid` per row, `[B]`);
    0 where `n_valid` is 0 (every advantage is then 0, and so is the loss). The reference divides by
    `n_valid + 1e-5`; the exact ratio is used here (a relative difference of at most 1e-5 / n_valid)."""
    n_valid = n_valid.float()
    scale = torch.where(n_valid > 0, 1.0 / (gen_length * n_valid.clamp(min=1.0)), torch.zeros_like(n_valid))
    return completion_mask.float() * scale[:, None]


class ARExact(Estimator):
    """JustGRPO (with its Fast variant): exact AR-order rollouts and log-probs."""

    name = "ar_exact"
    chunkable = True

    def __init__(self, context: EstimatorContext) -> None:
        super().__init__(context)
        self.correction = context.args.rollout_cache_correction()  # None: exact rollouts (no cache, or r = 1)

    @classmethod
    def check_config(cls, args: JustGRPOConfig) -> None:
        if args.objective != "trl":
            if args.beta != 0.0 or args.entropy_coef != 0.0 or args.use_adaptive_entropy:
                raise ValueError(
                    f"objective={args.objective!r} reweights the clipped policy term only (the reference has no KL "
                    "and no entropy bonus): set beta=0 and entropy_coef=0."
                )
            if args.loss_type not in CLIPPED_LOSS_TYPES or args.importance_sampling_level != "token":
                raise ValueError(
                    f"objective={args.objective!r} needs a clipped token-level loss (loss_type in "
                    f"{CLIPPED_LOSS_TYPES}, importance_sampling_level='token'); its normaliser is replaced by the "
                    "paper's 1 / L / n_valid."
                )
        if not args.justgrpo_fast:
            return
        if args.top_entropy_quantile >= 1.0:
            raise ValueError("justgrpo_fast needs top_entropy_quantile < 1 (the paper uses 0.25).")
        if args.beta != 0.0 or args.entropy_coef != 0.0 or args.use_adaptive_entropy:
            raise ValueError(
                "justgrpo_fast skips the unselected positions, whose log-probs the KL term and the entropy bonus "
                "would need: set beta=0 and entropy_coef=0 (and use_adaptive_entropy=False), or turn it off."
            )

    def rollout(self, model, prompt_ids: list[list[int]], temperature: float) -> DecodeOutput:
        """The exact AR rollout (`ar_decode`), or with `rollout_cache` the cached one (`cached_ar_decode`)."""
        args, context = self.context.args, self.context
        sampling = dict(top_k=args.top_k or None, top_p=args.top_p, min_p=args.min_p, temperature=temperature)
        sampling.update(gen_length=args.max_completion_length, **context.tokens.decode_kwargs())
        cache = args.rollout_cache_settings()
        if cache is None:
            stop_early = not self.decodes_past_stop
            output = ar_decode(model, prompt_ids, all_done=context.rollout_all_done, stop_early=stop_early, **sampling)
        elif context.rollout_all_done is not None:
            raise ValueError("A rollout cache cannot run with sharded (collective) forwards; set rollout_cache=None.")
        else:
            output = cached_ar_decode(model, prompt_ids, cache=cache, **sampling)
        self.records.store(prompt_ids, output)
        return output

    @property
    def sampling_logprobs_exact(self) -> bool:
        """False with an approximate rollout cache (`rollout_cache`, r > 1): its log-probs are the cached sampler's."""
        cache = self.context.args.rollout_cache_settings()
        return cache is None or cache.exact

    @property
    def sampling(self) -> SamplingFilter | None:
        """The rollout's top-k/top-p/min-p truncation, applied again when scoring (None: the full distribution)."""
        args = self.context.args
        return SamplingFilter.from_options(args.top_k, args.top_p, args.min_p)

    @property
    def decodes_past_stop(self) -> bool:
        return self.context.args.objective == "paper"

    def finish_generation_batch(self, output: dict[str, Any]) -> dict[str, Any]:
        """Under the paper's objectives, the reference's `n_valid`: this process' samples with a non-zero advantage in
        the generation batch, per micro-batch (the generation batch is split into `steps_per_generation` micro-batches
        of `per_device_train_batch_size`; the reference counts its own per accumulation step), averaged over
        processes."""
        output = super().finish_generation_batch(output)
        if self.context.args.objective == "trl":
            return output
        advantages = output["advantages"]
        rows = advantages.size(0)
        count = (advantages != 0).reshape(rows, -1).any(-1).sum().float().reshape(1)
        # Per micro-batch of `per_device_train_batch_size` samples, as the reference counts it per accumulation step.
        micro_batches = max(1, round(rows / self.context.args.per_device_train_batch_size))
        n_valid = self.context.gather(count).mean() / micro_batches
        output[N_VALID_KEY] = n_valid.expand(rows).clone()
        return output

    def loss_inputs(self, inputs: dict[str, Any], iteration: int) -> dict[str, Any]:
        """Under the paper's objectives, each row's advantage scaled by `paper weight / loss_type weight`, so that
        TRL's loss (and the chunked backward's) weighs every token `1 / L / n_valid` (see the module docstring)."""
        inputs = super().loss_inputs(inputs, iteration)
        if self.context.args.objective == "trl":
            return inputs
        mask = inputs["completion_mask"].float()
        tokens = mask.sum(-1)
        paper = paper_token_weights(mask, inputs[N_VALID_KEY], self.context.args.max_completion_length).sum(-1)
        trl = (self.context.loss_weights(inputs) * mask).sum(-1)
        ratio = torch.where((trl > 0) & (tokens > 0), paper / trl.clamp(min=torch.finfo(trl.dtype).tiny), 0.0)
        advantages = inputs["advantages"]
        scale = ratio if advantages.dim() == 1 else ratio[:, None]
        return {**inputs, "advantages": advantages * scale.to(advantages.dtype)}

    def compute_loss(self, trl_loss, inputs: dict[str, Any], iteration: int) -> torch.Tensor:
        """TRL's loss on `loss_inputs`; after a cached rollout, each token's advantage importance-weighted first."""
        inputs = self.loss_inputs(inputs, iteration)
        if self.correction is not None and "sampling_per_token_logps" in inputs:
            inputs = self.importance_corrected(inputs)
        return trl_loss(inputs)

    def importance_corrected(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """A cached rollout's correction (`cache_correction.py`): each token's advantage scaled by its importance
        weight, the exact log-prob being TRL's old one if it has one, else the training forward's own (scored once,
        `EstimatorContext.policy_logps`); the ratio metrics logged under TRL's names, reduced over processes."""
        exact = inputs.get("old_per_token_logps")
        if exact is None:
            exact = self.context.policy_logps(inputs)
        mask = inputs["completion_mask"].float()
        if self.context.args.justgrpo_fast:  # only the scored tokens have an exact log-prob and a policy term
            batch = ScoringBatch.from_inputs(inputs, self.context.args.temperature, torch.is_grad_enabled())
            mask = mask * self.fast_selection(batch)[1]
        inputs, stats = self.correction.corrected_inputs(inputs, exact, mask)
        for name, value in stats.items():
            gathered = self.context.gather(value.reshape(1))
            reduced = gathered.min() if name.endswith("min") else gathered.max() if name.endswith("max") else None
            self.context.log_metric(f"sampling/{name}", (gathered.mean() if reduced is None else reduced).item())
        return inputs

    def fast_selection(self, batch: ScoringBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """JustGRPO-Fast: the rollout's entropies `[B, T]` and the mask of the top-entropy tokens TRL's `_compute_loss`
        derives from them."""
        completion_mask = batch.completion_mask
        entropies = recorded(self.recorded_rows(batch), "entropies", completion_mask.size(1), self.context.device)
        quantile = self.context.args.top_entropy_quantile
        return entropies, self.context.high_entropy_mask(entropies, completion_mask, 1 - quantile)

    def plan(self, batch: ScoringBatch) -> ScoringPlan:
        """Every completion token, or under JustGRPO-Fast the top-entropy ones (with the rollout's entropies, and
        the mask TRL's `_compute_loss` derives from them)."""
        if not self.context.args.justgrpo_fast:
            return ScoringPlan(ar_canvases(self.context, batch))
        entropies, fast_mask = self.fast_selection(batch)
        return ScoringPlan(ar_canvases(self.context, batch, fast_mask), entropies=entropies, policy_mask=fast_mask)

    def logps(self, run: ModelRun, batch: ScoringBatch) -> LogProbs:
        plan = self.plan(batch)
        logps, entropies = exact_logps(self.context, run, plan.canvases, batch.temperature, self.sampling)
        return logps, (entropies if plan.entropies is None else plan.entropies)
