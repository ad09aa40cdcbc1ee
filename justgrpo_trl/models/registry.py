"""The model registry: the one place that knows each diffusion LM family's special tokens and conventions.

Nothing else in `justgrpo_trl` hard-codes a token id. Code asks `get_spec(model_or_config)` for the family,
then `resolve_special_tokens(spec, tokenizer, config)` for the ids of the tokenizer actually in use (a small
test tokenizer carries LLaDA's special tokens under other ids than the 8B checkpoint's).
"""

from dataclasses import dataclass, field
from typing import Any

LLAMA3_STYLE_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class DiffusionLMSpec:
    """What the samplers and the trainer must know about one family of masked diffusion LMs."""

    family: str = field(metadata={"help": "Short family name, e.g. 'llada'."})
    architectures: tuple[str, ...] = field(metadata={"help": "`config.architectures` names that select it."})
    model_types: tuple[str, ...] = field(default=(), metadata={"help": "`config.model_type` fallbacks."})
    mask_token: str = field(default="", metadata={"help": "The mask token's text."})
    mask_token_id: int | None = field(default=None, metadata={"help": "Its id in the published tokenizer."})
    stop_tokens: tuple[str, ...] = field(default=(), metadata={"help": "Texts of the tokens that end a response."})
    stop_token_ids: tuple[int, ...] = field(default=(), metadata={"help": "Their ids in the published tokenizer."})
    pad_token: str = field(default="", metadata={"help": "The padding token's text."})
    pad_token_id: int | None = field(default=None, metadata={"help": "Its id in the published tokenizer."})
    logit_shift: int = field(default=0, metadata={"help": "0: logits at i score token i; 1: logits at i-1 do."})
    attention: str = field(default="bidirectional", metadata={"help": "'bidirectional' or 'block_causal'."})
    chat_template: str | None = field(
        default=None, metadata={"help": "Template to install if the tokenizer lacks one."}
    )
    native: bool = field(default=False, metadata={"help": "Whether justgrpo_trl ships a model class for it."})
    lora_target_modules: tuple[str, ...] = field(
        default=(),
        metadata={"help": "peft's default LoRA targets for `model_types` (a `LoraConfig` without target_modules)."},
    )
    notes: str = field(default="", metadata={"help": "What users should know."})


@dataclass(frozen=True)
class SpecialTokens:
    """Resolved ids for one (model, tokenizer) pair."""

    mask_id: int
    stop_ids: tuple[int, ...]
    pad_id: int
    logit_shift: int = 0

    def decode_kwargs(self) -> dict:
        """The token arguments every sampler of `justgrpo_trl.decoding` takes."""
        return {
            "mask_id": self.mask_id,
            "stop_ids": self.stop_ids,
            "pad_id": self.pad_id,
            "logit_shift": self.logit_shift,
        }


_REGISTRY: dict[str, DiffusionLMSpec] = {}


def register_diffusion_lm(spec: DiffusionLMSpec, overwrite: bool = False) -> DiffusionLMSpec:
    """Add a family to the registry (for example a new LLaDA fine-tune with its own architecture name)."""
    if spec.family in _REGISTRY and not overwrite:
        raise ValueError(f"A diffusion LM family named {spec.family!r} is already registered; pass overwrite=True.")
    if spec.logit_shift not in (0, 1):
        raise ValueError(f"logit_shift must be 0 or 1, got {spec.logit_shift}.")
    _REGISTRY[spec.family] = spec
    return spec


def registered_families() -> list[str]:
    return sorted(_REGISTRY)


def lora_target_defaults() -> dict[str, list[str]]:
    """`{model_type: default LoRA target modules}` of the families that declare them."""
    return {
        model_type: list(spec.lora_target_modules)
        for spec in _REGISTRY.values()
        if spec.lora_target_modules
        for model_type in spec.model_types
    }


def _config_of(model_or_config: Any) -> Any:
    """A model's config (PEFT models forward `.config` to the base model), or the config itself."""
    return getattr(model_or_config, "config", model_or_config)


def get_spec(model_or_config: Any) -> DiffusionLMSpec:
    """Find the family of a model or config: by architecture name first (LLaDA-MoE also says
    `model_type: "llada"`), then by `model_type`. Unknown models get an error that says how to register one."""
    config = _config_of(model_or_config)
    architectures = tuple(getattr(config, "architectures", None) or ())
    model_type = getattr(config, "model_type", None)
    for spec in _REGISTRY.values():
        if any(name in spec.architectures for name in architectures):
            return spec
    if not architectures:  # a config built in code; with unknown architecture names, model_type could mislead
        for spec in _REGISTRY.values():
            if model_type in spec.model_types:
                return spec
    known = ", ".join(f"{s.family} ({'/'.join(s.architectures)})" for s in _REGISTRY.values())
    raise ValueError(
        f"Model with architectures={list(architectures)} and model_type={model_type!r} is not a registered diffusion "
        f"language model. Supported families: {known}. To use another masked diffusion LM, register it with "
        "`justgrpo_trl.models.register_diffusion_lm(DiffusionLMSpec(family=..., architectures=(...,), "
        "mask_token=..., stop_tokens=(...), pad_token=..., logit_shift=0))`."
    )


def _token_id(tokenizer: Any, token: str) -> int | None:
    if not token:
        return None
    token_id = tokenizer.convert_tokens_to_ids(token)
    return None if token_id is None or token_id == tokenizer.unk_token_id else int(token_id)


