"""Backpropagate JustGRPO's loss one scoring chunk at a time.

With token-level importance sampling, TRL's GRPO losses are sums of per-token terms `w_t * l(log p_t)`. The weights
`w_t` (completion mask, loss normaliser) and the constants of `l` (advantage, old and reference log-probs, clipping
range, entropy mask) are all known before any token is scored. So the gradient at a token depends on that token's
log-prob only, and each chunk's share of the loss can be backpropagated as soon as the chunk is scored, then its
activations freed. The gradient is the same sum, but this saves two costs of one checkpointed graph over all chunks:

* the activation-checkpoint recompute (one forward per chunk);
* the second, parameter-sized gradient buffer (autograd sums a parameter's gradient over all chunks before
  `AccumulateGrad` runs).

`TokenLoss` restates `GRPOTrainer._compute_loss` (TRL 1.16) term by term for these losses. The trainer still runs
TRL's own `_compute_loss` once, on the scored values, for the loss value and the metrics, and checks that the two
agree. Sequence-level importance sampling, `vespo`, the off-policy mask, an entropy mask from the current entropies
and the entropy bonus couple tokens together; they keep the checkpointed path (`estimators.scoring.score_canvases`).

Under DeepSpeed (`ChunkBackward.for_accelerator`) every chunk but the last goes through the engine's own backward with
the gradient-accumulation boundary off, so the engine neither steps nor rescales (TRL's normaliser already divided by
the accumulation steps); the last chunk is left to the Trainer's backward, which sets the boundary as accelerate's
gradient accumulation says and steps there. ZeRO-2/3 reduce (and ZeRO-3 gathers) in every chunk's backward and
forward, so every rank runs as many chunks: the ranks with fewer pad with weight-0 dummy chunks.
"""

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather
from trl import GRPOTrainer

from .cache_correction import ImportanceCorrection
from .collators import ARScoringCanvases, ScoringChunk

CLIPPED_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
SEPARABLE_LOSS_TYPES = (*CLIPPED_LOSS_TYPES, "cispo", "sapo")


def loss_weights(
    loss_type: str,
    mask: torch.Tensor,
    *,
    accumulation_steps: int,
    max_completion_length: int,
    num_items_in_batch: torch.Tensor | None = None,
    num_processes: int = 1,
    steps_per_generation: int = 1,
) -> torch.Tensor:
    """`[B, T]` weight of each token's term in TRL's training loss: the mask over the loss type's normaliser."""
    mask = mask.float()
    batch = mask.size(0)
    if loss_type in ("grpo", "sapo"):  # mean over each sequence's tokens, then over sequences
        return mask / mask.sum(-1, keepdim=True).clamp(min=1.0) / batch / accumulation_steps
    if loss_type == "bnpo":  # mean over the micro-batch's tokens
        return mask / mask.sum().clamp(min=1.0) / accumulation_steps
    if loss_type == "dr_grpo":  # a constant normaliser
        return mask / (batch * max_completion_length) / accumulation_steps
    if loss_type == "luspo":  # sum over tokens, mean over sequences
        return mask / batch / accumulation_steps
    if loss_type in ("dapo", "cispo"):  # mean over the generation batch's tokens, across processes
        normaliser = num_items_in_batch.clamp(min=1.0) / num_processes
        return mask / (normaliser * accumulation_steps / steps_per_generation)
    raise ValueError(f"loss_type={loss_type!r} is not a sum of per-token terms; use chunked_backward=False.")


