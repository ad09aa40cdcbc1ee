"""Canvases the trainer feeds the model.

`ARScoringCanvases` turns a TRL batch `[prompt | completion]` into the autoregressive-order scoring views of
JustGRPO: for completion token j of row b, the canvas `[prompt_b | c_b,<j | MASK x (L - j)]` with
`L = max_completion_length`, whose logits at position `P + j - shift` give `log pi(c_j | prompt, c_<j)`.
Only the (row, j) pairs that the loss uses are built, packed across rows into chunks of a fixed size, one chunk
materialised at a time.
"""

from dataclasses import dataclass

import torch


@dataclass
class ScoringChunk:
    """One packed chunk: `input_ids`/`attention_mask` `[C, P + L]`, read `positions [C, 1]`, and where each
    canvas's log-prob goes in the `[B, T]` output (`rows`, `cols`) together with its `targets`."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    positions: torch.Tensor
    targets: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor


class ARScoringCanvases:
    """Lazily packed AR-order scoring canvases for a batch.

    Args:
        prompt_ids, prompt_mask: `[B, P]`, left-padded.
        completion_ids: `[B, T]`, right-padded, `T <= gen_length`.
        score_mask: `[B, T]`, 1 where a log-prob is needed (TRL's completion mask).
        gen_length: `L`, the rollout's canvas length (`max_completion_length`); trailing masks are part of the input
            of a bidirectional model, so the canvas is always this long.
        mask_id: the mask token id.
        chunk_size: canvases per chunk.
        logit_shift: 0 for LLaDA, 1 for Dream-style models.
        pairs: optional explicit `(rows, cols)` to score instead of `score_mask.nonzero()` (JustGRPO-Fast).
    """

    def __init__(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        completion_ids: torch.Tensor,
        score_mask: torch.Tensor,
        *,
        gen_length: int,
        mask_id: int,
        chunk_size: int,
        logit_shift: int = 0,
    ):
        batch, completion_width = completion_ids.shape
        if completion_width > gen_length:
            raise ValueError(
                f"Completions are {completion_width} tokens long but the canvas holds max_completion_length="
                f"{gen_length}; score with the max_completion_length used for the rollouts."
            )
        if chunk_size < 1:
            raise ValueError(f"logprob_chunk_size must be >= 1, got {chunk_size}.")
        padding = completion_ids.new_full((batch, gen_length - completion_width), mask_id)
        self.prompt_ids, self.prompt_mask = prompt_ids, prompt_mask
        self.batch_size, self.completion_width = batch, completion_width
        self.completions = torch.cat([completion_ids, padding], dim=1)  # [B, L]
        self.gen_length, self.mask_id, self.chunk_size, self.logit_shift = gen_length, mask_id, chunk_size, logit_shift
        self.rows, self.cols = score_mask.nonzero(as_tuple=True)

    def __len__(self) -> int:
        """Number of chunks."""
        return -(-self.rows.numel() // self.chunk_size)

    @property
    def num_canvases(self) -> int:
        return self.rows.numel()

    def chunk(self, index: int) -> ScoringChunk:
        start = index * self.chunk_size
        rows, cols = self.rows[start : start + self.chunk_size], self.cols[start : start + self.chunk_size]
        return self.views(rows, cols)

    def views(self, rows: torch.Tensor, cols: torch.Tensor) -> ScoringChunk:
        """The canvases for explicit (row, col) pairs."""
        slots = torch.arange(self.gen_length, device=cols.device)
        completion = self.completions[rows].masked_fill(slots[None, :] >= cols[:, None], self.mask_id)
        prompt_width = self.prompt_ids.size(1)
        input_ids = torch.cat([self.prompt_ids[rows], completion], dim=1)
        attention_mask = torch.cat([self.prompt_mask[rows], torch.ones_like(completion)], dim=1)
        return ScoringChunk(
            input_ids=input_ids,
            attention_mask=attention_mask,
            positions=(prompt_width + cols - self.logit_shift)[:, None],
            targets=self.completions[rows, cols],
            rows=rows,
            cols=cols,
        )
