"""Importance-sampling correction of the policy gradient for rollouts drawn with an approximate cache.

A cached rollout (`cached_decoding`) draws token t from `q(t)`, a slightly different distribution from the policy's
exact AR-order `pi(t)`. As TRL does for vLLM's sampler, each token's policy-gradient term is weighted by the ratio
`rho = pi(t) / q(t)`, truncated or masked:

* `token_truncate`: `clamp(rho, clip_min, clip_max)`;
* `token_mask`: `rho`, or 0 where `rho` is outside `[clip_min, clip_max]`.

TRL 1.16 option (`use_vllm=True` only) -> the option here (`rollout_cache` set, `rollout_cache_refresh > 1`):

* `vllm_importance_sampling_correction` -> `rollout_cache_importance_sampling_correction` (default True);
* `vllm_importance_sampling_mode` -> `rollout_cache_importance_sampling_mode` (default 'token_truncate'; the
  `sequence_*` modes are refused);
* `vllm_importance_sampling_clip_max` -> `rollout_cache_importance_sampling_clip_max` (default 3.0, as TRL's);
* `vllm_importance_sampling_clip_min` -> `rollout_cache_importance_sampling_clip_min` (default None, as TRL's);
* metrics: the same names, `sampling/importance_sampling_ratio/{min,mean,max}` (of the weight) and
  `sampling/sampling_logp_difference/{mean,max}`, plus `sampling/importance_sampling_ratio/clipped_fraction` (the
  fraction of ratios outside the caps).

Differences from TRL, and why:

* `pi(t)` is the exact log-prob the training forward computes anyway (TRL's old log-probs when `num_iterations > 1`
  or `steps_per_generation > gradient_accumulation_steps`, else the current ones, detached): no extra scoring pass.
  TRL's own correction always adds an old-log-prob pass and is tied to `use_vllm`, which stays off.
* The ratio is computed per micro-batch at loss time (on-policy it is only known then), so the metrics are logged
  per micro-batch, not per generation batch.
* Only token-level modes: under the chunked backward each chunk's gradient is taken before the sequence's other
  tokens are scored, so a sequence-level ratio is not known in time.
* Under JustGRPO-Fast only the scored (top-entropy) tokens have an exact log-prob, and only they carry a policy
  term; only they are corrected, and the metrics cover them only.
* TRL multiplies the per-token policy loss by the weight. The trainer scales each token's advantage by it instead
  (advantages `[B, T]`), which is the same loss for every loss type whose per-token term is positively homogeneous in
  the advantage (all but `vespo`, which is refused); the KL term stays unweighted, as in TRL.
"""

from dataclasses import dataclass, field

import torch

IMPORTANCE_SAMPLING_MODES = ("token_truncate", "token_mask")


@dataclass(frozen=True)
class ImportanceCorrection:
    """Truncated or masked token-level importance weights `pi / q` (TRL's `vllm_importance_sampling_*` semantics)."""

    mode: str = field(default="token_truncate", metadata={"help": "'token_truncate' or 'token_mask'."})
    clip_min: float | None = field(default=None, metadata={"help": "Lower cap C_min (None: none)."})
    clip_max: float | None = field(default=3.0, metadata={"help": "Upper cap C_max (None: none)."})

    def __post_init__(self):
        if self.mode not in IMPORTANCE_SAMPLING_MODES:
            raise ValueError(
                f"rollout_cache_importance_sampling_mode must be one of {IMPORTANCE_SAMPLING_MODES}, got "
                f"{self.mode!r} (sequence-level modes need every token's exact log-prob before any gradient)."
            )

    def ratio_and_weights(
        self, exact_logps: torch.Tensor, sampling_logps: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(rho, w)`: the raw ratio `exp(exact - sampling)` and the weight (truncated or masked), detached. Outside
        `mask` the log-ratio is taken as 0 (weight 1), as TRL does; so are NaN sampling log-probs."""
        log_ratio = exact_logps.detach().float() - sampling_logps.float()
        if mask is not None:
            log_ratio = log_ratio * mask
        ratio = torch.exp(torch.nan_to_num(log_ratio, nan=0.0))
        low = -torch.inf if self.clip_min is None else self.clip_min
        high = torch.inf if self.clip_max is None else self.clip_max
        if self.mode == "token_truncate":
            return ratio, torch.clamp(ratio, min=low, max=high)
        return ratio, ratio.masked_fill((ratio < low) | (ratio > high), 0.0)

    def weights(self, exact_logps: torch.Tensor, sampling_logps: torch.Tensor) -> torch.Tensor:
        """The weights of scored tokens (`[N]` or `[B, T]`, every entry scored)."""
        return self.ratio_and_weights(exact_logps, sampling_logps)[1]

    def corrected_inputs(
        self, inputs: dict, exact_logps: torch.Tensor, mask: torch.Tensor
    ) -> tuple[dict, dict[str, torch.Tensor]]:
        """TRL's loss inputs with each token's advantage scaled by its weight (`[B, T]` advantages), and the metrics'
        per-micro-batch values (`min`, `mean`, `max` of the weight, the fraction of ratios outside the caps, the
        mean and max `|exact - sampling|`) over the corrected tokens (`mask`)."""
        ratio, weights = self.ratio_and_weights(exact_logps, inputs["sampling_per_token_logps"], mask)
        advantages = inputs["advantages"]
        advantages = advantages[:, None] if advantages.dim() == 1 else advantages
        selected = mask.bool()
        low = -torch.inf if self.clip_min is None else self.clip_min
        high = torch.inf if self.clip_max is None else self.clip_max
        flat_ratio, flat_weights = ratio[selected], weights[selected]
        delta = (exact_logps.detach().float() - inputs["sampling_per_token_logps"].float()).abs()[selected]
        delta = delta[~torch.isnan(delta)]
        zero = ratio.new_zeros(())
        stats = {
            "importance_sampling_ratio/min": flat_weights.min() if flat_weights.numel() else zero,
            "importance_sampling_ratio/mean": flat_weights.mean() if flat_weights.numel() else zero,
            "importance_sampling_ratio/max": flat_weights.max() if flat_weights.numel() else zero,
            "importance_sampling_ratio/clipped_fraction": (
                ((flat_ratio < low) | (flat_ratio > high)).float().mean() if flat_ratio.numel() else zero
            ),
            "sampling_logp_difference/mean": delta.mean() if delta.numel() else zero,
            "sampling_logp_difference/max": delta.max() if delta.numel() else zero,
        }
        return {**inputs, "advantages": advantages * weights.to(advantages.dtype)}, stats
