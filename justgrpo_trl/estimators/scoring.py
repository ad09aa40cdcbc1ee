"""Scoring: the forwards that turn canvases into per-token log-probs and entropies, shared by the estimators.

Pure functions of (module, canvases). The estimators choose which canvases to build (`ar_canvases`) and call these
through the trainer's wrapped model call. `score_canvases` is JustGRPO's exact AR-order scorer; `score_one_step` is
diffu-GRPO's single-view scorer.
"""

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from functools import partial

import torch
from torch.utils.checkpoint import checkpoint

from ..collators import ARScoringCanvases
from ..decoding import SamplingFilter, logprobs_and_entropy, scaled_logits
from .base import EstimatorContext, ModelRun, ScoringBatch


def target_logps(
    module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
    targets: torch.Tensor,
    *,
    mask_id: int,
    temperature: float,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    sampling: SamplingFilter | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of `targets` and entropies, read at `positions` only (the mask id excluded from the softmax; with
    `sampling`, of the truncated distribution the sampler drew from).

    `positions` is anything `logits_to_keep` takes (`[C, 1]` per-row positions for packed AR canvases, a 1D range
    for diffu-GRPO's single view); `targets` has the shape of the logits without the vocabulary dim.
    """
    with autocast():
        logits = module(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=positions).logits
    logits = scaled_logits(logits, mask_id, temperature)
    if sampling is not None:
        logits = sampling(logits, keep=targets)
    logps, entropies = logprobs_and_entropy(logits)
    return logps.gather(-1, targets[..., None])[..., 0], entropies


def _maybe_checkpointed(*args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """`target_logps`, under non-reentrant activation checkpointing when gradients are on: the backward recomputes
    this forward alone, so memory holds one forward's activations at a time."""
    if torch.is_grad_enabled():
        return checkpoint(target_logps, *args, **kwargs, use_reentrant=False)
    return target_logps(*args, **kwargs)


def score_canvases(
    module,
    canvases: ARScoringCanvases,
    *,
    mask_id: int,
    temperature: float = 1.0,
    num_forwards: int | None = None,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    sampling: SamplingFilter | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact AR-order log-probs and entropies `[B, T]` of every (row, position) pair the canvases hold; 0 elsewhere.

    With gradients enabled each chunk runs under non-reentrant activation checkpointing, so the backward recomputes
    one chunk at a time and memory holds a single chunk's activations. `num_forwards` (>= the number of chunks) pads
    with dummy chunks whose output is tied to the result with weight 0: under ZeRO-3/FSDP every rank must run as
    many forwards, and a batch with nothing to score must still reach every parameter in the backward.
    """
    num_chunks = len(canvases)
    num_forwards = max(num_forwards or 0, num_chunks, 1)
    values, anchor = [], None
    for index in range(num_forwards):
        real = index < num_chunks
        chunk = canvases.chunk(index) if real else canvases.views(*(canvases.rows.new_zeros(1),) * 2)
        args = (module, chunk.input_ids, chunk.attention_mask, chunk.positions, chunk.targets[:, None])
        logps, entropies = _maybe_checkpointed(
            *args, mask_id=mask_id, temperature=temperature, autocast=autocast, sampling=sampling
        )
        logps, entropies = logps[:, 0], entropies[:, 0]
        if real:
            values.append((chunk, logps, entropies))
        else:
            term = 0.0 * (logps.sum() + entropies.sum())
            anchor = term if anchor is None else anchor + term
    shape, device = (canvases.batch_size, canvases.completion_width), canvases.completions.device
    logps, entropies = torch.zeros(shape, device=device), torch.zeros(shape, device=device)
    if values:
        rows = torch.cat([chunk.rows for chunk, _, _ in values])
        cols = torch.cat([chunk.cols for chunk, _, _ in values])
        logps = logps.index_put((rows, cols), torch.cat([v for _, v, _ in values]))
        entropies = entropies.index_put((rows, cols), torch.cat([e for _, _, e in values]))
    if anchor is not None:
        logps = logps + anchor
    return logps, entropies


def score_one_step(
    module,
    canvas: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    *,
    prompt_width: int,
    mask_id: int,
    temperature: float = 1.0,
    rows_per_forward: int = 4,
    num_forwards: int | None = None,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> tuple[torch.Tensor, torch.Tensor]:
    """diffu-GRPO's estimator: every completion token's log-prob read from one forward of its row's canvas
    (`collators.one_step_canvas`), rows batched `rows_per_forward` at a time, each batch checkpointed."""
    width = completion_ids.size(1)
    positions = torch.arange(prompt_width, prompt_width + width, device=canvas.device)
    starts = list(range(0, canvas.size(0), rows_per_forward))
    values, anchor = [], None
    for index in range(max(num_forwards or 0, len(starts), 1)):
        real = index < len(starts)
        rows = slice(starts[index], starts[index] + rows_per_forward) if real else slice(0, 1)
        args = (module, canvas[rows], attention_mask[rows], positions, completion_ids[rows])
        logps, entropies = _maybe_checkpointed(*args, mask_id=mask_id, temperature=temperature, autocast=autocast)
        if real:
            values.append((logps, entropies))
        else:
            term = 0.0 * (logps.sum() + entropies.sum())
            anchor = term if anchor is None else anchor + term
    logps = torch.cat([v for v, _ in values])
    entropies = torch.cat([e for _, e in values])
    return (logps + anchor if anchor is not None else logps), entropies


def ar_canvases(
    context: EstimatorContext,
    batch: ScoringBatch,
    score_mask: torch.Tensor | None = None,
    trajectory: dict[str, torch.Tensor] | None = None,
) -> ARScoringCanvases:
    """The batch's scoring canvases: AR order, or the sampler's own order when `trajectory` holds its `canvas_ids`
    and `unmask_steps`. Only the (row, position) pairs of `score_mask` (default: the completion mask) are built."""
    width = batch.prompt_width
    return ARScoringCanvases(
        batch.input_ids[:, :width],
        batch.attention_mask[:, :width],
        batch.input_ids[:, width:],
        batch.completion_mask if score_mask is None else score_mask,
        gen_length=context.args.max_completion_length,
        mask_id=context.tokens.mask_id,
        chunk_size=context.args.logprob_chunk_size,
        logit_shift=context.tokens.logit_shift,
        **(trajectory or {}),
    )


def exact_logps(
    context: EstimatorContext,
    run: ModelRun,
    canvases: ARScoringCanvases,
    temperature: float,
    sampling: SamplingFilter | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`score_canvases` through the wrapped model, with as many forwards as the most loaded sharded rank runs."""
    score = partial(
        score_canvases,
        mask_id=context.tokens.mask_id,
        temperature=temperature,
        num_forwards=context.sync_forward_count(len(canvases)),
        autocast=context.autocast,
        sampling=sampling,
    )
    return run(score, canvases)
