"""Canvases the trainer feeds the model.

`ARScoringCanvases` turns a TRL batch `[prompt | completion]` into the autoregressive-order scoring views of
JustGRPO: for completion token j of row b, the canvas `[prompt_b | c_b,<j | MASK x (L - j)]` with
`L = max_completion_length`, whose logits at position `P + j - shift` give `log pi(c_j | prompt, c_<j)`.
Only the (row, j) pairs that the loss uses are built, packed across rows into chunks of a fixed size, one chunk
materialised at a time. Given the unmasking steps of a parallel sampler's trajectory instead of the AR order, the
same views rebuild the state in which each token was unmasked (AGRPO).

`one_step_canvas` is diffu-GRPO's single view: the completion fully masked, prompt tokens masked at random.
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
        canvas_ids, unmask_steps: optional `[B, L]` trajectory of a parallel sampler (every generated slot, and the
            step it was unmasked at, -1 if never). Token j is then scored in the state just before its step: the
            slots unmasked at earlier steps are visible, every other slot is masked. Default: the AR order.
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
        canvas_ids: torch.Tensor | None = None,
        unmask_steps: torch.Tensor | None = None,
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
        self.completions = torch.cat([completion_ids, padding], dim=1) if canvas_ids is None else canvas_ids  # [B, L]
        self.unmask_steps = unmask_steps
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
        if self.unmask_steps is None:  # AR order: slots before j are visible
            slots = torch.arange(self.gen_length, device=cols.device)
            hidden = slots[None, :] >= cols[:, None]
        else:  # the sampler's order: slots unmasked at an earlier step than token j are visible
            steps = self.unmask_steps[rows]
            hidden = (steps < 0) | (steps >= steps.gather(1, cols[:, None]))
        completion = self.completions[rows].masked_fill(hidden, self.mask_id)
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


def draw_prompt_mask_patterns(
    rows: int, iterations: int, width: int, p_mask_prompt: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """diffu-GRPO's prompt masks: `[rows, iterations, width]` booleans, True with probability `p_mask_prompt`, drawn
    independently for every row and every inner iteration, as d1 draws `torch.rand((b, l))` per iteration."""
    return torch.rand((iterations, rows, width), generator=generator).transpose(0, 1) < p_mask_prompt


def one_step_canvas(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    gen_length: int,
    mask_id: int,
    pattern: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """diffu-GRPO's view: `[prompt, its tokens masked where the row's pattern says | MASK x gen_length]` and its
    attention mask. `pattern` is `[B, P]` (one pattern per row, `draw_prompt_mask_patterns`); padding positions are
    never masked."""
    masked = pattern.to(prompt_ids.device) & prompt_mask.bool()
    masked_prompt = prompt_ids.masked_fill(masked, mask_id)
    completion = prompt_ids.new_full((prompt_ids.size(0), gen_length), mask_id)
    return torch.cat([masked_prompt, completion], dim=1), torch.cat([prompt_mask, torch.ones_like(completion)], dim=1)


class MaskedDiffusionSFTCollator:
    """Noising collator for masked-diffusion SFT (LLaDA's / d1's recipe).

    Each example holds `prompt_ids` and `completion_ids` (token lists; the completion already ends with its stop
    token). The batch is laid out `[prompt | completion | padding]`, right-padded, and noised per sequence:
    `t ~ U(eps, 1]`, each completion token replaced by the mask token with probability `t`. The prompt and the padding
    are never masked; padding is not attended either, so it is exactly invisible to the model (RoPE is relative).

    With `fill_id` set (LLaDA's SFT), every completion is first extended with `fill_id` (EOS) up to `fill_length`, or
    to the batch's longest completion when `fill_length` is None. The fill tokens count as completion tokens: they are
    masked and supervised like the rest, so the model learns to emit EOS after its answer and is trained on canvases as
    long as the ones it decodes (`[prompt | answer | MASK ...]`, `max_completion_length` slots).

    Returns `input_ids` (noised), `attention_mask`, `labels` (the clean token where masked, -100 elsewhere), `p_mask`
    (`t` per sequence, `[B]`) and `answer_lengths` (completion tokens per sequence, fill included, `[B]`).

    Args:
        mask_id: the mask token id.
        pad_id: the id written at padding positions (never attended, never masked).
        eps: lower bound of the masking rate, so that `1 / t` stays bounded.
        fill_id: token that fills completions up to `fill_length` (None: no fill).
        fill_length: completion length after the fill; None fills to the batch's longest completion.
        generator: optional `torch.Generator` for the noise; the global RNG otherwise (seeded by `Trainer`).
    """

    def __init__(
        self,
        mask_id: int,
        pad_id: int,
        eps: float = 1e-3,
        fill_id: int | None = None,
        fill_length: int | None = None,
        generator: torch.Generator | None = None,
    ):
        if not 0.0 < eps < 1.0:
            raise ValueError(f"eps must be in (0, 1), got {eps}.")
        self.mask_id, self.pad_id, self.eps = mask_id, pad_id, eps
        self.fill_id, self.fill_length, self.generator = fill_id, fill_length, generator

    def _completion(self, ids: list[int], width: int) -> list[int]:
        ids = list(ids)
        if self.mask_id in ids:
            raise ValueError(f"A completion contains the mask token (id {self.mask_id}); remove it from the data.")
        if self.fill_id is not None:
            if len(ids) > width:
                raise ValueError(f"A completion of {len(ids)} tokens is longer than fill_length={width}.")
            ids += [self.fill_id] * (width - len(ids))
        return ids

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        fill_width = self.fill_length or max(len(e["completion_ids"]) for e in examples)
        prompts = [list(e["prompt_ids"]) for e in examples]
        completions = [self._completion(e["completion_ids"], fill_width) for e in examples]
        width = max(len(p) + len(c) for p, c in zip(prompts, completions))
        batch = len(examples)
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        completion_mask = torch.zeros((batch, width), dtype=torch.bool)
        for row, (prompt, completion) in enumerate(zip(prompts, completions)):
            end = len(prompt) + len(completion)
            input_ids[row, :end] = torch.tensor(prompt + completion, dtype=torch.long)
            attention_mask[row, :end] = 1
            completion_mask[row, len(prompt) : end] = True

        # t in (eps, 1]: 1 - U[0, 1) lies in (0, 1].
        p_mask = self.eps + (1.0 - self.eps) * (1.0 - torch.rand(batch, generator=self.generator))
        noise = torch.rand((batch, width), generator=self.generator)
        masked = (noise < p_mask[:, None]) & completion_mask
        return {
            "input_ids": input_ids.masked_fill(masked, self.mask_id),
            "attention_mask": attention_mask,
            "labels": input_ids.masked_fill(~masked, -100),
            "p_mask": p_mask,
            "answer_lengths": completion_mask.sum(1),
        }
