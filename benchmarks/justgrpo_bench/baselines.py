"""The naive baseline, written plainly like the reference code: one full forward of the whole batch per position,
full `[B, S, V]` logits, every position trained."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .workload import Workload


def baseline_step_logits(logits: torch.Tensor, mask_id: int, temperature: float) -> torch.Tensor:
    """fp32 logits at one position, divided by the temperature, mask token excluded."""
    logits = logits.float() / temperature
    logits[:, mask_id] = float("-inf")
    return logits


def reference_sample(logits: torch.Tensor, temperature: float, generator) -> torch.Tensor:
    """LLaDA's `generate()` step (`block_length=1`) on the full logits `[B, S, V]`: float64 Gumbel noise and
    argmax at every position, then the softmax confidence of every prediction (used by its low-confidence remasking,
    which with one masked slot per block always picks that slot). Returns the predictions `[B, S]`. Like the reference,
    it does not exclude the mask token (these tokens are never scored)."""
    noise = torch.rand(logits.shape, dtype=torch.float64, device=logits.device, generator=generator)
    predictions = torch.argmax(logits.double().exp() / (-torch.log(noise)) ** temperature, dim=-1)
    confidence = torch.softmax(logits.float(), dim=-1).gather(-1, predictions[..., None])[..., 0]
    del confidence  # computed for the cost only: with one slot per block the remasking choice is forced
    return predictions


def rollout_baseline(work: Workload) -> torch.Tensor:
    """Fixed-length AR rollout: `gen_length` full forwards of every row, full `[B, S, V]` logits each time.

    `plain` samples the read slot only; `reference` also does what LLaDA's `generate()` does to the whole `[B, S, V]`
    (float64 Gumbel noise, argmax and softmax at every position), as the reference JustGRPO rollout does.
    """
    model, prompt_width = work.model, work.prompt_ids.size(1)
    generator = torch.Generator(device=work.prompt_ids.device).manual_seed(work.seed + 1)
    masks = torch.full((work.prompt_ids.size(0), work.gen_length), work.mask_id, device=work.prompt_ids.device)
    canvas = torch.cat([work.prompt_ids, masks], dim=1)
    for step in range(work.gen_length):
        with work.autocast():
            logits = model(input_ids=canvas).logits  # [B, S, V]
        slot = prompt_width + step
        if work.baseline == "reference":
            token = reference_sample(logits, work.temperature, generator)[:, slot]
        else:
            probs = torch.softmax(baseline_step_logits(logits[:, slot], work.mask_id, work.temperature), -1)
            token = torch.multinomial(probs.double(), 1, generator=generator)[:, 0]
        canvas[:, slot] = token
    return canvas[:, prompt_width:]


def scoring_baseline(work: Workload) -> torch.Tensor:
    """One forward+backward per position over all `gen_length` positions; returns the log-probs `[B, L]`.

    `reference` divides the full `[B, S, V]` logits by the temperature before slicing, as the reference loss does.
    """
    model, prompt_width, length = work.model, work.prompt_ids.size(1), work.gen_length
    batch, width = work.completions.shape
    full = torch.full((batch, length), work.pad_id, dtype=torch.long, device=work.completions.device)
    full[:, :width] = work.completions  # the reference keeps decoding after the stop; those slots are never read
    valid = torch.zeros((batch, length), device=full.device)
    valid[:, :width] = work.completion_mask
    slots = torch.arange(length, device=full.device)
    norm = grpo_normaliser(work)
    logps = torch.zeros((batch, length), device=full.device)
    for step in range(length):
        completion = torch.where(slots[None, :] < step, full, torch.full_like(full, work.mask_id))
        with work.autocast():
            logits = model(input_ids=torch.cat([work.prompt_ids, completion], dim=1)).logits  # [B, S, V]
            if work.baseline == "reference":
                logits = logits / work.temperature
        temperature = 1.0 if work.baseline == "reference" else work.temperature
        step_logps = torch.log_softmax(
            baseline_step_logits(logits[:, prompt_width + step], work.mask_id, temperature), -1
        )
        token_logps = step_logps.gather(-1, full[:, step, None])[:, 0]
        loss = -(work.advantages * token_logps * valid[:, step]).sum() / norm
        loss.backward()
        logps[:, step] = token_logps.detach()
    return logps


def grpo_normaliser(work: Workload) -> float:
    return float(work.completion_mask.sum())
