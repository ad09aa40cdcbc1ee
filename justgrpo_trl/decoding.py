"""Samplers for masked diffusion LMs, as pure functions of (model, prompts).

They know nothing of TRL: the trainer's rollouts and the evaluation harness share them. Every sampler works on a
*canvas* `[left-padded prompt | MASK x gen_length]` with a key-padding attention mask, reads logits only at the
positions it needs (never `[B, S, V]`), excludes the mask token from every softmax, and counts forward passes (NFE).
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
    nfe: int = field(default=0, metadata={"help": "Number of model forward passes."})


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


def filter_top_k_top_p(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Standard top-k / nucleus filtering of (already scaled) logits; filtered entries become `-inf`."""
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        remove = cumulative - torch.softmax(sorted_logits, dim=-1) >= top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits


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
    logit_shift: int = 0,
    generator: torch.Generator | None = None,
) -> DecodeOutput:
    """Autoregressive-order decoding of a masked diffusion LM (JustGRPO's rollout).

    Step j runs the canvas `[prompt | c_<j | MASK x (gen_length - j)]` once, reads the logits that score slot j
    (position `P + j - logit_shift`), draws token j and writes it in. This is LLaDA's sampler with
    `block_length=1, steps=gen_length`. A row leaves the batch at its first stop token; the loop ends when all rows
    have stopped or `gen_length` tokens were drawn. Recorded log-probs use the temperature-scaled distribution
    without top-k/top-p filtering, i.e. exactly what `JustGRPOTrainer` scores.
    """
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = left_pad(prompts, pad_id, device=device)
    canvas, attention_mask = build_canvas(prompt_ids, prompt_mask, gen_length, mask_id)
    prompt_width, batch = prompt_ids.size(1), len(prompts)
    stop = torch.tensor(list(stop_ids), device=device)
    tokens = torch.full((batch, gen_length), pad_id, dtype=torch.long, device=device)
    logps = torch.zeros((batch, gen_length), dtype=torch.float32, device=device)
    entropies = torch.zeros((batch, gen_length), dtype=torch.float32, device=device)
    lengths = torch.full((batch,), gen_length, dtype=torch.long, device=device)
    active = torch.arange(batch, device=device)
    nfe = 0
    for step in range(gen_length):
        if active.numel() == 0:
            break
        position = torch.full((active.numel(), 1), prompt_width + step - logit_shift, device=device)
        logits = forward_logits(model, canvas[active], attention_mask[active], position)[:, 0]
        nfe += 1
        logits = scaled_logits(logits, mask_id, temperature if temperature > 0 else 1.0)
        token = sample_tokens(logits, temperature, generator, top_k, top_p)
        step_logps, step_entropy = logprobs_and_entropy(logits)
        tokens[active, step] = token
        logps[active, step] = step_logps.gather(-1, token[:, None])[:, 0]
        entropies[active, step] = step_entropy
        canvas[active, prompt_width + step] = token
        finished = torch.isin(token, stop)
        lengths[active[finished]] = step + 1
        active = active[~finished]
    lengths = lengths.tolist()
    return DecodeOutput(
        completion_ids=[row[:n] for row, n in zip(tokens.tolist(), lengths)],
        logprobs=[row[:n] for row, n in zip(logps.tolist(), lengths)],
        entropies=[row[:n] for row, n in zip(entropies.tolist(), lengths)],
        nfe=nfe,
    )
