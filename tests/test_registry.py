"""The diffusion LM family registry: dispatch, special tokens resolved from the tokenizer, custom families, and no
hard-coded token ids outside `justgrpo_trl/models/`."""

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import justgrpo_trl
from justgrpo_trl.models import (
    DiffusionLMSpec,
    LLaDAConfig,
    get_spec,
    register_diffusion_lm,
    registered_families,
    resolve_special_tokens,
)
from justgrpo_trl.models import registry as registry_module


@pytest.fixture
def restore_registry():
    saved = dict(registry_module._REGISTRY)
    yield registry_module._REGISTRY
    registry_module._REGISTRY.clear()
    registry_module._REGISTRY.update(saved)


def _config(architectures, model_type):
    return SimpleNamespace(architectures=architectures, model_type=model_type)


# ----------------------------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------------------------


def test_builtin_families_registered():
    assert {"llada", "llada_moe", "llada2", "dream"} <= set(registered_families())


def test_llada_dispatch_by_architecture(tiny_model):
    assert get_spec(tiny_model).family == "llada"
    assert get_spec(tiny_model.config).family == "llada"
    assert get_spec(_config(["LLaDAModelLM"], "llada")).family == "llada"
    spec = get_spec(LLaDAConfig(architectures=["LLaDAModelLM"]))
    assert spec.family == "llada" and spec.logit_shift == 0 and spec.attention == "bidirectional"
    assert spec.native


def test_llada_dispatch_by_model_type_without_architectures():
    assert get_spec(_config(None, "llada")).family == "llada"
    assert get_spec(LLaDAConfig()).family == "llada"


def test_llada_moe_dispatch_by_architecture_despite_model_type():
    # LLaDA-MoE's config says model_type "llada" too: the architecture name must win.
    spec = get_spec(_config(["LLaDAMoEModelLM"], "llada"))
    assert spec.family == "llada_moe"
    assert get_spec(LLaDAConfig(architectures=["LLaDAMoEModelLM"])).family == "llada_moe"
    assert not spec.native


def test_dream_has_logit_shift_one():
    spec = get_spec(_config(["DreamModel"], "Dream"))
    assert spec.family == "dream"
    assert spec.logit_shift == 1
    assert get_spec(_config(None, "Dream")).logit_shift == 1


def test_llada2_is_block_causal():
    assert get_spec(_config(["LLaDA2MoeModelLM"], "llada2_moe")).attention == "block_causal"


@pytest.mark.parametrize(
    "config",
    [_config(["LlamaForCausalLM"], "llama"), _config(None, None), _config(["MistralForCausalLM"], "mistral")],
    ids=["llama", "empty", "mistral"],
)
def test_unknown_model_raises_helpful_error(config):
    with pytest.raises(ValueError) as excinfo:
        get_spec(config)
    message = str(excinfo.value)
    assert "register_diffusion_lm" in message
    for family in ("llada", "llada_moe", "llada2", "dream"):
        assert re.search(rf"\b{family}\b", message), family
    assert "LLaDAModelLM" in message and "DreamModel" in message


# ----------------------------------------------------------------------------------------------------
# Special tokens
# ----------------------------------------------------------------------------------------------------


def test_resolve_special_tokens_on_tiny_tokenizer(tiny_tokenizer, tiny_model):
    spec = get_spec(tiny_model)
    tokens = resolve_special_tokens(spec, tiny_tokenizer, tiny_model.config)
    assert tiny_tokenizer.convert_ids_to_tokens(tokens.mask_id) == "<|mdm_mask|>"
    assert tiny_tokenizer.convert_ids_to_tokens(list(tokens.stop_ids)) == ["<|eot_id|>", "<|endoftext|>"]
    assert tiny_tokenizer.convert_ids_to_tokens(tokens.pad_id) == "<|endoftext|>"
    assert tokens.logit_shift == 0
    assert tokens.mask_id == tiny_model.config.mask_token_id
    # The tiny tokenizer's ids are not the 8B checkpoint's: resolution is really by text.
    assert tokens.mask_id != spec.mask_token_id
    # Without a config the same ids come back.
    assert resolve_special_tokens(spec, tiny_tokenizer) == tokens


def test_resolve_special_tokens_without_tokenizer_uses_config_then_spec(tiny_model):
    spec = get_spec(tiny_model)
    from_config = resolve_special_tokens(spec, config=tiny_model.config)
    assert from_config.mask_id == tiny_model.config.mask_token_id
    assert from_config.pad_id == tiny_model.config.pad_token_id
    from_spec = resolve_special_tokens(spec)
    assert from_spec.mask_id == spec.mask_token_id
    assert from_spec.stop_ids == spec.stop_token_ids
    assert from_spec.pad_id == spec.pad_token_id


