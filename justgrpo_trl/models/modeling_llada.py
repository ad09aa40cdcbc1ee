"""Native LLaDA for transformers 5: a Llama-style transformer without the causal mask.

Module names match the published checkpoints exactly (`model.transformer.blocks.N.q_proj`, ...), so
`GSAI-ML/LLaDA-8B-Instruct`, `-Base` and `LLaDA-1.5` load with strict keys and no `trust_remote_code`.
"""

import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationConfig, GenerationMixin, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput
from transformers.modeling_utils import slice_logits_to_keep

from .configuration_llada import LLaDAConfig

# What a saved checkpoint's config.json points `trust_remote_code` loading at (the files `save_pretrained` copies).
SAVED_CODE_AUTO_MAP = {
    "AutoConfig": "configuration_llada.LLaDAConfig",
    "AutoModel": "modeling_llada.LLaDAModelLM",
    "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
}


class LLaDARMSNorm(nn.Module):
    """RMSNorm computed in fp32 and cast back, as LLaDA (and Llama) do."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.float()
        hidden_states = hidden_states * torch.rsqrt(hidden_states.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * hidden_states.to(input_dtype)


def rotary_cos_sin(
    position_ids: torch.Tensor, head_dim: int, theta: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE tables `[B, S, head_dim]` in fp32 (LLaDA's `rope_full_precision`), half-split layout."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    freqs = position_ids.to(device=device, dtype=torch.float32)[..., None] * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` `[B, H, S, D]` by the tables `[B, S, D]`, in fp32, returning `x`'s dtype."""
    x_float = x.float()
    first, second = x_float.chunk(2, dim=-1)
    rotated = torch.cat((-second, first), dim=-1)
    return (x_float * cos[:, None] + rotated * sin[:, None]).to(x.dtype)


