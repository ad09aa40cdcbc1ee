"""The benchmarked models: LLaDA shapes from tiny to 8B with random weights, their parameter counts and FLOPs,
and the forced-stop wrapper that makes every row end exactly at its drawn length."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutput

from justgrpo_trl.models.modeling_llada import LLaDAModelLM
from justgrpo_trl.models.registry import LLADA, resolve_special_tokens
from justgrpo_trl.models.tiny import build_tokenizer, tiny_llada_config

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
