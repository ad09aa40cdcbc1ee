"""AR-order rollouts with an approximate key/value cache: `decoding.ar_decode`'s rollout, cheaper and approximate.

The exact AR rollout (`ar_decode`) runs the whole canvas `[prompt | c_<j | MASK x (L - j)]`, `P + L` positions, for
every token. A masked diffusion LM is bidirectional, so no key or value can be reused exactly: writing token j changes
every position's hidden states in the layers above the first. The approximation (after Fast-dLLM and dKV-Cache) reuses
them anyway for a few steps:

* every `refresh_every` (r) tokens, a **refresh**: one full forward of the canvas, which also keeps every layer's keys
  and values (`LLaDAKVCache`); the token sampled at a refresh step is exact;
* in between, a forward of a **span** of positions only; the span's keys and values are recomputed (and written into
  the cache), the others are read from the cache as of the last refresh.

What the span is (s = the last refresh step, j = the current step, slots counted from the prompt's end `P`):

| `kind`   | `update='recompute'` (Fast-dLLM style)       | `update='append'` (dKV-Cache style, delayed caching)   |
|----------|----------------------------------------------|--------------------------------------------------------|
| `prefix` | `[P+s, S)`: the tokens since the refresh and | `[P+j-1, S)`: the token drawn last step and the whole |
|          | the whole masked suffix                      | suffix; earlier tokens stay as written when computed  |
| `dual`   | `[P+s, P+j]`: the tokens since the refresh   | `[P+j-1, P+j]`: the token drawn last step (cached from |
|          | and the current slot; the suffix is cached   | now on) and the current slot                           |

So `prefix` caches only the prompt and the tokens before the refresh (the masked suffix is recomputed every step),
`dual` caches the masked suffix as well; `dual` with a `lookahead` of k also recomputes the k masked positions after
the current slot (the span ends at `P+j+1+k`; with k >= L it is `prefix`); `recompute` recomputes every token drawn
since the refresh at every step, `append` computes each drawn token's keys and values once, one step after it was
drawn. With `refresh_every=1` every step is a refresh, whose op sequence is the exact forward's bit for bit, so the
rollout is the exact one token for token (tested).

The sampler records the log-prob and entropy of the distribution it drew from, as `ar_decode` does; with
`refresh_every > 1` these are approximate (`Estimator.sampling_logprobs_exact` is then False) and the trainer
corrects the policy gradient with importance weights (`cache_correction.py`).

The cached forward is the model's `forward_cached` (native LLaDA: `LLaDAModelLM.forward_cached`); it calls the
blocks' submodules directly, so it does not go through FSDP's or ZeRO-3's per-forward parameter gathering: with
sharded forwards the cache is refused.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .sampling import ARRollout, SamplingFilter

CACHE_KINDS = ("prefix", "dual")
CACHE_UPDATES = ("recompute", "append")


@dataclass(frozen=True)
class RolloutCache:
    """How an AR rollout caches keys and values (see the module docstring)."""

    kind: str = field(default="dual", metadata={"help": "'prefix' or 'dual' (prefix and masked suffix)."})
    refresh_every: int = field(default=4, metadata={"help": "r: a full forward every r tokens (1 = exact)."})
    update: str = field(
        default="recompute",
        metadata={"help": "'recompute': the tokens since the refresh are recomputed each step; 'append': once."},
    )
    lookahead: int = field(
        default=0,
        metadata={"help": "'dual': masked positions after the current slot recomputed at each step (0: none)."},
    )

    def __post_init__(self):
        if self.kind not in CACHE_KINDS:
            raise ValueError(f"rollout cache kind must be one of {CACHE_KINDS}, got {self.kind!r}.")
        if self.update not in CACHE_UPDATES:
            raise ValueError(f"rollout cache update must be one of {CACHE_UPDATES}, got {self.update!r}.")
        if self.refresh_every < 1:
            raise ValueError(f"rollout cache refresh_every must be >= 1, got {self.refresh_every}.")
        if self.lookahead < 0 or (self.lookahead and self.kind != "dual"):
            raise ValueError(
                f"rollout cache lookahead must be >= 0 and applies to kind 'dual' only (the 'prefix' cache recomputes "
                f"the whole masked suffix), got lookahead={self.lookahead} with kind {self.kind!r}."
            )

    @property
    def exact(self) -> bool:
        """Whether the rollout is the exact one (every step a refresh)."""
        return self.refresh_every == 1

    def span(self, prompt_width: int, refresh_step: int, step: int, seq_len: int, logit_shift: int) -> tuple:
        """`(start, end)` canvas positions recomputed at `step` (> `refresh_step`); it always holds the position
        that scores the current slot (`P + step - logit_shift`)."""
        since = prompt_width + (refresh_step if self.update == "recompute" else step - 1)
        end = seq_len if self.kind == "prefix" else min(seq_len, prompt_width + step + 1 + self.lookahead)
        read = prompt_width + step - logit_shift
        return min(since, read), max(end, read + 1)


def cached_model(model):
    """The module with `forward_cached` under PEFT wrappers, or an error naming the model class."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not hasattr(base, "forward_cached"):
        raise ValueError(
            f"A rollout cache needs a model with `forward_cached` (native LLaDA); {type(base).__name__} has none. "
            "Set rollout_cache=None."
        )
    return base


@torch.no_grad()
def cached_ar_decode(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    cache: RolloutCache,
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
):
    """`ar_decode` with an approximate key/value cache (module docstring); same arguments, same `DecodeOutput`.

    Rows leave the batch at their first stop token, as in `ar_decode` (their cache rows are dropped). `nfe` counts
    refreshes and cached forwards alike; `row_nfe` is each row's number of tokens, as in `ar_decode`.
    """
    lm = cached_model(model)
    state = ARRollout(
        model, prompts, gen_length=gen_length, mask_id=mask_id, stop_ids=stop_ids, pad_id=pad_id,
        temperature=temperature, sampling=SamplingFilter.from_options(top_k, top_p, min_p), generator=generator,
    )  # fmt: skip
    prompt_width, seq_len, device = state.prompt_width, state.canvas.size(1), state.device
    kv, refresh_step = None, 0
    for step in range(gen_length):
        active = state.active
        if active.numel() == 0:
            break
        read = prompt_width + step - logit_shift
        if step % cache.refresh_every == 0 or kv is None:
            keep = torch.full((active.numel(), 1), read, device=device)
            logits, kv = lm.forward_cached(state.canvas[active], state.attention_mask[active], 0, None, keep)
            refresh_step = step
        else:
            start, end = cache.span(prompt_width, refresh_step, step, seq_len, logit_shift)
            keep = torch.full((active.numel(), 1), read - start, device=device)
            logits, kv = lm.forward_cached(
                state.canvas[active, start:end], state.attention_mask[active], start, kv, keep
            )
        finished = state.commit(step, logits[:, 0])
        if bool(finished.any()):
            kv = kv.select(torch.nonzero(~finished)[:, 0])
    return state.output()
