"""JustGRPO throughput and memory against a naive per-position baseline, side by side in one run.

Phases, all on the same model, the same prompts and the same completion lengths:

* **rollout** -- baseline: the reference AR-order loop, `gen_length` full forwards of the whole batch (no early exit),
  full `[B, S, V]` logits materialised, the slot `P + j` read, sampled and written in. Ours: `decoding.ar_decode`
  (finished rows leave the batch, logits only at the row being decoded).
* **scoring+backward** (the policy-gradient pass of one GRPO update) -- baseline: for each of the `gen_length`
  positions, the canvas `[prompt | c_<j | MASK x (L - j)]` of the whole batch, a full forward with full logits, the
  log-prob at `P + j`, and one backward of that position's share of the loss, every position regardless of where the
  answer ended. Ours: `collators.ARScoringCanvases` (only the (row, position) pairs before the end of the answer,
  packed across rows into chunks), each chunk scored and its share of the loss backpropagated at once
  (`chunked_backward.backward_chunk_by_chunk` with `TokenLoss`, the trainer's default path).
* **checkpointed** -- the trainer's other path (ZeRO-3, FSDP, losses that couple tokens): `estimators.score_canvases`
  (each chunk under non-reentrant checkpointing), then one backward of the same loss.
* **JustGRPO-Fast** -- ours, scoring only the top-q highest-entropy positions, selected from the entropies recorded
  during the rollout (TRL's quantile rule); the other positions are never computed.

Completion lengths are realistic: every row's end of answer is drawn from a clipped normal with mean
`mean_fraction * gen_length` (0.6, as GSM8K answers use), and the model is wrapped (identically for baseline and
ours) so that it emits a stop token exactly there: stop tokens get logit -inf before the row's end and the first stop
token +1e4 at it. Rows are recognised by their distinct first prompt token, which survives the decoder's compaction.

Run `python benchmarks/bench_justgrpo.py --help`; `benchmarks/README.md` has the commands and the measured numbers.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutput

from justgrpo_trl.chunked_backward import TokenLoss, backward_chunk_by_chunk, loss_weights
from justgrpo_trl.collators import ARScoringCanvases
from justgrpo_trl.decoding import ar_decode
from justgrpo_trl.estimators import score_canvases, target_logps
from justgrpo_trl.models.modeling_llada import LLaDAModelLM
from justgrpo_trl.models.registry import LLADA, resolve_special_tokens
from justgrpo_trl.models.tiny import build_tokenizer, tiny_llada_config

# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------

#: Config overrides of `tiny_llada_config` per `--model`. `1b` and `8b` are LLaDA-shaped (head dim 128, vocab
#: 126464); `8b` is LLaDA-8B's exact shape. Weights are random: throughput does not depend on them.
MODEL_SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {},
    "50m": dict(d_model=512, n_layers=8, n_heads=8, n_kv_heads=8, mlp_hidden_size=1536, vocab_size=24576),
    "1b": dict(d_model=2048, n_layers=16, n_heads=16, n_kv_heads=16, mlp_hidden_size=5632, vocab_size=126464),
    "8b": dict(d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, mlp_hidden_size=12288, vocab_size=126464),
}

#: Default sizes per `--model` (batch_size, prompt_length, gen_length, chunk sizes): the CPU ones finish in a few
#: minutes on 2 cores; the GPU ones follow the paper's gen length 256.
DEFAULT_SIZES: dict[str, tuple[int, int, int, list[int]]] = {
    "tiny": (16, 32, 128, [16, 64]),
    "50m": (4, 16, 32, [4, 8]),
    "1b": (16, 128, 256, [16, 32]),
    "8b": (8, 128, 256, [4, 8]),
}

FORCED_STOP_LOGIT = 1.0e4


def build_model(name: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> tuple[LLaDAModelLM, Any]:
    """A randomly initialised LLaDA of shape `name`, built directly on `device` in `dtype`, and its special tokens."""
    tokenizer = build_tokenizer()
    overrides = dict(MODEL_SHAPES[name])
    if "vocab_size" in overrides:
        overrides["embedding_size"] = overrides["vocab_size"]
    overrides.setdefault("max_sequence_length", 4096)
    config = tiny_llada_config(tokenizer, **overrides)
    previous = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            model = LLaDAModelLM(config)
        finally:
            torch.set_default_dtype(previous)
    return model.to(device=device, dtype=dtype).eval(), resolve_special_tokens(LLADA, tokenizer)


def count_params(model: LLaDAModelLM) -> dict[str, int]:
    """Parameters of the trunk (blocks + final norm), the input embedding, and the output head."""
    trunk = model.model.transformer.blocks
    n_trunk = sum(p.numel() for p in trunk.parameters()) + model.model.transformer.ln_f.weight.numel()
    n_embed = model.get_input_embeddings().weight.numel()
    return {
        "trunk": n_trunk,
        "embedding": n_embed,
        "head": model.output_head_weight().numel(),
        "total": model.num_parameters(),
    }


def forward_flops(model: LLaDAModelLM, seq: int, logit_rows: int) -> float:
    """Model FLOPs of one forward of one canvas of `seq` tokens with logits at `logit_rows` positions.

    `2 * N_trunk * seq` (matmuls of the blocks) + `4 * n_layers * d_model * seq**2` (QK^T and AV) +
    `2 * d_model * vocab * logit_rows` (output head). With fewer logit rows than positions (per-row
    `logits_to_keep`), the last block runs its query, attention output, MLP and attention only at the kept rows, so
    those terms count `logit_rows` positions in that block. A backward costs twice the forward (factor 3 in total).
    Norms, RoPE and softmaxes are not counted.
    """
    config = model.config
    blocks = model.model.transformer.blocks
    n_trunk = sum(p.numel() for p in blocks.parameters() if p.dim() == 2)
    attention = 4 * config.n_layers * config.d_model * seq * seq
    head = 2 * config.d_model * config.embedding_size * logit_rows
    flops = 2.0 * n_trunk * seq + attention + head
    if logit_rows < seq:  # the pruned last block
        last = blocks[-1]
        per_row = sum(p.numel() for p in last.parameters() if p.dim() == 2)
        per_row -= last.k_proj.weight.numel() + last.v_proj.weight.numel()  # keys and values run at every position
        flops -= (seq - logit_rows) * (2.0 * per_row + 4 * config.d_model * seq)
    return flops


class ForcedStopModel(nn.Module):
    """Wraps a LLaDA so that row `b` emits a stop token exactly at completion slot `ends[b]`.

    The row is recognised by its first prompt token (`end_by_first_token`), so the mapping survives compaction by
    the decoder and packing by the collator. Before the end every stop token has logit -inf, at the end the first
    stop token gets `FORCED_STOP_LOGIT`; later slots are left alone. Counts forward calls, canvases, canvas tokens
    and logit rows. The same wrapper serves the baseline and ours.
    """

    def __init__(self, model: LLaDAModelLM, prompt_width: int, stop_ids: tuple[int, ...], end_by_first_token):
        super().__init__()
        self.model = model
        self.prompt_width = prompt_width
        self.register_buffer("stop_ids", torch.tensor(stop_ids, dtype=torch.long), persistent=False)
        self.register_buffer("end_by_first_token", end_by_first_token, persistent=False)
        self.reset_counters()

    @property
    def config(self):
        return self.model.config

    def reset_counters(self) -> None:
        self.calls, self.canvases, self.canvas_tokens, self.logit_rows = 0, 0, 0, 0

    def forward(self, input_ids: torch.Tensor, attention_mask=None, logits_to_keep: int | torch.Tensor = 0, **kwargs):
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep).logits
        batch, seq = input_ids.shape
        if isinstance(logits_to_keep, torch.Tensor) and logits_to_keep.dim() == 2:
            positions = logits_to_keep
        elif isinstance(logits_to_keep, int) and logits_to_keep == 0:
            positions = torch.arange(seq, device=input_ids.device).expand(batch, seq)
        else:
            raise ValueError("ForcedStopModel supports logits_to_keep=0 or per-row positions [B, K].")
        step = positions - self.prompt_width
        end = self.end_by_first_token[input_ids[:, 0]][:, None]
        columns = logits.index_select(-1, self.stop_ids)
        columns = columns.masked_fill((step < end)[..., None], float("-inf"))
        first = torch.where(step == end, torch.full_like(columns[..., 0], FORCED_STOP_LOGIT), columns[..., 0])
        logits.index_copy_(-1, self.stop_ids, torch.cat([first[..., None], columns[..., 1:]], dim=-1))
        self.calls += 1
        self.canvases += batch
        self.canvas_tokens += batch * seq
        self.logit_rows += logits.shape[0] * logits.shape[1]
        return CausalLMOutput(logits=logits)


# ----------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------


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


def fill_scoring_inputs(work: Workload, quantile: float) -> None:
    """Run our rollout once and keep its completions, sampling log-probs and entropies as the scoring inputs."""
    out = rollout_ours(work)  # the timed rollout phase, same seed
    got = torch.tensor([len(c) for c in out.completion_ids], device=work.lengths.device)
    if not torch.equal(got, work.lengths):
        raise RuntimeError(f"The forced stop did not hold: lengths {got.tolist()} != {work.lengths.tolist()}.")
    batch, width, device = len(out.completion_ids), int(got.max()), work.prompt_ids.device
    work.completions = torch.full((batch, width), work.pad_id, dtype=torch.long, device=device)
    work.completion_mask = torch.zeros((batch, width), dtype=torch.long, device=device)
    work.rollout_logps = torch.zeros((batch, width), device=device)
    work.rollout_entropies = torch.zeros((batch, width), device=device)
    for row, (ids, logps, ents) in enumerate(zip(out.completion_ids, out.logprobs, out.entropies)):
        work.completions[row, : len(ids)] = torch.tensor(ids, device=device)
        work.completion_mask[row, : len(ids)] = 1
        work.rollout_logps[row, : len(ids)] = torch.tensor(logps, device=device)
        work.rollout_entropies[row, : len(ids)] = torch.tensor(ents, device=device)
    advantages = torch.randn(batch, generator=torch.Generator().manual_seed(work.seed + 2))
    work.advantages = (advantages / advantages.std()).to(device)
    work.fast_mask = high_entropy_mask(work.rollout_entropies, work.completion_mask, quantile)


# ----------------------------------------------------------------------------------------------------------------
# Phases: the naive baseline (written plainly, like the reference code) and ours
# ----------------------------------------------------------------------------------------------------------------


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


@torch.no_grad()
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


@torch.no_grad()
def rollout_ours(work: Workload):
    generator = torch.Generator(device=work.prompt_ids.device).manual_seed(work.seed + 1)
    with work.autocast():
        return ar_decode(
            work.model,
            work.prompts,
            gen_length=work.gen_length,
            mask_id=work.mask_id,
            stop_ids=work.stop_ids,
            pad_id=work.pad_id,
            temperature=work.temperature,
            generator=generator,
        )


def grpo_normaliser(work: Workload) -> float:
    return float(work.completion_mask.sum())


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


def _canvases(work: Workload, score_mask: torch.Tensor, chunk_size: int) -> ARScoringCanvases:
    return ARScoringCanvases(
        work.prompt_ids,
        torch.ones_like(work.prompt_ids),
        work.completions,
        score_mask,
        gen_length=work.gen_length,
        mask_id=work.mask_id,
        chunk_size=chunk_size,
    )


def scoring_ours(work: Workload, chunk_size: int, score_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The trainer's default path: each chunk scored and its share of the GRPO loss backpropagated at once; returns
    the log-probs `[B, T]`. With `score_mask` (JustGRPO-Fast) only those positions are computed and enter the loss."""
    canvases = _canvases(work, work.completion_mask if score_mask is None else score_mask, chunk_size)
    token_loss = TokenLoss(
        loss_type="bnpo",  # on-policy, its gradient is the baseline's: -A * grad log p / (valid tokens)
        weights=loss_weights(
            "bnpo", work.completion_mask, accumulation_steps=1, max_completion_length=work.gen_length
        ),
        advantages=work.advantages,
        policy_mask=score_mask,
    )

    def forward(chunk):
        logps, entropies = target_logps(
            work.model,
            chunk.input_ids,
            chunk.attention_mask,
            chunk.positions,
            chunk.targets[:, None],
            mask_id=work.mask_id,
            temperature=work.temperature,
            autocast=work.autocast,
        )
        return logps[:, 0], entropies[:, 0]

    logps, _, _, last = backward_chunk_by_chunk(forward, canvases, token_loss, torch.Tensor.backward)
    last.backward()
    return logps


