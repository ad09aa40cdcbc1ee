"""Per-token log-prob estimators: how a policy's log-probs of sampled completions are computed from the model.

Pure functions of (module, canvases): the trainer chooses one, wraps the call for DDP/DeepSpeed, and TRL's loss
does the rest. `score_canvases` is JustGRPO's exact AR-order estimator.
"""

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch.utils.checkpoint import checkpoint

from .collators import ARScoringCanvases
from .decoding import logprobs_and_entropy, scaled_logits


def chunk_logps(
    module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
    targets: torch.Tensor,
    *,
    mask_id: int,
    temperature: float,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each canvas' target at its read position `[C, 1]`, and the entropy there (mask id excluded)."""
    with autocast():
        logits = module(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=positions).logits
    logps, entropies = logprobs_and_entropy(scaled_logits(logits[:, 0], mask_id, temperature))
    return logps.gather(-1, targets[:, None])[:, 0], entropies


def score_canvases(
    module,
    canvases: ARScoringCanvases,
    *,
    mask_id: int,
    temperature: float = 1.0,
    num_forwards: int | None = None,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
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
        args = (module, chunk.input_ids, chunk.attention_mask, chunk.positions, chunk.targets)
        kwargs = dict(mask_id=mask_id, temperature=temperature, autocast=autocast)
        if torch.is_grad_enabled():
            logps, entropies = checkpoint(chunk_logps, *args, **kwargs, use_reentrant=False)
        else:
            logps, entropies = chunk_logps(*args, **kwargs)
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
