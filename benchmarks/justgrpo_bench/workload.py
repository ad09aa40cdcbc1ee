"""The inputs of one benchmark run: prompts, drawn completion lengths, completions, advantages and the
JustGRPO-Fast selection, shared by the baseline and ours. Data only: the phases (`phases.py`, `baselines.py`) run on
it, and `phases.fill_scoring_inputs` fills its scoring inputs from one rollout."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from justgrpo_trl.models.modeling_llada import LLaDAModelLM

from .models import ForcedStopModel


def draw_lengths(batch: int, gen_length: int, mean_fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Completion lengths (stop token included): a normal with standard deviation `0.25 * L`, clipped to
    `[max(1, L/8), L]` and shifted so that the batch's mean length is `mean_fraction * L` (up to rounding)."""
    low, target = max(1, gen_length // 8), mean_fraction * gen_length
    draws = torch.randn(batch, generator=generator, dtype=torch.float64) * 0.25 * gen_length
    shift = target - draws.mean()
    for _ in range(50):  # the clipping moves the mean: re-centre until it sits on the target
        shift = shift + target - (draws + shift).clamp(low, gen_length).mean()
    return (draws + shift).clamp(low, gen_length).round().long()


@dataclass
class Workload:
    """Everything a phase needs: the wrapped model, the prompts, and the scoring inputs taken from one rollout."""

    model: ForcedStopModel
    mask_id: int
    stop_ids: tuple[int, ...]
    pad_id: int
    prompt_ids: torch.Tensor  # [B, P], no padding
    lengths: torch.Tensor  # [B], completion lengths incl. the stop token
    gen_length: int
    temperature: float
    seed: int
    baseline: str = "plain"
    autocast: Callable[[], AbstractContextManager] = nullcontext
    completions: torch.Tensor | None = None  # [B, T] right-padded with pad_id, T = max length
    completion_mask: torch.Tensor | None = None  # [B, T]
    rollout_logps: torch.Tensor | None = None  # [B, T], recorded by ar_decode
    rollout_entropies: torch.Tensor | None = None  # [B, T]
    advantages: torch.Tensor | None = None  # [B]
    fast_mask: torch.Tensor | None = None  # [B, T], JustGRPO-Fast selection

    @property
    def prompts(self) -> list[list[int]]:
        return self.prompt_ids.tolist()

    @property
    def num_valid(self) -> int:
        return int(self.lengths.sum())


def make_workload(args: argparse.Namespace, model: LLaDAModelLM, tokens, device: torch.device) -> Workload:
    """Prompts with a distinct first token per row, realistic end-of-answer positions, the forced-stop wrapper."""
    generator = torch.Generator().manual_seed(args.seed)
    vocab = model.config.vocab_size
    reserved = {tokens.mask_id, tokens.pad_id, *tokens.stop_ids, 0}
    pool = torch.tensor([t for t in range(min(vocab, 1 << 16)) if t not in reserved])
    if args.batch_size > pool.numel():
        raise ValueError(f"batch_size must be <= {pool.numel()} (one distinct first token per row).")
    first = pool[torch.randperm(pool.numel(), generator=generator)[: args.batch_size]]
    rest = pool[torch.randint(pool.numel(), (args.batch_size, args.prompt_length - 1), generator=generator)]
    prompt_ids = torch.cat([first[:, None], rest], dim=1).to(device)
    lengths = draw_lengths(args.batch_size, args.gen_length, args.mean_fraction, generator)
    end_by_first_token = torch.full((model.config.embedding_size,), args.gen_length + 1, dtype=torch.long)
    end_by_first_token[first] = lengths - 1
    wrapped = ForcedStopModel(model, args.prompt_length, tokens.stop_ids, end_by_first_token.to(device))
    autocast = nullcontext
    if args.autocast:
        device_type = device.type

        def autocast() -> AbstractContextManager:
            return torch.autocast(device_type, dtype=torch.bfloat16)

    return Workload(
        model=wrapped,
        mask_id=tokens.mask_id,
        stop_ids=tokens.stop_ids,
        pad_id=tokens.pad_id,
        prompt_ids=prompt_ids,
        lengths=lengths.to(device),
        gen_length=args.gen_length,
        temperature=args.temperature,
        seed=args.seed,
        baseline=args.baseline,
        autocast=autocast,
    )


def high_entropy_mask(entropies: torch.Tensor, mask: torch.Tensor, quantile: float) -> torch.Tensor:
    """TRL's `GRPOTrainer.get_high_entropy_mask` on one process: the valid positions whose entropy is at least the
    `1 - quantile` quantile of the valid entropies (JustGRPO-Fast keeps the top `quantile`)."""
    valid = entropies[mask.bool()].float()
    if valid.numel() == 0:
        return torch.zeros_like(mask, dtype=torch.bool)
    threshold = torch.quantile(valid, 1.0 - quantile)
    return (entropies * mask.float() >= threshold) & mask.bool()