def scoring_checkpointed(work: Workload, chunk_size: int) -> torch.Tensor:
    """The trainer's checkpointed path: `score_canvases` over the packed canvases, then one backward of the loss."""
    canvases = _canvases(work, work.completion_mask, chunk_size)
    logps, _ = score_canvases(
        work.model, canvases, mask_id=work.mask_id, temperature=work.temperature, autocast=work.autocast
    )
    loss = -(work.advantages[:, None] * logps * work.completion_mask).sum() / grpo_normaliser(work)
    loss.backward()
    return logps.detach()


def phase_table(
    work: Workload, chunk_sizes: list[int], quantile: float, checkpointed: bool
) -> dict[str, Callable[[], Any]]:
    """Name -> zero-argument callable for every phase of this run."""
    phases: dict[str, Callable[[], Any]] = {
        "rollout/baseline": lambda: rollout_baseline(work),
        "rollout/ours": lambda: rollout_ours(work),
        "scoring/baseline": lambda: scoring_baseline(work),
    }
    for c in chunk_sizes:
        phases[f"scoring/ours[c={c}]"] = lambda c=c: scoring_ours(work, c)
        phases[f"scoring/fast[q={quantile:g},c={c}]"] = lambda c=c: scoring_ours(work, c, work.fast_mask)
        if checkpointed:
            phases[f"scoring/ckpt[c={c}]"] = lambda c=c: scoring_checkpointed(work, c)
    return phases