def _tokenizer_without_mask() -> PreTrainedTokenizerFast:
    vocab = {"[UNK]": 0, "<|endoftext|>": 1, "<|eot_id|>": 2, "hello": 3, "world": 4}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def test_tokenizer_without_mask_token_raises(tiny_model):
    spec = get_spec(tiny_model)
    tokenizer = _tokenizer_without_mask()
    assert tokenizer.convert_tokens_to_ids("<|mdm_mask|>") == tokenizer.unk_token_id
    with pytest.raises(ValueError, match=re.escape("<|mdm_mask|>")) as excinfo:
        resolve_special_tokens(spec, tokenizer)
    assert "mask token" in str(excinfo.value)


def test_config_tokenizer_mask_mismatch_raises(tiny_tokenizer, tiny_model):
    spec = get_spec(tiny_model)
    mask_id = tiny_tokenizer.convert_tokens_to_ids("<|mdm_mask|>")
    config = tiny_model.config
    config.mask_token_id = mask_id + 1
    with pytest.raises(ValueError, match="mask_token_id"):
        resolve_special_tokens(spec, tiny_tokenizer, config)
    with pytest.raises(ValueError, match="mask_token_id"):
        resolve_special_tokens(spec, tiny_tokenizer, tiny_model)  # a model is accepted in place of its config


# ----------------------------------------------------------------------------------------------------
# Custom families
# ----------------------------------------------------------------------------------------------------


def test_register_custom_family(restore_registry, tiny_tokenizer):
    spec = DiffusionLMSpec(
        family="my_dlm",
        architectures=("MyDiffusionLM",),
        model_types=("my_dlm",),
        mask_token="<|mdm_mask|>",
        stop_tokens=("<|eot_id|>",),
        pad_token="<|endoftext|>",
        logit_shift=1,
    )
    assert register_diffusion_lm(spec) is spec
    assert "my_dlm" in registered_families()
    assert get_spec(_config(["MyDiffusionLM"], "whatever")) is spec
    assert get_spec(_config(None, "my_dlm")) is spec
    tokens = resolve_special_tokens(spec, tiny_tokenizer)
    assert tokens.logit_shift == 1
    assert tiny_tokenizer.convert_ids_to_tokens(tokens.mask_id) == "<|mdm_mask|>"
    assert tiny_tokenizer.convert_ids_to_tokens(tokens.stop_ids[0]) == "<|eot_id|>"

    duplicate = DiffusionLMSpec(family="my_dlm", architectures=("MyDiffusionLMv2",), mask_token="<|mdm_mask|>")
    with pytest.raises(ValueError, match="overwrite=True"):
        register_diffusion_lm(duplicate)
    assert get_spec(_config(["MyDiffusionLM"], None)) is spec
    assert register_diffusion_lm(duplicate, overwrite=True) is duplicate
    assert get_spec(_config(["MyDiffusionLMv2"], None)) is duplicate
    with pytest.raises(ValueError):
        get_spec(_config(["MyDiffusionLM"], None))

    with pytest.raises(ValueError, match="logit_shift"):
        register_diffusion_lm(DiffusionLMSpec(family="bad", architectures=("Bad",), logit_shift=2))
    assert "bad" not in registered_families()


def test_registry_restored_after_custom_registration():
    # Runs after test_register_custom_family in file order; the fixture must have removed the custom family.
    assert "my_dlm" not in registered_families()


def test_builtin_family_cannot_be_silently_replaced(restore_registry):
    with pytest.raises(ValueError, match="already registered"):
        register_diffusion_lm(DiffusionLMSpec(family="llada", architectures=("LLaDAModelLM",)))
    assert get_spec(_config(["LLaDAModelLM"], "llada")).mask_token == "<|mdm_mask|>"


# ----------------------------------------------------------------------------------------------------
# No hard-coded token ids outside the registry
# ----------------------------------------------------------------------------------------------------

LLADA_TOKEN_IDS = ("126336", "126081", "126348", "126080")


def test_no_hardcoded_llada_token_ids_outside_models():
    package_root = Path(justgrpo_trl.__file__).resolve().parent
    models_dir = package_root / "models"
    pattern = re.compile(r"(?<!\d)(" + "|".join(LLADA_TOKEN_IDS) + r")(?!\d)")
    scanned, offenders = 0, []
    for path in sorted(package_root.rglob("*")):
        if not path.is_file() or models_dir in path.parents or "__pycache__" in path.parts:
            continue
        if path.suffix not in {".py", ".json", ".jinja", ".yaml", ".yml", ".txt", ".md", ".toml", ".cfg"}:
            continue
        scanned += 1
        for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(package_root)}:{lineno}: {line.strip()}")
    assert scanned >= 1  # at least justgrpo_trl/__init__.py
    assert not offenders, "LLaDA token ids hard-coded outside justgrpo_trl/models/:\n" + "\n".join(offenders)


def test_token_id_scan_would_catch_an_offender(tmp_path):
    """The pattern used above matches the ids as literals and not as parts of longer numbers."""
    pattern = re.compile(r"(?<!\d)(" + "|".join(LLADA_TOKEN_IDS) + r")(?!\d)")
    assert pattern.search("mask_id = 126336")
    assert pattern.search("stop=(126348,126081)")
    assert not pattern.search("x = 1263360")
