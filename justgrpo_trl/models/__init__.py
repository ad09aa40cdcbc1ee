"""Diffusion LM models: native LLaDA, the family registry, and Auto-class registration."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_llada import LLaDAConfig
from .modeling_llada import LLaDAModel, LLaDAModelLM, LLaDAPreTrainedModel
from .registry import (
    DiffusionLMSpec,
    SpecialTokens,
    apply_chat_template_fix,
    get_spec,
    lora_target_defaults,
    register_diffusion_lm,
    registered_families,
    resolve_special_tokens,
)


def register_auto_classes() -> None:
    """Map `model_type: "llada"` to the native classes, so `AutoModel*.from_pretrained(dir)` and TRL's loading by
    path use them even when the directory's config carries the hub's `auto_map` (the remote code fails on
    transformers 5)."""
    AutoConfig.register(LLaDAConfig.model_type, LLaDAConfig, exist_ok=True)
    AutoModel.register(LLaDAConfig, LLaDAModelLM, exist_ok=True)
    AutoModelForCausalLM.register(LLaDAConfig, LLaDAModelLM, exist_ok=True)


def register_peft_defaults() -> None:
    """Give peft default LoRA targets for each registered family's `model_type`, so that `LoraConfig()` without
    `target_modules` (what TRL's `--use_peft` builds) works as it does for Llama. A target list peft already has, or
    that a user set, is kept."""
    try:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping
    except ImportError:  # peft is optional for loading and evaluation
        return
    for model_type, targets in lora_target_defaults().items():
        mapping.setdefault(model_type, targets)


register_auto_classes()
register_peft_defaults()

__all__ = [
    "DiffusionLMSpec",
    "LLaDAConfig",
    "LLaDAModel",
    "LLaDAModelLM",
    "LLaDAPreTrainedModel",
    "SpecialTokens",
    "apply_chat_template_fix",
    "get_spec",
    "register_auto_classes",
    "register_peft_defaults",
    "register_diffusion_lm",
    "registered_families",
    "resolve_special_tokens",
]
