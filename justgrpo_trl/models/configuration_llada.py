"""Configuration of LLaDA, with the field names of the published checkpoints' `config.json`."""

from dataclasses import field

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


@strict
class LLaDAConfig(PreTrainedConfig):
    """Configuration of a LLaDA masked diffusion language model.

    Field names are those of `GSAI-ML/LLaDA-8B-Instruct`'s `config.json` (`d_model`, `n_layers`, ...), so the hub's
    config loads unchanged; the standard transformers names (`hidden_size`, `num_hidden_layers`, ...) are aliases.
    Fields of the original OLMo-style config that this implementation does not use (`init_fn`, `precision`, ...)
    are kept as extra attributes and saved back, so a round trip preserves the file.

    Only the architecture LLaDA actually ships is supported: Llama-style blocks, RMSNorm, SiLU-gated MLP, RoPE,
    no ALiBi. `validate_architecture` rejects the rest with a clear error.
    """

    model_type = "llada"
    attribute_map = {
        "hidden_size": "d_model",
        "num_hidden_layers": "n_layers",
        "num_attention_heads": "n_heads",
        "num_key_value_heads": "n_kv_heads",
        "intermediate_size": "mlp_hidden_size",
        "max_position_embeddings": "max_sequence_length",
        "initializer_range": "init_std",
    }

    d_model: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None
    mlp_hidden_size: int = 12288
    vocab_size: int = 126464
    embedding_size: int | None = None
    max_sequence_length: int = 4096
    rope_theta: float = 500000.0
    rms_norm_eps: float = 1e-5
    include_bias: bool = False
    include_qkv_bias: bool = False
    weight_tying: bool = False
    tie_word_embeddings: bool = False
    block_type: str = "llama"
    layer_norm_type: str = "rms"
    activation_type: str = "silu"
    alibi: bool = False
    rope: bool = True
    attention_dropout: float = 0.0
    residual_dropout: float = 0.0
    embedding_dropout: float = 0.0
    init_std: float = 0.02
    use_cache: bool = False
    mask_token_id: int | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    # The hub checkpoints' pointer to their remote code: kept so a round trip preserves it, never followed here.
    auto_map: dict[str, str] = field(default_factory=dict)

    def __post_init__(self, **kwargs):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.embedding_size is None:
            self.embedding_size = self.vocab_size
        # LLaDA's own flag decides tying; keep transformers' flag in step so it never ties on its own.
        self.tie_word_embeddings = self.weight_tying
        super().__post_init__(**kwargs)

    def to_dict(self) -> dict:
        output = super().to_dict()
        if not output.get("auto_map"):
            output.pop("auto_map", None)  # `"auto_map": {}` would read as remote code to older tools
        return output

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def validate_architecture(self):
        """Reject configurations this implementation cannot represent exactly."""
        unsupported = {
            "block_type": (self.block_type, "llama"),
            "layer_norm_type": (self.layer_norm_type, "rms"),
            "activation_type": (self.activation_type, "silu"),
            "alibi": (self.alibi, False),
            "rope": (self.rope, True),
        }
        for name, (value, expected) in unsupported.items():
            if value != expected:
                raise ValueError(
                    f"LLaDAConfig.{name}={value!r} is not supported by justgrpo_trl's native LLaDA (only "
                    f"{expected!r}, as in the published LLaDA checkpoints)."
                )
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads}).")
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads}).")
        if self.embedding_size < self.vocab_size:
            raise ValueError(
                f"embedding_size ({self.embedding_size}) must be at least vocab_size ({self.vocab_size})."
            )


__all__ = ["LLaDAConfig"]
