"""Samplers for masked diffusion LMs, as pure functions of (model, prompts).

* `ar_decode`: autoregressive order, one token per forward (JustGRPO's rollout);
* `block_decode`: LLaDA's semi-autoregressive block sampler (low-confidence or random remasking, float64 Gumbel
  sampling, optional classifier-free guidance), step for step like LLaDA's `generate()`;
* `eb_decode`: the entropy-bounded sampler, which unmasks as many low-entropy slots per step as a budget allows.

They know nothing of TRL: the trainer's rollouts and the evaluation harness share them. Every sampler works on a
*canvas* `[left-padded prompt | MASK x gen_length]` with a key-padding attention mask, takes a batch of distinct
prompts, reads logits only at the positions it needs (never `[B, S, V]`), excludes the mask token from every softmax,
and counts forward passes (NFE). They return a `DecodeOutput`: each completion up to its first stop token, with the
log-prob and entropy of every token when it was chosen and the step at which it was unmasked.
"""

from collections.abc import Callable, Sequence

import torch

# The shared sampling primitives, re-exported: `decoding` is where users (and the evaluation harness) find them.
from .sampling import (
    ARRollout,
    DecodeOutput,
    SamplingFilter,
    build_canvas,
    cut_at_stop,
    filter_top_k_top_p,
    forward_logits,
    left_pad,
    logprobs_and_entropy,
    sample_tokens,
    scaled_logits,
)

__all__ = [
    "ARRollout",
    "DecodeOutput",
    "SamplingFilter",
    "ar_decode",
    "block_decode",
    "build_canvas",
    "cut_at_stop",
    "eb_decode",
    "filter_top_k_top_p",
    "forward_logits",
    "left_pad",
    "logprobs_and_entropy",
    "sample_tokens",
    "scaled_logits",
]


@torch.no_grad()
def ar_decode(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    gen_length: int,
    mask_id: int,
    stop_ids: Sequence[int],
    pad_id: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    logit_shift: int = 0,
    generator: torch.Generator | None = None,
    stop_early: bool = True,
    all_done: Callable[[bool], bool] | None = None,
) -> DecodeOutput:
    """Autoregressive-order decoding of a masked diffusion LM (JustGRPO's rollout).

    Step j runs the canvas `[prompt | c_<j | MASK x (gen_length - j)]` once, reads the logits that score slot j
    (position `P + j - logit_shift`), draws token j and writes it in. This is LLaDA's sampler with
    `block_length=1, steps=gen_length`. A row leaves the batch at its first stop token; the loop ends when all rows
    have stopped or `gen_length` tokens were drawn. Recorded log-probs and entropies are those of the distribution
    the token was drawn from: temperature-scaled, and truncated by top-k/top-p/min-p when set (`SamplingFilter`),
    i.e. exactly what `JustGRPOTrainer` scores.

    `all_done(local_done) -> bool` makes the processes of a sharded model (FSDP, ZeRO-3 without gathered weights)
    run the same number of forwards, since each forward gathers parameters collectively: it is called once per step
    on every process and says whether every process is done; a process whose rows have all stopped keeps running
    one-row forwards (their output unused) until then.

    `stop_early=False` is the JustGRPO reference's rollout: every row decodes all `gen_length` slots, past its first
    stop token too, and the returned lists hold all `gen_length` tokens (cut them with `cut_at_stop` for the answer).

    The approximate, cheaper rollout with a key/value cache is `cached_decoding.cached_ar_decode` (same arguments,
    plus the cache); `refresh_every=1` there is this rollout, token for token.
    """
    state = ARRollout(
        model, prompts, gen_length=gen_length, mask_id=mask_id, stop_ids=stop_ids, pad_id=pad_id,
        temperature=temperature, sampling=SamplingFilter.from_options(top_k, top_p, min_p), generator=generator,
        stop_early=stop_early,
    )  # fmt: skip
    for step in range(gen_length):
        active = state.active
        position = torch.full(
            (max(active.numel(), 1), 1), state.prompt_width + step - logit_shift, device=state.device
        )
        done_here = active.numel() == 0
        if done_here if all_done is None else all_done(done_here):
            break
        if done_here:  # another process still decodes, and its collective parameter gathers need this one's forward
            forward_logits(model, state.canvas[:1], state.attention_mask[:1], position)
            continue
        state.commit(step, forward_logits(model, state.canvas[active], state.attention_mask[active], position)[:, 0])
    return state.output()


