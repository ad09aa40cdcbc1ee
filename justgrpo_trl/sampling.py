"""What every sampler of a masked diffusion LM shares: the canvas, the distribution a token is drawn from, the draw,
and the state of an AR-order rollout.

The exact AR sampler (`decoding.ar_decode`), the cached one (`cached_decoding.cached_ar_decode`) and the parallel
samplers (`decoding.block_decode`, `decoding.eb_decode`) all build on these; the scorers (`estimators/scoring.py`)
apply the same `scaled_logits` and `SamplingFilter`, so that a trained log-prob is the one the sampler drew from.
This module imports no other module of the package.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class DecodeOutput:
    """What a sampler returns, one entry per prompt, in the prompts' order."""

    completion_ids: list[list[int]] = field(metadata={"help": "Tokens up to and including the first stop token."})
    logprobs: list[list[float]] = field(metadata={"help": "Sampling log-prob of each returned token."})
    entropies: list[list[float]] = field(metadata={"help": "Entropy of the distribution each token was drawn from."})
    nfe: int = field(
        default=0,
        metadata={
            "help": "Number of model forward passes (network function evaluations) of the whole batch. With "
            "classifier-free guidance a step evaluates the conditional and the unconditional canvas, which counts 2."
        },
    )
    row_nfe: list[int] = field(
        default_factory=list,
        metadata={"help": "Forward passes each row took part in (rows leave the batch once they are done)."},
    )
    unmask_steps: list[list[int]] = field(
        default_factory=list,
        metadata={
            "help": "Decoding step (0-based) at which each returned token was unmasked; in AR order it is the "
            "token's position. Tokens unmasked at the same step share a value."
        },
    )
    canvas_ids: list[list[int]] = field(
        default_factory=list,
        metadata={
            "help": "Parallel samplers only: the whole generation region (`gen_length` slots, past the first stop "
            "token too), which any intermediate state of the trajectory is rebuilt from."
        },
    )
    canvas_steps: list[list[int]] = field(
        default_factory=list,
        metadata={"help": "Parallel samplers only: the step each slot of `canvas_ids` was unmasked at (-1: never)."},
    )
    canvas_logprobs: list[list[float]] = field(
        default_factory=list,
        metadata={"help": "Parallel samplers only: the sampling log-prob of each slot of `canvas_ids`."},
    )
    canvas_entropies: list[list[float]] = field(
        default_factory=list,
        metadata={"help": "Parallel samplers only: the entropy each slot of `canvas_ids` was drawn from."},
    )


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into `(ids [B, P], attention_mask [B, P])`."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(sequences), width), dtype=torch.long, device=device)
    for row, seq in enumerate(sequences):
        if len(seq):
            ids[row, width - len(seq) :] = torch.as_tensor(seq, dtype=torch.long, device=device)
            mask[row, width - len(seq) :] = 1
    return ids, mask