def resolve_special_tokens(spec: DiffusionLMSpec, tokenizer: Any = None, config: Any = None) -> SpecialTokens:
    """Ids of the mask, stop and pad tokens for this tokenizer (looked up by text), checked against the model config.

    Without a tokenizer, the config's `mask_token_id` / `eos_token_id` / `pad_token_id`, then the spec's published
    ids, are used.
    """
    config = _config_of(config) if config is not None else None
    config_mask = getattr(config, "mask_token_id", None) if config is not None else None
    if tokenizer is not None:
        mask_id = _token_id(tokenizer, spec.mask_token)
        if mask_id is None:
            raise ValueError(
                f"The tokenizer has no mask token {spec.mask_token!r}, which {spec.family} models need. Load the "
                f"tokenizer that ships with the checkpoint, or add it: `tokenizer.add_special_tokens("
                f"{{'additional_special_tokens': [{spec.mask_token!r}]}})` and resize the embeddings."
            )
        if config_mask is not None and config_mask != mask_id:
            raise ValueError(
                f"The tokenizer's {spec.mask_token!r} has id {mask_id} but the model config says mask_token_id="
                f"{config_mask}. The tokenizer and the model come from different checkpoints."
            )
        stop_ids = tuple(i for i in (_token_id(tokenizer, t) for t in spec.stop_tokens) if i is not None)
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stop_ids:
            stop_ids += (int(tokenizer.eos_token_id),)
        pad_id = _token_id(tokenizer, spec.pad_token)
        if pad_id is None:
            pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
        if not stop_ids:
            raise ValueError(f"The tokenizer has none of the stop tokens {spec.stop_tokens} of {spec.family}.")
        return SpecialTokens(mask_id=mask_id, stop_ids=stop_ids, pad_id=int(pad_id), logit_shift=spec.logit_shift)

    mask_id = config_mask if config_mask is not None else spec.mask_token_id
    if mask_id is None:
        raise ValueError(f"No mask token id for {spec.family}: pass the tokenizer.")
    eos = getattr(config, "eos_token_id", None) if config is not None else None
    stop_ids = spec.stop_token_ids or ((eos,) if isinstance(eos, int) else tuple(eos or ()))
    pad_id = getattr(config, "pad_token_id", None) if config is not None else None
    pad_id = pad_id if pad_id is not None else spec.pad_token_id
    return SpecialTokens(mask_id=mask_id, stop_ids=tuple(stop_ids), pad_id=pad_id, logit_shift=spec.logit_shift)


def apply_chat_template_fix(spec: DiffusionLMSpec, tokenizer: Any) -> Any:
    """Install the family's chat template on a tokenizer that has none (base checkpoints ship without one)."""
    if getattr(tokenizer, "chat_template", None) is None and spec.chat_template is not None:
        tokenizer.chat_template = spec.chat_template
    return tokenizer


LLADA = register_diffusion_lm(
    DiffusionLMSpec(
        family="llada",
        architectures=("LLaDAModelLM",),
        model_types=("llada",),
        mask_token="<|mdm_mask|>",
        mask_token_id=126336,
        stop_tokens=("<|eot_id|>", "<|endoftext|>"),
        stop_token_ids=(126348, 126081),
        pad_token="<|endoftext|>",
        pad_token_id=126081,
        logit_shift=0,
        attention="bidirectional",
        chat_template=LLAMA3_STYLE_CHAT_TEMPLATE,
        native=True,
        # The attention projections, as d1's LoRA recipe; not "ff_out", which also names the output head.
        lora_target_modules=("q_proj", "k_proj", "v_proj"),
        notes="LLaDA-8B-Base/-Instruct and LLaDA 1.5; the mask token is not declared as the tokenizer's mask_token.",
    )
)
LLADA_MOE = register_diffusion_lm(
    DiffusionLMSpec(
        family="llada_moe",
        architectures=("LLaDAMoEModelLM", "LLaDAMoEModel"),
        mask_token="<|mdm_mask|>",
        stop_tokens=("<|role_end|>", "<|endoftext|>"),
        pad_token="<|endoftext|>",
        notes="Ids are read from its tokenizer. Declares model_type 'llada' too, so dispatch is by architecture. "
        "No native class: load with trust_remote_code on a transformers version its remote code supports.",
    )
)
LLADA2 = register_diffusion_lm(
    DiffusionLMSpec(
        family="llada2",
        architectures=("LLaDA2MoeModelLM",),
        model_types=("llada2_moe",),
        mask_token="<|mask|>",
        mask_token_id=156895,
        stop_tokens=("<|role_end|>", "<|endoftext|>"),
        pad_token="<|endoftext|>",
        attention="block_causal",
        notes="MoE with block-causal attention. No native class.",
    )
)
DREAM = register_diffusion_lm(
    DiffusionLMSpec(
        family="dream",
        architectures=("DreamModel",),
        model_types=("Dream",),
        mask_token="<|mask|>",
        mask_token_id=151666,
        stop_tokens=("<|im_end|>", "<|endoftext|>"),
        stop_token_ids=(151645, 151643),
        pad_token="<|endoftext|>",
        pad_token_id=151643,
        logit_shift=1,
        notes="Dream and DiffuCoder: the logits at i-1 predict token i. No native class.",
    )
)