# ----------------------------------------------------------------------------------------------------------------
# Parallel decoding: LLaDA's semi-autoregressive block sampler and the entropy-bounded (EB) sampler
# ----------------------------------------------------------------------------------------------------------------

REMASKING_STRATEGIES = ("low_confidence", "random")


def get_num_transfer_tokens(masked_counts: torch.Tensor, steps: int) -> torch.Tensor:
    """How many tokens each of `steps` steps unmasks, per row: `[B] -> [B, steps]`.

    LLaDA's linear schedule: `base = n // steps`, and the first `n % steps` steps unmask one more token.
    """
    counts = masked_counts.reshape(-1, 1).long()
    base, remainder = counts // steps, counts % steps
    extra = torch.arange(steps, device=counts.device)[None, :] < remainder
    return base + extra.long()


def gumbel_argmax(logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """LLaDA's sampler: `argmax exp(logits) / (-log U) ** temperature` in float64, i.e. a draw from
    `softmax(logits / temperature)` (low-precision Gumbel noise degrades masked diffusion samples). Temperature 0 is
    the plain argmax. The row maximum is subtracted before `exp`, which leaves the argmax unchanged."""
    if temperature == 0.0:
        return logits.argmax(-1)
    logits = logits.double()
    noise = torch.rand(logits.shape, dtype=torch.float64, device=logits.device, generator=generator)
    weights = (logits - logits.amax(-1, keepdim=True)).exp()
    return (weights / (-torch.log(noise)) ** temperature).argmax(-1)


def remasking_confidence(
    logits: torch.Tensor, tokens: torch.Tensor, remasking: str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Score `[..., K]` that decides which predictions are kept: `'low_confidence'` keeps the most probable
    predictions (`softmax(logits)[token]` in float64, before any temperature), `'random'` keeps random ones."""
    if remasking == "low_confidence":
        probs = torch.softmax(logits.double(), dim=-1)
        return probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    if remasking == "random":
        return torch.rand(tokens.shape, dtype=torch.float64, device=tokens.device, generator=generator)
    raise ValueError(f"remasking must be one of {REMASKING_STRATEGIES}, got {remasking!r}.")


def top_k_mask(scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the `k[row]` highest `scores` of each row; ties go to the leftmost position."""
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(
        -1, order, torch.arange(scores.size(-1), device=scores.device).expand_as(order)
    )
    return ranks < k.reshape(-1, 1)


def entropy_bounded_selection(entropy: torch.Tensor, candidates: torch.Tensor, gamma: float) -> torch.Tensor:
    """The EB rule (Ben-Hamu et al., 2025): which candidate positions to unmask together at one step.

    Candidates are sorted by increasing entropy and the longest prefix is taken whose entropies sum, minus the
    largest of them, to at most `gamma`. Sorted ascending, that is the prefix whose entropies *before* its last
    element sum to at most `gamma`, so the first (lowest-entropy) candidate is always taken. Ties go to the leftmost
    position. Rows without candidates select nothing.

    Args:
        entropy: `[B, K]` entropy of each position's predictive distribution.
        candidates: `[B, K]` boolean, the still-masked positions allowed at this step.
        gamma: The entropy budget, `>= 0`.
    """
    scores = entropy.double().masked_fill(~candidates, float("inf"))
    order = torch.argsort(scores, dim=-1, stable=True)
    sorted_scores, sorted_valid = scores.gather(-1, order), candidates.gather(-1, order)
    lower = torch.cumsum(sorted_scores, dim=-1)[:, :-1]  # finite over the valid entries, which sort first
    before = torch.cat([torch.zeros_like(sorted_scores[:, :1]), lower], dim=-1)
    chosen_sorted = sorted_valid & (before <= gamma)
    return torch.zeros_like(candidates).scatter(-1, order, chosen_sorted)


class _DenoisingCanvas:
    """The state every parallel sampler shares: the canvas `[left-padded prompt | generation slots]`, its attention
    mask, and what was recorded for each slot when it was unmasked (token log-prob, entropy, step).

    One step reads the logits of a few slots per row (`logits_at`), then writes the chosen predictions (`commit`).
    """

    def __init__(self, model, prompts, gen_length: int, mask_id: int, pad_id: int, logit_shift: int):
        self.model, self.mask_id, self.gen_length, self.logit_shift = model, mask_id, gen_length, logit_shift
        device = next(model.parameters()).device
        prompt_ids, self.prompt_mask = left_pad(prompts, pad_id, device=device)
        self.canvas, self.attention_mask = build_canvas(prompt_ids, self.prompt_mask, gen_length, mask_id)
        self.gen_start, batch = prompt_ids.size(1), len(prompts)
        self.logps = torch.zeros((batch, gen_length), dtype=torch.float32, device=device)
        self.entropies = torch.zeros((batch, gen_length), dtype=torch.float32, device=device)
        self.steps = torch.full((batch, gen_length), -1, dtype=torch.long, device=device)
        self.row_nfe = torch.zeros(batch, dtype=torch.long, device=device)
        self.nfe = 0

    @property
    def generated(self) -> torch.Tensor:
        return self.canvas[:, self.gen_start :]

    def masked(self, rows: torch.Tensor) -> torch.Tensor:
        return self.generated[rows] == self.mask_id

    def completed(self, rows: torch.Tensor, stop: torch.Tensor) -> torch.Tensor:
        """Rows whose answer can no longer change: no slot is masked up to and including their first stop token."""
        generated = self.generated[rows]
        boundary = (generated == self.mask_id) | torch.isin(generated, stop)
        first = boundary.long().argmax(-1)
        first_is_stop = torch.isin(generated.gather(-1, first[:, None])[:, 0], stop)
        return ~boundary.any(-1) | first_is_stop

    def masked_slots(self, rows: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> tuple:
        """The still-masked slots in `[start, end)` of each row, left-aligned: `(slots [b, K], valid [b, K])`.

        K is the largest count over the rows; a row with fewer pads with slots flagged invalid.
        """
        width = int((end - start).max())
        slots = start[:, None] + torch.arange(width, device=start.device)[None, :]
        inside = slots < end[:, None]
        slots = slots.clamp(max=self.gen_length - 1)
        is_masked = self.masked(rows).gather(-1, slots) & inside
        keep = int(is_masked.sum(-1).max())
        order = torch.argsort((~is_masked).to(torch.int8), dim=-1, stable=True)[:, :keep]
        return slots.gather(-1, order), is_masked.gather(-1, order)

    def logits_at(self, rows: torch.Tensor, slots: torch.Tensor, cfg_scale: float) -> torch.Tensor:
        """fp32 logits `[b, K, V]` scoring `slots` of `rows` (one forward of their canvases), the mask token excluded.

        With `cfg_scale > 0`, LLaDA's unsupervised classifier-free guidance: the same canvas with every prompt token
        replaced by the mask is run too (in the same batch) and `logits = un + (cfg_scale + 1) * (cond - un)`.
        """
        canvas, attention_mask = self.canvas[rows], self.attention_mask[rows]
        positions = self.gen_start + slots - self.logit_shift
        if cfg_scale > 0:
            unprompted = canvas.clone()
            prompt = self.prompt_mask[rows].bool()
            unprompted[:, : self.gen_start] = unprompted[:, : self.gen_start].masked_fill(prompt, self.mask_id)
            both = forward_logits(
                self.model,
                torch.cat([canvas, unprompted]),
                torch.cat([attention_mask, attention_mask]),
                torch.cat([positions, positions]),
            ).float()
            conditional, unconditional = both.chunk(2)
            logits, evaluations = unconditional + (cfg_scale + 1) * (conditional - unconditional), 2
        else:
            logits, evaluations = forward_logits(self.model, canvas, attention_mask, positions).float(), 1
        self.nfe += evaluations
        self.row_nfe[rows] += evaluations
        return scaled_logits(logits, self.mask_id, 1.0)

    def commit(self, rows, slots, chosen, tokens, logps, entropies, step: int) -> None:
        """Write `tokens` into the `chosen` slots and record their log-prob, entropy and step."""
        row_index = rows[:, None].expand_as(slots)[chosen]
        slot_index = slots[chosen]
        self.canvas[row_index, self.gen_start + slot_index] = tokens[chosen]
        self.logps[row_index, slot_index] = logps[chosen]
        self.entropies[row_index, slot_index] = entropies[chosen]
        self.steps[row_index, slot_index] = step

    def output(self, stop: torch.Tensor) -> DecodeOutput:
        """Each row up to and including its first stop token (the whole generation if it has none)."""
        generated = self.generated
        is_stop = torch.isin(generated, stop)
        lengths = torch.where(is_stop.any(-1), is_stop.long().argmax(-1) + 1, self.gen_length).tolist()
        return DecodeOutput(
            completion_ids=[row[:n] for row, n in zip(generated.tolist(), lengths)],
            logprobs=[row[:n] for row, n in zip(self.logps.tolist(), lengths)],
            entropies=[row[:n] for row, n in zip(self.entropies.tolist(), lengths)],
            nfe=self.nfe,
            row_nfe=self.row_nfe.tolist(),
            unmask_steps=[row[:n] for row, n in zip(self.steps.tolist(), lengths)],
            canvas_ids=generated.tolist(),
            canvas_steps=self.steps.tolist(),
            canvas_logprobs=self.logps.tolist(),
            canvas_entropies=self.entropies.tolist(),
        )


def _predict(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw a token at every read slot, with its log-prob and the entropy of the distribution it was drawn from
    (temperature-scaled; at temperature 0, the model's own distribution, as in `ar_decode`)."""
    tokens = gumbel_argmax(logits, temperature, generator)
    logps, entropy = logprobs_and_entropy(logits / temperature if temperature > 0 else logits)
    return tokens, logps.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), entropy


def _check_common(temperature: float, cfg_scale: float, logit_shift: int) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}.")
    if cfg_scale < 0:
        raise ValueError(f"cfg_scale must be >= 0, got {cfg_scale}.")
    if logit_shift not in (0, 1):
        raise ValueError(f"logit_shift must be 0 or 1, got {logit_shift}.")


@torch.no_grad()
def block_decode(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    gen_length: int,
    block_length: int,
    steps: int,
    mask_id: int,
    stop_ids: Sequence[int],
    pad_id: int,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    cfg_scale: float = 0.0,
    logit_shift: int = 0,
    early_stop: bool = False,
    generator: torch.Generator | None = None,
) -> DecodeOutput:
    """LLaDA's semi-autoregressive block sampler, for a batch of distinct (left-padded) prompts.

    The generation is cut into `gen_length / block_length` blocks decoded left to right, each in
    `steps / num_blocks` steps. At block start `get_num_transfer_tokens` fixes how many tokens each step unmasks.
    A step runs the canvas once, predicts every masked slot of the current block (`gumbel_argmax`), and keeps the
    predictions with the highest `remasking_confidence`; the rest stay masked. Decoded tokens are never remasked.
    This is LLaDA's `generate()` step for step, except that (a) only the current block's masked slots are read from
    the model (the only candidates: later blocks have confidence -inf there), (b) the mask token is never
    predicted, (c) a step whose schedule unmasks nothing is skipped rather than run.

    Args:
        early_stop: Drop a row from the batch once its answer is final (every slot up to its first stop token is
            decoded) and stop when all are. The kept tokens are those of the full schedule at temperature 0 with
            low-confidence remasking; with sampling, the distribution is unchanged but the random draws differ.
            Off by default: LLaDA's reference decodes the whole canvas.

    Returns:
        A `DecodeOutput`; `unmask_steps` holds the schedule step (0 .. steps - 1) of each token.
    """
    _check_common(temperature, cfg_scale, logit_shift)
    if gen_length % block_length != 0:
        raise ValueError(f"gen_length ({gen_length}) must be divisible by block_length ({block_length}).")
    num_blocks = gen_length // block_length
    if steps % num_blocks != 0 or steps < num_blocks:
        raise ValueError(f"steps ({steps}) must be a positive multiple of the number of blocks ({num_blocks}).")
    if remasking not in REMASKING_STRATEGIES:
        raise ValueError(f"remasking must be one of {REMASKING_STRATEGIES}, got {remasking!r}.")
    steps_per_block = steps // num_blocks
    state = _DenoisingCanvas(model, prompts, gen_length, mask_id, pad_id, logit_shift)
    device = state.canvas.device
    stop = torch.tensor(list(stop_ids), device=device)
    every_row = rows = torch.arange(len(prompts), device=device)
    for block in range(num_blocks):
        first, last = block * block_length, (block + 1) * block_length
        start, end = torch.full_like(every_row, first), torch.full_like(every_row, last)
        schedule = get_num_transfer_tokens(state.masked(every_row)[:, first:last].sum(-1), steps_per_block)
        for inner in range(steps_per_block):
            if early_stop:
                rows = rows[~state.completed(rows, stop)]
            if rows.numel() == 0:
                return state.output(stop)
            k = schedule[rows, inner]
            if not bool(k.any()):
                continue
            slots, valid = state.masked_slots(rows, start[rows], end[rows])
            logits = state.logits_at(rows, slots, cfg_scale)
            tokens, logps, entropy = _predict(logits, temperature, generator)
            confidence = remasking_confidence(logits, tokens, remasking, generator).masked_fill(~valid, float("-inf"))
            chosen = top_k_mask(confidence, k) & valid
            state.commit(rows, slots, chosen, tokens, logps, entropy, step=block * steps_per_block + inner)
    return state.output(stop)


@torch.no_grad()
def eb_decode(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    gen_length: int,
    gamma: float,
    mask_id: int,
    stop_ids: Sequence[int],
    pad_id: int,
    block_length: int | None = None,
    temperature: float = 0.0,
    cfg_scale: float = 0.0,
    logit_shift: int = 0,
    early_stop: bool = False,
    generator: torch.Generator | None = None,
) -> DecodeOutput:
    """The entropy-bounded (EB) sampler (Ben-Hamu et al., 2025), for a batch of distinct (left-padded) prompts.

    Each step runs the canvas once, draws a token at every masked slot of the row's current block
    (`gumbel_argmax`), and unmasks the lowest-entropy slots allowed by `entropy_bounded_selection` (at least one):
    the number of tokens per step adapts to how certain the model is. A row's current block is the first one that
    still has a masked slot; `block_length=None` (or `gen_length`) makes the sampler fully parallel. A row leaves the
    batch once it is fully decoded (or, with `early_stop`, once its answer is final, see `block_decode`).

    Returns:
        A `DecodeOutput`; `unmask_steps` holds the step at which each token was unmasked, `row_nfe` the number of
        forward passes each row needed.
    """
    _check_common(temperature, cfg_scale, logit_shift)
    block_length = block_length or gen_length
    if gen_length % block_length != 0:
        raise ValueError(f"gen_length ({gen_length}) must be divisible by block_length ({block_length}).")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}.")
    state = _DenoisingCanvas(model, prompts, gen_length, mask_id, pad_id, logit_shift)
    stop = torch.tensor(list(stop_ids), device=state.canvas.device)
    rows = torch.arange(len(prompts), device=state.canvas.device)
    for step in range(gen_length):
        rows = rows[state.masked(rows).any(-1)]
        if early_stop:
            rows = rows[~state.completed(rows, stop)]
        if rows.numel() == 0:
            break
        first_masked = state.masked(rows).long().argmax(-1)
        start = torch.div(first_masked, block_length, rounding_mode="floor") * block_length
        slots, valid = state.masked_slots(rows, start, start + block_length)
        logits = state.logits_at(rows, slots, cfg_scale)
        tokens, logps, entropy = _predict(logits, temperature, generator)
        chosen = entropy_bounded_selection(entropy, valid, gamma)
        state.commit(rows, slots, chosen, tokens, logps, entropy, step=step)
    return state.output(stop)