def build_canvas(
    prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, gen_length: int, mask_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`[prompt | MASK x gen_length]` and its attention mask (every generation slot is attended, masked or not)."""
    batch = prompt_ids.size(0)
    masks = torch.full((batch, gen_length), mask_id, dtype=prompt_ids.dtype, device=prompt_ids.device)
    ones = torch.ones((batch, gen_length), dtype=prompt_mask.dtype, device=prompt_mask.device)
    return torch.cat([prompt_ids, masks], dim=1), torch.cat([prompt_mask, ones], dim=1)


def scaled_logits(logits: torch.Tensor, mask_id: int, temperature: float = 1.0) -> torch.Tensor:
    """fp32 logits divided by the temperature (as TRL does), with the mask token made impossible."""
    logits = logits.float()
    if temperature not in (0.0, 1.0):
        logits = logits / temperature
    return logits.index_fill(-1, torch.tensor([mask_id], device=logits.device), float("-inf"))


def logprobs_and_entropy(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`log_softmax` and entropy over the last dim; the `-inf` (mask) entries contribute 0, never NaN, and neither
    does their gradient (`p * log p` is never evaluated at `log p = -inf`)."""
    logps = torch.log_softmax(logits, dim=-1)
    probs = logps.exp()
    entropy = -(probs * logps.masked_fill(probs == 0, 0.0)).sum(-1)
    return logps, entropy


@dataclass(frozen=True)
class SamplingFilter:
    """Truncation of the (temperature-scaled) sampling distribution: top-k, nucleus (top-p) and min-p, applied in
    that order, as transformers' logits warpers apply them. Filtered entries become `-inf`.

    The trainer applies the same filter when it scores a completion, so that the log-probs are those of the
    distribution the sampler drew from. A token the scorer would filter out but that was sampled (a float-level tie
    at the boundary) is kept (`keep`), so a sampled token never scores `-inf`.
    """

    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None

    @classmethod
    def from_options(cls, top_k: int | None, top_p: float | None, min_p: float | None) -> "SamplingFilter | None":
        """The filter of TRL's options (`top_k=0` and `top_p=1` mean off), or None when nothing is filtered."""
        options = cls(top_k=top_k or None, top_p=top_p if top_p is not None and top_p < 1.0 else None, min_p=min_p)
        return options if (options.top_k or options.top_p is not None or options.min_p is not None) else None

    def __call__(self, logits: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """`logits [..., V]` with the filtered entries at `-inf`; `keep [...]` token ids are never filtered."""
        removed = torch.zeros_like(logits, dtype=torch.bool)
        if self.top_k:
            kth = torch.topk(logits, min(self.top_k, logits.size(-1)), dim=-1).values[..., -1:]
            removed |= logits < kth
        if self.top_p is not None:
            sorted_logits, order = torch.sort(logits.masked_fill(removed, float("-inf")), descending=True, dim=-1)
            probs = torch.softmax(sorted_logits, dim=-1)
            beyond = probs.cumsum(-1) - probs >= self.top_p  # keep the token that crosses top_p
            removed |= beyond.scatter(-1, order, beyond)
        if self.min_p is not None:
            probs = torch.softmax(logits.masked_fill(removed, float("-inf")), dim=-1)
            removed |= probs < self.min_p * probs.amax(-1, keepdim=True)
        if keep is not None:
            removed = removed.scatter(-1, keep[..., None], False)
        return logits.masked_fill(removed, float("-inf"))


def filter_top_k_top_p(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Top-k / nucleus filtering of (already scaled) logits; filtered entries become `-inf`."""
    sampling = SamplingFilter.from_options(top_k, top_p, None)
    return logits if sampling is None else sampling(logits)


def sample_tokens(
    logits: torch.Tensor,
    temperature: float,
    generator: torch.Generator | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """Greedy at temperature 0; otherwise an exact categorical draw in float64 from the (filtered) softmax.

    `logits` are already divided by the temperature (see `scaled_logits`).
    """
    if temperature == 0.0:
        return logits.argmax(-1)
    logits = filter_top_k_top_p(logits, top_k, top_p)
    probs = torch.softmax(logits.double(), dim=-1)
    flat = probs.reshape(-1, probs.size(-1))
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


def forward_logits(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, positions: torch.Tensor
) -> torch.Tensor:
    """Logits `[B, K, V]` at per-row `positions [B, K]` only."""
    return model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=positions).logits


def cut_at_stop(ids: Sequence[int], stop_ids: Sequence[int]) -> list[int]:
    """`ids` up to and including its first stop token (all of it if there is none)."""
    for index, token in enumerate(ids):
        if token in stop_ids:
            return list(ids[: index + 1])
    return list(ids)


class ARRollout:
    """The state of an AR-order rollout, shared by the exact sampler (`ar_decode`) and the cached one
    (`cached_decoding.cached_ar_decode`): the canvas `[prompt | MASK x L]` (left-padded prompts), the rows still
    decoding, and what is recorded per token. A decoder computes the logits of the current slot of every active row
    and hands them to `commit`."""

    def __init__(
        self,
        model,
        prompts: Sequence[Sequence[int]],
        *,
        gen_length: int,
        mask_id: int,
        stop_ids: Sequence[int],
        pad_id: int,
        temperature: float,
        sampling: SamplingFilter | None,
        generator: torch.Generator | None,
        stop_early: bool = True,
    ):
        self.device = device = next(model.parameters()).device
        prompt_ids, prompt_mask = left_pad(prompts, pad_id, device=device)
        self.canvas, self.attention_mask = build_canvas(prompt_ids, prompt_mask, gen_length, mask_id)
        self.prompt_width, batch = prompt_ids.size(1), len(prompts)
        self.mask_id, self.temperature, self.generator, self.stop_early = mask_id, temperature, generator, stop_early
        self.sampling = sampling if temperature > 0 else None
        self.stop = torch.tensor(list(stop_ids), device=device)
        self.tokens = torch.full((batch, gen_length), pad_id, dtype=torch.long, device=device)
        self.logps = torch.zeros((batch, gen_length), dtype=torch.float32, device=device)
        self.entropies = torch.zeros((batch, gen_length), dtype=torch.float32, device=device)
        self.lengths = torch.full((batch,), gen_length, dtype=torch.long, device=device)
        self.active = torch.arange(batch, device=device)
        self.nfe = 0

    def commit(self, step: int, logits: torch.Tensor) -> torch.Tensor:
        """Draw token `step` of every active row from its slot's logits `[A, V]` (temperature-scaled, the mask token
        excluded, truncated by `sampling`), record its log-prob and entropy, write it into the canvas, and (with
        `stop_early`) drop the rows that drew a stop token. Returns which active rows finished."""
        active = self.active
        self.nfe += 1
        logits = scaled_logits(logits, self.mask_id, self.temperature if self.temperature > 0 else 1.0)
        if self.sampling is not None:
            logits = self.sampling(logits)
        token = sample_tokens(logits, self.temperature, self.generator)
        step_logps, step_entropy = logprobs_and_entropy(logits)
        self.tokens[active, step] = token
        self.logps[active, step] = step_logps.gather(-1, token[:, None])[:, 0]
        self.entropies[active, step] = step_entropy
        self.canvas[active, self.prompt_width + step] = token
        finished = torch.isin(token, self.stop) if self.stop_early else torch.zeros_like(token, dtype=torch.bool)
        if self.stop_early:
            self.lengths[active[finished]] = step + 1
            self.active = active[~finished]
        return finished

    def output(self) -> DecodeOutput:
        lengths = self.lengths.tolist()
        return DecodeOutput(
            completion_ids=[row[:n] for row, n in zip(self.tokens.tolist(), lengths)],
            logprobs=[row[:n] for row, n in zip(self.logps.tolist(), lengths)],
            entropies=[row[:n] for row, n in zip(self.entropies.tolist(), lengths)],
            nfe=self.nfe,
            row_nfe=lengths,
            unmask_steps=[list(range(n)) for n in lengths],
        )