# ----------------------------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def zero_grads(model: nn.Module) -> None:
    """Allocate (once) and zero every gradient, so a phase's peak memory is its activations, not the grads."""
    for p in model.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        else:
            p.grad.zero_()


def flat_grads(model: nn.Module, limit: int = 200_000_000) -> torch.Tensor:
    """All gradients as one fp32 CPU vector; above `limit` elements, only the first block, the last block, the final
    norm and the output head (to keep an 8B comparison in memory)."""
    params = list(model.parameters())
    if sum(p.numel() for p in params) > limit:
        inner = model.model.model.transformer
        params = [
            *inner.blocks[0].parameters(),
            *inner.blocks[-1].parameters(),
            inner.ln_f.weight,
            model.model.output_head_weight(),
        ]
    return torch.cat([p.grad.detach().float().flatten().cpu() for p in params])


def _read_status() -> dict[str, int]:
    with open("/proc/self/status") as f:
        text = f.read()
    return {key: int(re.search(rf"{key}:\s+(\d+)", text).group(1)) * 1024 for key in ("VmRSS", "VmHWM")}


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_peak_profiler(run: Callable[[], Any]) -> int:
    """CPU: the peak of the profiler's "Total Allocated" counter while `run()` runs, i.e. the most bytes held by
    tensors allocated during the phase (counted from zero at its start). Exact and insensitive to other processes."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    return max([0, *totals])


def measure_peak_inprocess(run: Callable[[], Any], device: torch.device, method: str = "profiler") -> tuple[int, str]:
    """Peak memory of `run()` above what was allocated before it.

    CUDA: the caching allocator's `max_memory_allocated`. CPU: `method="profiler"` (default, see
    `measure_peak_profiler`), or `"rss"`: the process' peak RSS (VmHWM after resetting it; `ru_maxrss` when it cannot
    be reset), which also sees allocator caches and non-tensor memory but is page-granular.
    """
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before, "cuda.max_memory_allocated"
    if method == "profiler":
        return measure_peak_profiler(run), "profiler Total Allocated"
    if _reset_peak_rss():
        before = _read_status()["VmRSS"]
        run()
        return _read_status()["VmHWM"] - before, "VmHWM-reset"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    run()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before, "ru_maxrss"


def measure_peak_subprocess(
    args: argparse.Namespace, argv: list[str], phase: str, inputs_path: str
) -> tuple[int, str]:
    """Run one phase in a fresh interpreter (so that no allocator cache of another phase hides its peak)."""
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--_phase", phase, "--_inputs", inputs_path]
    cmd += ["--memory", "rss", "--repeats", "0", "--warmup", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("PEAK_MEMORY "):
            record = json.loads(line[len("PEAK_MEMORY ") :])
            return record["bytes"], f"subprocess+{record['method']}"
    raise RuntimeError(f"Memory subprocess for {phase} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def save_inputs(work: Workload, path: str) -> None:
    keys = ("completions", "completion_mask", "rollout_logps", "rollout_entropies", "advantages", "fast_mask")
    torch.save({k: getattr(work, k).cpu() for k in keys}, path)


def load_inputs(work: Workload, path: str) -> None:
    device = work.prompt_ids.device
    for key, value in torch.load(path).items():
        setattr(work, key, value.to(device))


def max_abs_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    mask = mask.bool()
    return float((a.float()[mask] - b.float()[mask]).abs().max()) if bool(mask.any()) else 0.0


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# ----------------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", choices=sorted(MODEL_SHAPES), default="tiny")
    parser.add_argument("--batch_size", type=int, default=None, help="Rows (completions) per batch.")
    parser.add_argument("--prompt_length", type=int, default=None, help="Prompt tokens per row (no padding).")
    parser.add_argument("--gen_length", type=int, default=None, help="L = max_completion_length (canvas slots).")
    parser.add_argument("--chunk_size", type=int, nargs="+", default=None, help="Scoring canvases per chunk (sweep).")
    parser.add_argument("--mean_fraction", type=float, default=0.6, help="Mean used fraction of gen_length.")
    parser.add_argument("--fast_quantile", type=float, default=0.25, help="JustGRPO-Fast: fraction of positions kept.")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument(
        "--baseline",
        choices=["plain", "reference"],
        default="plain",
        help="plain: the naive loops, sampling/scoring only the read slot. reference: also the reference code's\n"
        "whole-[B, S, V] work (LLaDA generate()'s float64 Gumbel + softmax; logits / temperature in the loss).",
    )
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="Weights (cuda: bf16).")
    parser.add_argument("--autocast", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default 1: stable on a shared host; see README)."
    )
    parser.add_argument("--repeats", type=int, default=3, help="Timed rounds; every phase once per round.")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed rounds first.")
    parser.add_argument(
        "--clock",
        choices=["auto", "wall", "cpu"],
        default="auto",
        help="Which time the speedups use. auto: wall on GPU; on CPU with 1 thread the process CPU time, which other\n"
        "tenants of a shared host do not inflate (both are always reported).",
    )
    parser.add_argument(
        "--checkpointed",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Also time the checkpointed path (ZeRO-3/FSDP).",
    )
    parser.add_argument(
        "--memory",
        choices=["auto", "profiler", "rss", "off"],
        default="auto",
        help="Peak memory per phase. auto: the CUDA allocator's peak on GPU, the profiler's tensor-allocation peak on "
        "CPU (profiler); rss: each phase in a fresh subprocess, peak RSS above the RSS after setup.",
    )
    parser.add_argument("--peak_tflops", type=float, default=None, help="For MFU (default 989 on cuda: H100 bf16).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="Write the results here.")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--_phase", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_inputs", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    batch, prompt, gen, chunks = DEFAULT_SIZES[args.model]
    args.batch_size = args.batch_size or batch
    args.prompt_length = args.prompt_length or prompt
    args.gen_length = args.gen_length or gen
    args.chunk_size = args.chunk_size or chunks
    on_cuda = torch.device(args.device).type == "cuda"
    args.dtype = args.dtype or ("bfloat16" if on_cuda else "float32")
    args.autocast = on_cuda if args.autocast is None else args.autocast
    if args.peak_tflops is None and on_cuda:
        args.peak_tflops = 989.0
    if args.memory == "auto":
        args.memory = "profiler"
    if args.clock == "auto":
        args.clock = "cpu" if not on_cuda and (args.threads or 1) == 1 else "wall"
    return args


def setup(args: argparse.Namespace) -> tuple[Workload, torch.device]:
    if args.threads or torch.device(args.device).type == "cpu":
        torch.set_num_threads(args.threads or 1)
    device = torch.device(args.device)
    model, tokens = build_model(args.model, device, getattr(torch, args.dtype), seed=args.seed)
    model.requires_grad_(True)
    return make_workload(args, model, tokens, device), device


def run_memory_child(args: argparse.Namespace) -> None:
    """`--_phase`: build the model and inputs, then measure one phase's peak and print it for the parent."""
    work, device = setup(args)
    load_inputs(work, args._inputs)
    phases = phase_table(work, args.chunk_size, args.fast_quantile, checkpointed=True)
    zero_grads(work.model)
    peak, method = measure_peak_inprocess(phases[args._phase], device, method="rss")
    print("PEAK_MEMORY " + json.dumps({"bytes": peak, "method": method}), flush=True)


