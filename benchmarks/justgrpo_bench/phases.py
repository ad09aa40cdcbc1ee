"""Ours: the library's own rollout and scoring paths (the functions the trainer calls), and the table of every
phase the benchmark times."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from justgrpo_trl.chunked_backward import TokenLoss, backward_chunk_by_chunk, loss_weights
from justgrpo_trl.collators import ARScoringCanvases
from justgrpo_trl.decoding import ar_decode
from justgrpo_trl.estimators import score_canvases, target_logps

from .baselines import grpo_normaliser, rollout_baseline, scoring_baseline
from .workload import high_entropy_mask

if TYPE_CHECKING:
    from .workload import Workload


@torch.no_grad()
@torch.no_grad()
def rollout_ours(work: Workload):
    generator = torch.Generator(device=work.prompt_ids.device).manual_seed(work.seed + 1)
    with work.autocast():
        return ar_decode(
            work.model,
            work.prompts,
            gen_length=work.gen_length,
            mask_id=work.mask_id,
            stop_ids=work.stop_ids,
            pad_id=work.pad_id,
            temperature=work.temperature,
            generator=generator,
        )


def fill_scoring_inputs(work: Workload, quantile: float) -> None:
    """Run our rollout once and keep its completions, sampling log-probs and entropies as the scoring inputs."""
    out = rollout_ours(work)  # the timed rollout phase, same seed
    got = torch.tensor([len(c) for c in out.completion_ids], device=work.lengths.device)
    if not torch.equal(got, work.lengths):
        raise RuntimeError(f"The forced stop did not hold: lengths {got.tolist()} != {work.lengths.tolist()}.")
    batch, width, device = len(out.completion_ids), int(got.max()), work.prompt_ids.device
    work.completions = torch.full((batch, width), work.pad_id, dtype=torch.long, device=device)
    work.completion_mask = torch.zeros((batch, width), dtype=torch.long, device=device)
    work.rollout_logps = torch.zeros((batch, width), device=device)
    work.rollout_entropies = torch.zeros((batch, width), device=device)
    for row, (ids, logps, ents) in enumerate(zip(out.completion_ids, out.logprobs, out.entropies)):
        work.completions[row, : len(ids)] = torch.tensor(ids, device=device)
        work.completion_mask[row, : len(ids)] = 1
        work.rollout_logps[row, : len(ids)] = torch.tensor(logps, device=device)
        work.rollout_entropies[row, : len(ids)] = torch.tensor(ents, device=device)
    advantages = torch.randn(batch, generator=torch.Generator().manual_seed(work.seed + 2))
    work.advantages = (advantages / advantages.std()).to(device)
    work.fast_mask = high_entropy_mask(work.rollout_entropies, work.completion_mask, quantile)


def _canvases(work: Workload, score_mask: torch.Tensor, chunk_size: int) -> ARScoringCanvases:
    return ARScoringCanvases(
        work.prompt_ids,
        torch.ones_like(work.prompt_ids),
        work.completions,
        score_mask,
        gen_length=work.gen_length,
        mask_id=work.mask_id,
        chunk_size=chunk_size,
    )


def scoring_ours(work: Workload, chunk_size: int, score_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The trainer's default path: each chunk scored and its share of the GRPO loss backpropagated at once; returns
    the log-probs `[B, T]`. With `score_mask` (JustGRPO-Fast) only those positions are computed and enter the loss."""
    canvases = _canvases(work, work.completion_mask if score_mask is None else score_mask, chunk_size)
    token_loss = TokenLoss(
        loss_type="bnpo",  # on-policy, its gradient is the baseline's: -A * grad log p / (valid tokens)
        weights=loss_weights(
            "bnpo", work.completion_mask, accumulation_steps=1, max_completion_length=work.gen_length
        ),
        advantages=work.advantages,
        policy_mask=score_mask,
    )

    def forward(chunk):
        logps, entropies = target_logps(
            work.model,
            chunk.input_ids,
            chunk.attention_mask,
            chunk.positions,
            chunk.targets[:, None],
            mask_id=work.mask_id,
            temperature=work.temperature,
            autocast=work.autocast,
        )
        return logps[:, 0], entropies[:, 0]

    logps, _, _, last = backward_chunk_by_chunk(forward, canvases, token_loss, torch.Tensor.backward)
    last.backward()
    return logps


def scoring_checkpointed(work: Workload, chunk_size: int) -> torch.Tensor:
    """The trainer's checkpointed path: `score_canvases` over the packed canvases, then one backward of the loss."""
    canvases = _canvases(work, work.completion_mask, chunk_size)
    logps, _ = score_canvases(
        work.model, canvases, mask_id=work.mask_id, temperature=work.temperature, autocast=work.autocast
    )
    loss = -(work.advantages[:, None] * logps * work.completion_mask).sum() / grpo_normaliser(work)
    loss.backward()
    return logps.detach()


def phase_table(
    work: Workload, chunk_sizes: list[int], quantile: float, checkpointed: bool
) -> dict[str, Callable[[], Any]]:
    """Name -> zero-argument callable for every phase of this run."""
    phases: dict[str, Callable[[], Any]] = {
        "rollout/baseline": lambda: rollout_baseline(work),
        "rollout/ours": lambda: rollout_ours(work),
        "scoring/baseline": lambda: scoring_baseline(work),
    }
    for c in chunk_sizes:
        phases[f"scoring/ours[c={c}]"] = lambda c=c: scoring_ours(work, c)
        phases[f"scoring/fast[q={quantile:g},c={c}]"] = lambda c=c: scoring_ours(work, c, work.fast_mask)
        if checkpointed:
            phases[f"scoring/ckpt[c={c}]"] = lambda c=c: scoring_checkpointed(work, c)
    return phases