@dataclass
class TokenLoss:
    """TRL's per-token GRPO loss term, weighted, for the (row, col) tokens of one chunk.

    `old_logps=None` is TRL's on-policy case (old = current, detached): the ratio is 1 and its gradient is that of
    `log p`. `policy_mask` multiplies the policy term only, as TRL's entropy mask does. With a cached rollout,
    `correction` multiplies it by each token's importance weight (exact over `sampling_logps`, `cache_correction.py`),
    as TRL's `importance_sampling_ratio` does.
    """

    loss_type: str
    weights: torch.Tensor
    advantages: torch.Tensor
    old_logps: torch.Tensor | None = None
    ref_logps: torch.Tensor | None = None
    policy_mask: torch.Tensor | None = None
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    delta: float | None = None
    beta: float = 0.0
    bias_corrected_kl: bool = False
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.0
    sampling_logps: torch.Tensor | None = None
    correction: "ImportanceCorrection | None" = None

    def __post_init__(self):
        if self.loss_type not in SEPARABLE_LOSS_TYPES:
            raise ValueError(f"loss_type={self.loss_type!r} is not a sum of per-token terms.")
        if self.advantages.dim() == 1:
            self.advantages = self.advantages[:, None]
        self.advantages = self.advantages.expand_as(self.weights)
        if self.beta != 0.0 and self.ref_logps is None:
            raise ValueError("beta != 0 needs the reference log-probs.")

    def __call__(self, logps: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        advantages = self.advantages[rows, cols]
        old = logps.detach() if self.old_logps is None else self.old_logps[rows, cols]
        ratio = torch.exp(logps - old)
        if self.loss_type == "cispo":
            term = -torch.clamp(ratio, max=self.epsilon_high).detach() * advantages * logps
        elif self.loss_type == "sapo":
            temperatures = torch.where(advantages > 0, self.sapo_temperature_pos, self.sapo_temperature_neg)
            term = -torch.sigmoid(temperatures * (ratio - 1)) * 4 / temperatures * advantages
        else:
            clipped = torch.clamp(ratio, 1 - self.epsilon_low, 1 + self.epsilon_high)
            unclipped = ratio if self.delta is None else torch.clamp(ratio, max=self.delta)
            term = -torch.min(unclipped * advantages, clipped * advantages)
        if self.policy_mask is not None:
            term = term * self.policy_mask[rows, cols]
        if self.correction is not None and self.sampling_logps is not None:  # a cached rollout's importance weight
            term = term * self.correction.weights(old.detach(), self.sampling_logps[rows, cols])
        if self.beta != 0.0:
            log_ref_ratio = self.ref_logps[rows, cols] - logps
            kl = torch.exp(log_ref_ratio) - log_ref_ratio - 1
            term = term + self.beta * (kl * ratio if self.bias_corrected_kl else kl)
        return (term * self.weights[rows, cols]).sum()


def backward_chunk_by_chunk(
    forward: Callable[[ScoringChunk], tuple[torch.Tensor, torch.Tensor]],
    canvases: ARScoringCanvases,
    token_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    backward: Callable[[torch.Tensor], None],
    no_sync: Callable[[], AbstractContextManager] = nullcontext,
    num_chunks: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Score each chunk (`forward` returns its `[C]` log-probs and entropies, with gradient) and backpropagate its
    share of the loss at once, every chunk but the last inside `no_sync` (DDP reduces once, in the last backward).

    The last chunk's loss is returned still attached, for the caller's own backward. `num_chunks` (at least the
    number of real chunks) pads with dummy chunks of weight 0, as ZeRO-2/3 need when their backward is collective; a
    batch with nothing to score runs one, so that every parameter still gets a (zero) gradient and DDP still reduces.

    Returns `(logps, entropies, loss_value, last_loss)`: the scored values `[B, T]` (0 elsewhere) and the loss
    value, detached, then the last chunk's loss.
    """
    shape, device = (canvases.batch_size, canvases.completion_width), canvases.completions.device
    logps, entropies = torch.zeros(shape, device=device), torch.zeros(shape, device=device)
    total = torch.zeros((), device=device)
    num_chunks = max(num_chunks or 0, len(canvases), 1)
    for index in range(num_chunks):
        real = index < len(canvases)
        chunk = canvases.chunk(index) if real else canvases.views(*(canvases.rows.new_zeros(1),) * 2)
        last = index == num_chunks - 1
        with nullcontext() if last else no_sync():
            chunk_logps, chunk_entropies = forward(chunk)
            if real:
                loss = token_loss(chunk_logps, chunk.rows, chunk.cols)
            else:
                loss = 0.0 * (chunk_logps.sum() + chunk_entropies.sum())
            if not last:
                backward(loss)
        if real:
            logps[chunk.rows, chunk.cols] = chunk_logps.detach().float()
            entropies[chunk.rows, chunk.cols] = chunk_entropies.detach().float()
            total = total + loss.detach()
    return logps, entropies, total, loss


def chunked_backward_blockers(trainer: GRPOTrainer, chunkable: bool) -> str | None:
    """Why the chunked backward cannot run with a trainer's settings (None when it can): the estimator must be
    `chunkable`, the loss a sum of per-token terms, and each chunk's backward a plain, DDP or DeepSpeed backward."""
    args = trainer.args
    reasons = {
        "chunked_backward=False": not args.chunked_backward,
        f"estimator={args.estimator!r}": not chunkable,
        "importance_sampling_level='sequence'": trainer.importance_sampling_level != "token",
        f"loss_type={trainer.loss_type!r}": trainer.loss_type not in SEPARABLE_LOSS_TYPES,
        "off_policy_mask_threshold is set": trainer.off_policy_mask_threshold is not None,
        "an entropy mask from the current entropies (top_entropy_quantile < 1 without justgrpo_fast)": (
            trainer.top_entropy_quantile < 1.0 and not args.justgrpo_fast
        ),
        "an entropy bonus": trainer._entropy_bonus_enabled,
        "a router auxiliary loss": trainer.aux_loss_enabled,
        "FSDP": trainer.is_fsdp_enabled,
        "torch.nn.DataParallel (n_gpu > 1)": args.n_gpu > 1,
    }
    blockers = [reason for reason, applies in reasons.items() if applies]
    return ", ".join(blockers) or None


def trl_loss_weights(trainer: GRPOTrainer, inputs: dict[str, Any]) -> torch.Tensor:
    """`[B, T]` weight of each token's term in the trainer's TRL loss for a micro-batch (`loss_weights`), in training
    or (no accumulation, no split of the generation batch) in evaluation, as TRL's `_compute_loss` normalises."""
    training = trainer.model.training
    return loss_weights(
        trainer.loss_type,
        inputs["completion_mask"],
        accumulation_steps=trainer.current_gradient_accumulation_steps if training else 1,
        max_completion_length=trainer.max_completion_length,
        num_items_in_batch=inputs.get("num_items_in_batch"),
        num_processes=trainer.accelerator.num_processes,
        steps_per_generation=trainer.args.steps_per_generation if training else 1,
    )


def token_loss_for(
    trainer: GRPOTrainer,
    inputs: dict[str, Any],
    policy_mask: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> TokenLoss:
    """A micro-batch's loss as the trainer's TRL `_compute_loss` would compute it, term by term. `weights` replaces
    the loss type's per-token weights (an estimator's own normaliser)."""
    if weights is None:
        weights = trl_loss_weights(trainer, inputs)
    return TokenLoss(
        loss_type=trainer.loss_type,
        weights=weights,
        advantages=inputs["advantages"],
        old_logps=inputs.get("old_per_token_logps"),
        ref_logps=inputs.get("ref_per_token_logps"),
        policy_mask=policy_mask,
        epsilon_low=trainer.epsilon_low,
        epsilon_high=trainer.epsilon_high,
        delta=trainer.args.delta,
        beta=trainer.beta,
        bias_corrected_kl=trainer.args.use_bias_correction_kl,
        sapo_temperature_pos=trainer.args.sapo_temperature_pos,
        sapo_temperature_neg=trainer.args.sapo_temperature_neg,
        sampling_logps=inputs.get("sampling_per_token_logps"),
        correction=trainer.estimator.correction,
    )


@dataclass
class ChunkBackward:
    """How one chunk that is not a micro-batch's last is backpropagated, under the engine that wraps the model.

    `backward(loss)` accumulates the chunk's gradient without any optimizer step; `no_sync()` defers DDP's gradient
    reduction to the last chunk; `num_chunks(n)` is the chunk count this rank runs when it has `n`: the largest over
    the ranks where each chunk's forward or backward is collective (DeepSpeed ZeRO-2 reduces gradients in every
    backward, ZeRO-3 also gathers parameters in every forward), `n` otherwise.
    """

    backward: Callable[[torch.Tensor], None]
    no_sync: Callable[[], AbstractContextManager] = nullcontext
    num_chunks: Callable[[int], int] = field(default=lambda count: count)

    @classmethod
    def for_accelerator(cls, accelerator: Accelerator, model: torch.nn.Module) -> "ChunkBackward":
        """The per-chunk backward for `model` as `accelerator` prepared it (DDP, DeepSpeed or a plain module)."""
        no_sync = partial(accelerator.no_sync, model)  # DDP's no_sync; under ZeRO-2/3 accelerate makes it a no-op
        if accelerator.distributed_type != DistributedType.DEEPSPEED:
            return cls(accelerator.backward, no_sync)
        engine = accelerator.deepspeed_engine_wrapped.engine

        def engine_backward(loss: torch.Tensor) -> None:
            # Boundary off: no reduction-for-step and no `engine.step()`; `scale_wrt_gas=False`: TRL's loss weights
            # already divide by the accumulation steps (as the Trainer's own DeepSpeed backward also says).
            engine.set_gradient_accumulation_boundary(False)
            engine.backward(loss, scale_wrt_gas=False)

        def max_over_ranks(count: int) -> int:
            if accelerator.num_processes == 1:
                return count
            return int(gather(torch.tensor([count], device=accelerator.device)).max())

        return cls(engine_backward, no_sync, max_over_ranks)