def phase_flops(model: LLaDAModelLM, name: str, work: Workload, seq: int, counters: dict) -> float:
    """Model FLOPs of one run of a phase (recomputation under checkpointing not counted, as MFU requires)."""
    if name == "rollout/baseline":
        return counters["canvases"] * forward_flops(model, seq, seq)
    if name == "rollout/ours":
        return counters["canvases"] * forward_flops(model, seq, 1)
    if name == "scoring/baseline":
        return 3 * counters["canvases"] * forward_flops(model, seq, seq)
    # ours: every canvas is scored once with gradient; checkpointed, each is run twice, counted once
    scored = counters["logit_rows"] // (2 if name.startswith("scoring/ckpt") else 1)
    return 3 * scored * forward_flops(model, seq, 1)


def run(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns (and optionally writes) the results as a dict."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args._phase is not None:
        run_memory_child(args)
        return {}
    work, device = setup(args)
    fill_scoring_inputs(work, args.fast_quantile)
    model = work.model
    inner: LLaDAModelLM = model.model
    phases = phase_table(work, args.chunk_size, args.fast_quantile, args.checkpointed)
    seq = args.prompt_length + args.gen_length

    wall: dict[str, list[float]] = {name: [] for name in phases}
    cpu: dict[str, list[float]] = {name: [] for name in phases}
    counters: dict[str, dict] = {}
    outputs: dict[str, Any] = {}
    grads: dict[str, torch.Tensor] = {}
    for round_index in range(args.warmup + max(args.repeats, 1)):
        timed = round_index >= args.warmup
        order = list(phases) if round_index % 2 == 0 else list(reversed(phases))  # interleaved, alternating order
        for name in order:
            if name.startswith("scoring/"):
                zero_grads(model)
            model.reset_counters()
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            result = phases[name]()
            synchronize(device)
            if timed:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
            if name not in outputs:
                outputs[name] = result
                counters[name] = dict(
                    calls=model.calls,
                    canvases=model.canvases,
                    canvas_tokens=model.canvas_tokens,
                    logit_rows=model.logit_rows,
                )
                if name.startswith("scoring/"):
                    grads[name] = flat_grads(model)

    peaks: dict[str, int | None] = {name: None for name in phases}
    memory_method = None
    if args.memory != "off":
        with tempfile.TemporaryDirectory() as tmp:
            inputs_path = os.path.join(tmp, "inputs.pt")
            save_inputs(work, inputs_path)
            for name in phases:
                if name.startswith("scoring/"):
                    zero_grads(model)
                if args.memory == "rss" and device.type == "cpu":
                    peaks[name], memory_method = measure_peak_subprocess(args, argv, name, inputs_path)
                else:
                    peaks[name], memory_method = measure_peak_inprocess(phases[name], device)

    # ---- exactness
    mask = work.completion_mask
    width = mask.size(1)
    base_logps = outputs["scoring/baseline"][:, :width]
    checks: dict[str, float] = {
        "rollout_sampling_logps_vs_baseline_exact_max_abs": max_abs_diff(work.rollout_logps, base_logps, mask)
    }
    for name in phases:
        if name.startswith("scoring/") and name != "scoring/baseline":
            selected = work.fast_mask if name.startswith("scoring/fast") else mask
            checks[f"{name} logps_max_abs_diff"] = max_abs_diff(outputs[name], base_logps, selected)
            if not name.startswith("scoring/fast"):
                checks[f"{name} grad_rel_err"] = relative_error(grads[name], grads["scoring/baseline"])

    # ---- summary
    num_valid = work.num_valid
    results: dict[str, dict] = {}
    clock = cpu if args.clock == "cpu" else wall
    for name in phases:
        t = median(clock[name])
        flops = phase_flops(inner, name, work, seq, counters[name])
        achieved = flops / t if t else None
        results[name] = dict(
            time_s=t,
            wall_s=median(wall[name]),
            cpu_s=median(cpu[name]),
            wall_times_s=wall[name],
            cpu_times_s=cpu[name],
            tokens_per_s=num_valid / t if t else None,
            **counters[name],
            peak_memory_bytes=peaks[name],
            model_flops=flops,
            achieved_tflops=achieved / 1e12 if achieved else None,
            mfu=achieved / (args.peak_tflops * 1e12) if achieved and args.peak_tflops else None,
        )

    def speedup(name: str, base: str, key: str = "time_s") -> float | None:
        a, b = results[name][key], results[base][key]
        return b / a if a and b else None

    def memory_ratio(name: str, base: str) -> float | None:
        a, b = results[name]["peak_memory_bytes"], results[base]["peak_memory_bytes"]
        return a / b if a is not None and b else None

    ratios: dict[str, dict] = {}
    for name in phases:
        if name.endswith("baseline"):
            continue
        base = "rollout/baseline" if name.startswith("rollout/") else "scoring/baseline"
        ratios[name] = dict(
            speedup=speedup(name, base),
            speedup_wall=speedup(name, base, "wall_s"),
            speedup_cpu=speedup(name, base, "cpu_s"),
            memory=memory_ratio(name, base),
        )

    targets: dict[str, dict] = {"rollout >= 2x": dict(value=ratios["rollout/ours"]["speedup"], target=2.0)}
    for c in args.chunk_size:
        targets[f"scoring c={c} >= 2.5x"] = dict(value=ratios[f"scoring/ours[c={c}]"]["speedup"], target=2.5)
        targets[f"fast c={c} >= 3x"] = dict(
            value=ratios[f"scoring/fast[q={args.fast_quantile:g},c={c}]"]["speedup"], target=3.0
        )
        targets[f"scoring memory c={c} <= baseline"] = dict(
            value=ratios[f"scoring/ours[c={c}]"]["memory"], target=1.0, lower_is_better=True
        )
    targets["rollout memory <= baseline"] = dict(
        value=ratios["rollout/ours"]["memory"], target=1.0, lower_is_better=True
    )
    if device.type == "cuda":
        targets["scoring MFU >= 40%"] = dict(
            value=max(results[f"scoring/ours[c={c}]"]["mfu"] or 0 for c in args.chunk_size), target=0.4
        )
    for entry in targets.values():
        value, lower = entry["value"], entry.pop("lower_is_better", False)
        entry["met"] = None if value is None else (value <= entry["target"] if lower else value >= entry["target"])

    params = count_params(inner)
    report = dict(
        config=dict(
            model=args.model,
            params=params,
            batch_size=args.batch_size,
            prompt_length=args.prompt_length,
            gen_length=args.gen_length,
            chunk_sizes=args.chunk_size,
            dtype=args.dtype,
            autocast=args.autocast,
            device=str(device),
            device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            threads=torch.get_num_threads(),
            repeats=args.repeats,
            clock=args.clock,
            warmup=args.warmup,
            temperature=args.temperature,
            baseline=args.baseline,
            fast_quantile=args.fast_quantile,
            lengths=work.lengths.tolist(),
            used_fraction=num_valid / (args.batch_size * args.gen_length),
            fast_selected=int(work.fast_mask.sum()),
            valid_tokens=num_valid,
            memory_method=memory_method,
            peak_tflops=args.peak_tflops,
            torch=torch.__version__,
        ),
        results=results,
        ratios=ratios,
        checks=checks,
        targets=targets,
    )
    if not args.quiet:
        print(format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


# ----------------------------------------------------------------------------------------------------------------
# Printing
# ----------------------------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f} MiB"


def format_report(report: dict) -> str:
    cfg, res, ratios = report["config"], report["results"], report["ratios"]
    lines = [
        f"model={cfg['model']} params={cfg['params']['total'] / 1e6:.1f}M (trunk {cfg['params']['trunk'] / 1e6:.1f}M)"
        f" device={cfg['device_name']} dtype={cfg['dtype']} autocast={cfg['autocast']} threads={cfg['threads']}",
        f"B={cfg['batch_size']} P={cfg['prompt_length']} L={cfg['gen_length']} used fraction="
        f"{cfg['used_fraction']:.2f} valid tokens={cfg['valid_tokens']} fast selected={cfg['fast_selected']}"
        f" repeats={cfg['repeats']} (medians) clock={cfg['clock']} memory={cfg['memory_method']}"
        f" baseline={cfg['baseline']}",
        "",
        f"{'phase':<28} {'wall s':>8} {'cpu s':>8} {'tok/s':>9} {'fwd calls':>9} {'canvases':>8} {'peak mem':>11} "
        f"{'TFLOP/s':>8} {'MFU':>6} {'speedup':>8} {'(wall)':>7} {'mem ratio':>9}",
    ]
    for name, r in res.items():
        ratio = ratios.get(name, {})
        lines.append(
            f"{name:<28} {_fmt(r['wall_s'], '.3f'):>8} {_fmt(r['cpu_s'], '.3f'):>8} "
            f"{_fmt(r['tokens_per_s'], '.1f'):>9} {r['calls']:>9} {r['canvases']:>8} "
            f"{_mib(r['peak_memory_bytes']):>11} {_fmt(r['achieved_tflops'], '.3f'):>8} {_fmt(r['mfu'], '.1%'):>6} "
            f"{_fmt(ratio.get('speedup'), '.2f'):>8} {_fmt(ratio.get('speedup_wall'), '.2f'):>7} "
            f"{_fmt(ratio.get('memory'), '.2f'):>9}"
        )
    lines += ["", "exactness (fp32 on CPU should be ~1e-6):"]
    lines += [f"  {k}: {v:.2e}" for k, v in report["checks"].items()]
    lines += ["", "targets:"]
    for k, v in report["targets"].items():
        verdict = {True: "met", False: "MISSED", None: "n/a"}[v["met"]]
        lines.append(f"  {k}: {_fmt(v['value'], '.2f')} (target {v['target']}) {verdict}")
    return "\n".join(lines)


if __name__ == "__main__":
    run()
