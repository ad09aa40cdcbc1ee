"""JustGRPO's estimator: rollouts in AR order and the exact AR-order log-prob of every trained token.

Rollout: canvas `[prompt | MASK x L]`, one forward per token, each sampled token written into the next slot
(`decoding.ar_decode`). Scoring: token j of a completion is read at position `P + j` of
`[prompt | c_<j | MASK x (L - j)]`, the same canvas the sampler saw, so the log-prob is exact. The (row, position)
pairs are packed in chunks (`collators.ARScoringCanvases`), and the loss over them is a sum of per-token terms, so the
trainer may backpropagate it chunk by chunk.

JustGRPO-Fast (`justgrpo_fast=True`): only the `top_entropy_quantile` highest-entropy positions, chosen from the
entropies the rollout recorded, are scored and trained; the others are never computed.

Rollout cache (`rollout_cache`, off by default): approximate rollouts (`cached_decoding.py`), whose sampling log-probs
are then not the exact ones; the trainer weights each token's policy term by its importance ratio
(`cache_correction.py`).

Sampling options (`top_k`, `top_p`, `min_p`) truncate the rollout's distribution, and the scorer applies the same
truncation, so the log-probs trained on are those of the distribution each token was drawn from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..decoding import DecodeOutput, SamplingFilter, ar_decode
from .base import Estimator, LogProbs, ModelRun, ScoringBatch, ScoringPlan, recorded
from .scoring import ar_canvases, exact_logps

if TYPE_CHECKING:
    from ..config import JustGRPOConfig


class ARExact(Estimator):
    """JustGRPO (with its Fast variant): exact AR-order rollouts and log-probs."""

    name = "ar_exact"
    chunkable = True

    @classmethod
    def check_config(cls, args: JustGRPOConfig) -> None:
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
        args = self.context.args
        output = ar_decode(
            model,
            prompt_ids,
            top_k=args.top_k or None,
            top_p=args.top_p,
            min_p=args.min_p,
            gen_length=args.max_completion_length,
            temperature=temperature,
            all_done=self.context.rollout_all_done,
            cache=args.rollout_cache_settings(),
            **self.context.tokens.decode_kwargs(),
        )
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

    def plan(self, batch: ScoringBatch) -> ScoringPlan:
        """Every completion token, or under JustGRPO-Fast the top-entropy ones (with the rollout's entropies, and
        the mask TRL's `_compute_loss` derives from them)."""
        if not self.context.args.justgrpo_fast:
            return ScoringPlan(ar_canvases(self.context, batch))
        completion_mask = batch.completion_mask
        entropies = recorded(self.recorded_rows(batch), "entropies", completion_mask.size(1), self.context.device)
        quantile = self.context.args.top_entropy_quantile
        fast_mask = self.context.high_entropy_mask(entropies, completion_mask, 1 - quantile)
        return ScoringPlan(ar_canvases(self.context, batch, fast_mask), entropies=entropies, policy_mask=fast_mask)

    def logps(self, run: ModelRun, batch: ScoringBatch) -> LogProbs:
        plan = self.plan(batch)
        logps, entropies = exact_logps(self.context, run, plan.canvases, batch.temperature, self.sampling)
        return logps, (entropies if plan.entropies is None else plan.entropies)