class LLaDABlock(GradientCheckpointingLayer):
    """One pre-norm transformer block: bidirectional attention, then a SiLU-gated MLP."""

    def __init__(self, config: LLaDAConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        qkv_bias = config.include_bias or config.include_qkv_bias
        kv_dim = config.n_kv_heads * config.head_dim
        self.attn_norm = LLaDARMSNorm(config.d_model, config.rms_norm_eps)
        self.q_proj = nn.Linear(config.d_model, config.d_model, bias=qkv_bias)
        self.k_proj = nn.Linear(config.d_model, kv_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(config.d_model, kv_dim, bias=qkv_bias)
        self.attn_out = nn.Linear(config.d_model, config.d_model, bias=config.include_bias)
        self.ff_norm = LLaDARMSNorm(config.d_model, config.rms_norm_eps)
        self.ff_proj = nn.Linear(config.d_model, config.mlp_hidden_size, bias=config.include_bias)  # gate
        self.up_proj = nn.Linear(config.d_model, config.mlp_hidden_size, bias=config.include_bias)
        self.ff_out = nn.Linear(config.mlp_hidden_size, config.d_model, bias=config.include_bias)
        self.attention_dropout = config.attention_dropout
        self.residual_dropout = nn.Dropout(config.residual_dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        rotary: tuple[torch.Tensor, torch.Tensor],
        query_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`[B, S, d]` -> `[B, S, d]`; with per-row `query_positions [B, K]`, `[B, K, d]`: the block's output at
        those positions only (keys and values still come from every position), which is all a last block owes to
        logits kept at K positions."""
        batch, seq, _ = hidden_states.shape
        normed = self.attn_norm(hidden_states)
        k = self.k_proj(normed).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(normed).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        k = apply_rotary(k, *rotary)
        q_rotary = rotary
        if query_positions is not None:
            rows = torch.arange(batch, device=hidden_states.device)[:, None]
            hidden_states, normed = hidden_states[rows, query_positions], normed[rows, query_positions]
            q_rotary = tuple(table[rows, query_positions] for table in rotary)
            if attention_mask is not None and attention_mask.size(-2) > 1:  # a 4D mask's rows, one per query
                index = query_positions[:, None, :, None].expand(-1, attention_mask.size(1), -1, seq)
                attention_mask = attention_mask.expand(batch, -1, -1, -1).gather(2, index)
        return self._attend_and_mlp(hidden_states, normed, q_rotary, k, v, attention_mask)

    def _attend_and_mlp(self, hidden_states, normed, q_rotary, keys, values, attention_mask) -> torch.Tensor:
        """The rest of the block once keys and values are known: queries at the rows of `normed`, attention over
        every key, the residual, and the MLP."""
        batch, width, _ = hidden_states.shape
        q = self.q_proj(normed).view(batch, width, self.n_heads, self.head_dim).transpose(1, 2)
        q = apply_rotary(q, *q_rotary)
        attn = F.scaled_dot_product_attention(
            q,
            keys,
            values,
            attn_mask=attention_mask,
            dropout_p=self.attention_dropout if self.training else 0.0,
            is_causal=False,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )
        attn = attn.transpose(1, 2).reshape(batch, width, -1)
        hidden_states = hidden_states + self.residual_dropout(self.attn_out(attn))
        normed = self.ff_norm(hidden_states)
        mlp = self.ff_out(F.silu(self.ff_proj(normed)) * self.up_proj(normed))
        return hidden_states + self.residual_dropout(mlp)

    def forward_cached(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        rotary: tuple[torch.Tensor, torch.Tensor],
        span_start: int,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        query_positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The block on a contiguous span `[span_start, span_start + C)` of the canvas, attending to every position.

        `hidden_states [B, C, d]` are the span's inputs and `rotary` its RoPE tables. The span's keys and values are
        computed and written into `cache` (`[B, H_kv, S, D]` keys and values of the whole canvas, updated in place);
        the other positions' keys and values are read from it as they are, stale or not. `cache=None` means the span
        is the whole canvas (a refresh): the op sequence is then `forward`'s, bit for bit, and the fresh keys and
        values are returned as the new cache. `query_positions [B, K]` (indices into the span) keep only those
        positions' outputs, as in `forward`. Returns the block's output and the (updated) cache."""
        batch, width, _ = hidden_states.shape
        normed = self.attn_norm(hidden_states)
        k = self.k_proj(normed).view(batch, width, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(normed).view(batch, width, self.n_kv_heads, self.head_dim).transpose(1, 2)
        k = apply_rotary(k, *rotary)
        if cache is None:
            keys, values = k, v
        else:
            keys, values = cache
            keys[:, :, span_start : span_start + width] = k
            values[:, :, span_start : span_start + width] = v
        q_rotary = rotary
        if query_positions is not None:
            rows = torch.arange(batch, device=hidden_states.device)[:, None]
            hidden_states, normed = hidden_states[rows, query_positions], normed[rows, query_positions]
            q_rotary = tuple(table[rows, query_positions] for table in rotary)
        return self._attend_and_mlp(hidden_states, normed, q_rotary, keys, values, attention_mask), (keys, values)


class LLaDAPreTrainedModel(PreTrainedModel):
    config_class = LLaDAConfig
    config: LLaDAConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LLaDABlock"]
    _supports_sdpa = True
    _can_compile_fullgraph = True

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' save, plus this model's code and an `auto_map` (as transformers does for custom models), so
        that the checkpoint loads with `trust_remote_code=True` where justgrpo_trl is not installed. The code files
        are copied by name: under FSDP2 the model's class is a subclass torch creates, so following the instance's
        class (what `register_for_auto_class` does) would copy torch's files instead."""
        self.config.auto_map = dict(SAVED_CODE_AUTO_MAP)
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            for name in ("configuration_llada.py", "modeling_llada.py"):
                shutil.copyfile(Path(__file__).with_name(name), Path(save_directory) / name)


def _expand_attention_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Turn a 2D key-padding mask (1 = attend) into SDPA's boolean `[B, 1, 1, S]`; pass 4D masks through.

    A 4D mask is either boolean (True = attend) or additive (0 = attend, large negative = blocked), as in
    transformers. An all-ones 2D mask is dropped so SDPA can take its fastest kernel.
    """
    if attention_mask is None:
        return None
    if attention_mask.dim() == 2:
        if bool(attention_mask.all()):
            return None
        return attention_mask.bool()[:, None, None, :]
    if attention_mask.dim() == 4:
        return attention_mask if attention_mask.dtype == torch.bool else attention_mask.to(dtype)
    raise ValueError(
        f"attention_mask must be 2D [B, S] or 4D [B, 1|H, S, S], got shape {tuple(attention_mask.shape)}."
    )


class LLaDAModel(LLaDAPreTrainedModel):
    """The LLaDA trunk. Holds the output head too (`transformer.ff_out`), where the checkpoints keep it."""

    def __init__(self, config: LLaDAConfig):
        super().__init__(config)
        modules = {
            "wte": nn.Embedding(config.embedding_size, config.d_model),
            "emb_drop": nn.Dropout(config.embedding_dropout),
            "blocks": nn.ModuleList(LLaDABlock(config) for _ in range(config.n_layers)),
            "ln_f": LLaDARMSNorm(config.d_model, config.rms_norm_eps),
        }
        if not config.weight_tying:
            modules["ff_out"] = nn.Linear(config.d_model, config.embedding_size, bias=config.include_bias)
        self.transformer = nn.ModuleDict(modules)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding):
        self.transformer.wte = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        query_positions: torch.LongTensor | None = None,
        **kwargs,
    ) -> BaseModelOutput:
        """Final normed hidden states `[B, S, d_model]`; `hidden_states` holds the embeddings and every block's output,
        the last one after `ln_f` (the transformers and original LLaDA convention).

        With per-row `query_positions [B, K]`, the last block runs its queries, attention output and MLP at those
        positions only and the result is `[B, K, d_model]` (not with `output_hidden_states`)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
        if inputs_embeds is None:
            inputs_embeds = self.transformer.wte(input_ids)
        batch, seq, _ = inputs_embeds.shape
        if position_ids is None:
            position_ids = torch.arange(seq, device=inputs_embeds.device).expand(batch, seq)
        elif position_ids.dim() == 1:
            position_ids = position_ids.expand(batch, seq)
        rotary = rotary_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, inputs_embeds.device)
        mask = _expand_attention_mask(attention_mask, inputs_embeds.dtype)
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )

        if query_positions is not None and output_hidden_states:
            raise ValueError("query_positions prunes the last block's outputs; it cannot return every hidden state.")
        hidden_states = self.transformer.emb_drop(inputs_embeds)
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        last = len(self.transformer.blocks) - 1
        for index, block in enumerate(self.transformer.blocks):
            hidden_states = block(hidden_states, mask, rotary, query_positions if index == last else None)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
        hidden_states = self.transformer.ln_f(hidden_states)
        if output_hidden_states:
            all_hidden_states = all_hidden_states[:-1] + (hidden_states,)
        return BaseModelOutput(last_hidden_state=hidden_states, hidden_states=all_hidden_states)

    def forward_cached(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        span_start: int,
        cache: "LLaDAKVCache | None",
        query_positions: torch.LongTensor,
    ) -> tuple[torch.Tensor, "LLaDAKVCache"]:
        """Final normed hidden states `[B, K, d_model]` at `query_positions` (indices into the span) of the span
        `input_ids [B, C]` starting at canvas position `span_start`, with the other positions' keys and values taken
        from `cache` (see `LLaDABlock.forward_cached`). `attention_mask` is the whole canvas' 2D key-padding mask
        `[B, S]`. `cache=None` runs the whole canvas (`input_ids` is then the canvas, `span_start` 0) and returns a
        fresh cache; the logits are then `forward`'s with `query_positions`, bit for bit."""
        if cache is None and span_start != 0:
            raise ValueError("Without a cache the span must be the whole canvas (span_start=0).")
        inputs_embeds = self.transformer.wte(input_ids)
        batch, width, _ = inputs_embeds.shape
        position_ids = torch.arange(span_start, span_start + width, device=inputs_embeds.device).expand(batch, width)
        rotary = rotary_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, inputs_embeds.device)
        mask = _expand_attention_mask(attention_mask, inputs_embeds.dtype)
        hidden_states = self.transformer.emb_drop(inputs_embeds)
        last = len(self.transformer.blocks) - 1
        keys, values = [], []
        for index, block in enumerate(self.transformer.blocks):
            layer_cache = None if cache is None else (cache.keys[index], cache.values[index])
            keep = query_positions if index == last else None
            hidden_states, (k, v) = block.forward_cached(hidden_states, mask, rotary, span_start, layer_cache, keep)
            keys.append(k)
            values.append(v)
        hidden_states = self.transformer.ln_f(hidden_states)
        if cache is None:  # contiguous buffers, written in place by the cached steps
            cache = LLaDAKVCache([k.contiguous() for k in keys], [v.contiguous() for v in values])
        return hidden_states, cache


class LLaDAModelLM(LLaDAPreTrainedModel, GenerationMixin):
    """LLaDA with its output head: `logits[b, i]` predicts the token at position `i` (no shift).

    `logits_to_keep` selects where logits are computed, before the `[*, embedding_size]` projection:
    an int keeps the last N positions (0 = all), a 1D tensor keeps those positions in every row, a 2D integer
    tensor `[B, K]` keeps per-row positions, and a 2D boolean `[B, S]` keeps the marked positions (flattened).
    Nothing else ever materialises `[B, S, 126464]` logits.

    `generate()` is not a diffusion sampler; use `justgrpo_trl.decoding`. The model carries a
    `generation_config` only because TRL and transformers expect one.
    """

    _tied_weights_keys = {}

    def __init__(self, config: LLaDAConfig):
        super().__init__(config)
        self.model = LLaDAModel(config)
        if self.generation_config is None:
            self.generation_config = GenerationConfig.from_model_config(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding):
        self.model.transformer.wte = value

    def get_output_embeddings(self) -> nn.Linear | None:
        return None if self.config.weight_tying else self.model.transformer.ff_out

    def output_head_weight(self) -> torch.Tensor:
        return self.model.transformer.wte.weight if self.config.weight_tying else self.model.transformer.ff_out.weight

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CausalLMOutput:
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        per_row = (
            isinstance(logits_to_keep, torch.Tensor)
            and logits_to_keep.dim() == 2
            and not logits_to_keep.dtype.is_floating_point
            and logits_to_keep.dtype != torch.bool
        )
        prune = per_row and not output_hidden_states  # the last block then runs at the kept rows only
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            query_positions=logits_to_keep if prune else None,
        )
        hidden_states = outputs.last_hidden_state
        if not prune:
            hidden_states = slice_logits_to_keep(hidden_states, logits_to_keep)
        return CausalLMOutput(logits=self._output_logits(hidden_states), hidden_states=outputs.hidden_states)

    def _output_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The output head. Called as a module, not through its weight: FSDP gathers a unit's parameters when the
        unit is called, and a LoRA adapter on the head applies."""
        if self.config.weight_tying:
            return F.linear(hidden_states, self.model.transformer.wte.weight)
        return self.model.transformer.ff_out(hidden_states)

    def forward_cached(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        span_start: int,
        cache: "LLaDAKVCache | None",
        query_positions: torch.LongTensor,
    ) -> tuple[torch.Tensor, "LLaDAKVCache"]:
        """Logits `[B, K, V]` at `query_positions` of a span, with an approximate key/value cache for the rest of
        the canvas (`LLaDAModel.forward_cached`): the approximate AR rollout's forward
        (`justgrpo_trl.cached_decoding`). The default `forward` never uses a cache."""
        hidden_states, cache = self.model.forward_cached(input_ids, attention_mask, span_start, cache, query_positions)
        return self._output_logits(hidden_states), cache


# ----------------------------------------------------------------------------------------------------------------
# Approximate key/value cache (the cached AR rollout, `justgrpo_trl.cached_decoding`). LLaDA is bidirectional: a
# position's keys and values depend on every other position, so cached ones are stale as soon as any token changes.
# ----------------------------------------------------------------------------------------------------------------


class LLaDAKVCache:
    """Per-layer keys and values `[B, H_kv, S, D]` (keys after RoPE) of a whole canvas, as of its last refresh plus
    whatever spans were written since (`LLaDAModel.forward_cached`)."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]):
        self.keys, self.values = keys, values

    def select(self, rows: torch.Tensor) -> "LLaDAKVCache":
        """The cache of the given batch rows (rows that left the decoding batch are dropped)."""
        return LLaDAKVCache([k[rows] for k in self.keys], [v[rows] for v in self.values])

    @property
    def nbytes(self) -> int:
        """Memory the cache holds, in bytes."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


__all__ = ["LLaDAKVCache", "LLaDAModel", "LLaDAModelLM", "LLaDAPreTrainedModel"]
