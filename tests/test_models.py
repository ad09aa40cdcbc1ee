"""The native LLaDA: parity with transformers' Llama without the causal mask, masks, logits slicing, checkpointing,
strict checkpoint keys, the 8B layout, offline Auto-class loading and bf16."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from justgrpo_trl.models import LLaDAConfig, LLaDAModelLM

TOL = 1e-5


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomize_(model: torch.nn.Module, seed: int = 1234) -> torch.nn.Module:
    """Weights at O(1) scale (norm gains away from 1) so that a wrong wiring gives a large logit difference."""
    gen = _generator(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("ln_f.weight"):
                param.copy_(1.0 + 0.3 * torch.randn(param.shape, generator=gen))
            elif param.dim() == 2 and "wte" not in name:
                param.copy_(torch.randn(param.shape, generator=gen) / param.shape[1] ** 0.5)
            else:
                param.copy_(torch.randn(param.shape, generator=gen))
    return model


def _random_ids(batch: int, seq: int, vocab: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=_generator(seed))


def _left_padding_mask(lengths: list[int], seq: int) -> torch.Tensor:
    mask = torch.zeros(len(lengths), seq, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, seq - length :] = 1
    return mask


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# ----------------------------------------------------------------------------------------------------
# 1. Parity with transformers' Llama, causal mask off
# ----------------------------------------------------------------------------------------------------

_BLOCK_RENAMES = {
    "attn_norm": "input_layernorm",
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "attn_out": "self_attn.o_proj",
    "ff_norm": "post_attention_layernorm",
    "ff_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "ff_out": "mlp.down_proj",
}


def _llada_to_llama_key(key: str) -> str:
    prefix = "model.transformer."
    assert key.startswith(prefix), key
    rest = key[len(prefix) :]
    if rest == "wte.weight":
        return "model.embed_tokens.weight"
    if rest == "ln_f.weight":
        return "model.norm.weight"
    if rest == "ff_out.weight":
        return "lm_head.weight"
    blocks, index, module, param = rest.split(".")
    assert blocks == "blocks", key
    return f"model.layers.{index}.{_BLOCK_RENAMES[module]}.{param}"


def _llama_oracle(llada: LLaDAModelLM, attn_implementation: str, causal: bool) -> LlamaForCausalLM:
    cfg = llada.config
    llama_config = LlamaConfig(
        vocab_size=cfg.embedding_size,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        intermediate_size=cfg.mlp_hidden_size,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        max_position_embeddings=cfg.max_sequence_length,
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
        hidden_act="silu",
    )
    if not causal:
        # `create_causal_mask` falls back to `create_bidirectional_mask` when `config.is_causal` is False, and the SDPA
        # integration reads `module.is_causal` when no mask is materialised: both must be off.
        llama_config.is_causal = False
    llama = LlamaForCausalLM._from_config(llama_config, attn_implementation=attn_implementation, dtype=torch.float32)
    if not causal:
        for layer in llama.model.layers:
            layer.self_attn.is_causal = False
    renamed = {_llada_to_llama_key(k): v for k, v in llada.state_dict().items()}
    result = llama.load_state_dict(renamed, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return llama.eval()


@pytest.fixture
def random_llada(tiny_model) -> LLaDAModelLM:
    return _randomize_(tiny_model).eval()


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_parity_with_bidirectional_llama(random_llada, attn_implementation):
    vocab = random_llada.config.embedding_size
    llama = _llama_oracle(random_llada, attn_implementation, causal=False)
    worst = 0.0
    with torch.no_grad():
        for seed, (batch, seq) in enumerate([(1, 1), (2, 7), (3, 16), (2, 33)]):
            ids = _random_ids(batch, seq, vocab, seed)
            ours = random_llada(input_ids=ids).logits
            theirs = llama(input_ids=ids).logits
            assert ours.shape == theirs.shape == (batch, seq, vocab)
            worst = max(worst, _max_diff(ours, theirs))
            # The same with a left-padding mask (rows of different real lengths; row 0 unpadded).
            if seq > 1:
                lengths = [seq] + [max(1, seq - 3 * r - 2) for r in range(1, batch)]
                mask = _left_padding_mask(lengths, seq)
                ours = random_llada(input_ids=ids, attention_mask=mask).logits
                theirs = llama(input_ids=ids, attention_mask=mask).logits
                real = mask.bool()
                worst = max(worst, _max_diff(ours[real], theirs[real]))
    print(f"\n[parity {attn_implementation}] max |delta logits| LLaDA vs bidirectional Llama = {worst:.3e}")
    assert worst <= TOL


def test_llama_oracle_is_really_bidirectional(random_llada):
    """The oracle must differ from causal Llama, or the parity test would not prove the mask is off."""
    ids = _random_ids(2, 12, random_llada.config.embedding_size, 7)
    with torch.no_grad():
        ours = random_llada(input_ids=ids).logits
        for implementation in ("sdpa", "eager"):
            causal = _llama_oracle(random_llada, implementation, causal=True)(input_ids=ids).logits
            bidirectional = _llama_oracle(random_llada, implementation, causal=False)(input_ids=ids).logits
            assert _max_diff(bidirectional, ours) <= TOL
            assert _max_diff(causal, ours) > 1e-2
            assert _max_diff(causal, bidirectional) > 1e-2


def test_future_tokens_change_past_logits(random_llada):
    ids = _random_ids(1, 10, random_llada.config.embedding_size, 3)
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % random_llada.config.embedding_size
    with torch.no_grad():
        a, b = random_llada(input_ids=ids).logits, random_llada(input_ids=changed).logits
    assert _max_diff(a[:, 0], b[:, 0]) > 1e-3


# ----------------------------------------------------------------------------------------------------
# 2. Left-padding invariance
# ----------------------------------------------------------------------------------------------------


def test_left_padding_invariance(random_llada):
    vocab = random_llada.config.embedding_size
    pad_id = random_llada.config.pad_token_id
    short = _random_ids(1, 6, vocab, 11)
    long = _random_ids(1, 15, vocab, 12)
    batch = torch.cat([long, torch.cat([torch.full((1, 9), pad_id), short], dim=1)])
    mask = _left_padding_mask([15, 6], 15)
    with torch.no_grad():
        alone_short = random_llada(input_ids=short).logits[0]
        alone_long = random_llada(input_ids=long).logits[0]
        batched = random_llada(input_ids=batch, attention_mask=mask).logits
        # Without the mask the padding leaks into the short row: the invariance below is not trivial.
        unmasked = random_llada(input_ids=batch).logits
    diff = _max_diff(batched[1, 9:], alone_short)
    print(f"\n[left padding] max |delta logits| = {diff:.3e}")
    assert diff <= TOL
    assert _max_diff(batched[0], alone_long) <= TOL
    assert _max_diff(unmasked[1, 9:], alone_short) > 1e-3


# ----------------------------------------------------------------------------------------------------
# 3. logits_to_keep
# ----------------------------------------------------------------------------------------------------


def test_logits_to_keep(random_llada):
    vocab = random_llada.config.embedding_size
    ids = _random_ids(3, 10, vocab, 21)
    with torch.no_grad():
        full = random_llada(input_ids=ids).logits
        assert full.shape == (3, 10, vocab)
        assert torch.equal(random_llada(input_ids=ids, logits_to_keep=0).logits, full)

        last = random_llada(input_ids=ids, logits_to_keep=4).logits
        assert last.shape == (3, 4, vocab)
        assert _max_diff(last, full[:, -4:]) <= TOL

        positions = torch.tensor([0, 5, 9, 2])
        picked = random_llada(input_ids=ids, logits_to_keep=positions).logits
        assert picked.shape == (3, 4, vocab)
        assert _max_diff(picked, full[:, positions]) <= TOL

        per_row = torch.tensor([[0, 1, 2], [9, 3, 3], [4, 8, 7]])
        picked = random_llada(input_ids=ids, logits_to_keep=per_row).logits
        assert picked.shape == (3, 3, vocab)
        expected = torch.stack([full[b, per_row[b]] for b in range(3)])
        assert _max_diff(picked, expected) <= TOL

        keep = torch.zeros(3, 10, dtype=torch.bool)
        keep[0, [1, 4]] = True
        keep[2, [0, 3, 9]] = True
        picked = random_llada(input_ids=ids, logits_to_keep=keep).logits
        assert picked.shape == (5, vocab)
        assert _max_diff(picked, full[keep]) <= TOL
        assert _max_diff(picked[2], full[2, 0]) <= TOL


def test_per_row_logits_to_keep_prunes_the_last_block_exactly(random_llada):
    """Per-row positions run the last block at the kept rows only: same logits and gradients as the full forward
    (logits at every position, then picked), with a padding mask, a 4D mask with distinct rows, shifted position
    ids, and under gradient checkpointing."""
    model = random_llada.train()
    vocab = model.config.embedding_size
    ids = _random_ids(3, 12, vocab, 71)
    padding = _left_padding_mask([12, 9, 6], 12)
    per_query = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(1)) > 0.3
    per_query |= torch.eye(12, dtype=torch.bool)  # every query attends to something
    keep = torch.tensor([[11, 4], [3, 10], [7, 8]])
    calls = []
    hook = model.model.transformer.blocks[-1].register_forward_hook(lambda m, a, out: calls.append(out.shape))

    def picked_and_grads(mask, position_ids, full: bool):
        model.zero_grad(set_to_none=True)
        kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=position_ids)
        if full:
            logits = model(**kwargs).logits
            logits = torch.stack([logits[b, keep[b]] for b in range(3)])
        else:
            logits = model(**kwargs, logits_to_keep=keep).logits
        logits.logsumexp(-1).mul(torch.tensor([[1.0, -2.0]])).sum().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    cases = [(None, None), (padding, None), (per_query, None), (padding, torch.arange(12).expand(3, 12) + 5)]
    try:
        for checkpointing in (False, True):
            if checkpointing:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            for mask, position_ids in cases:
                calls.clear()
                expected, expected_grads = picked_and_grads(mask, position_ids, full=True)
                got, got_grads = picked_and_grads(mask, position_ids, full=False)
                assert calls[-1] == (3, 2, model.config.d_model)  # the last block's output: kept rows only
                assert _max_diff(got, expected) <= TOL
                for name, grad in expected_grads.items():
                    assert (got_grads[name] - grad).norm() <= 1e-5 * grad.norm() + 1e-12, name
    finally:
        hook.remove()
        model.gradient_checkpointing_disable()
    with pytest.raises(ValueError, match="query_positions"):
        model.model(input_ids=ids, query_positions=keep, output_hidden_states=True)
    hidden = model(input_ids=ids, logits_to_keep=keep, output_hidden_states=True)  # falls back to the full forward
    assert len(hidden.hidden_states) == model.config.n_layers + 1 and hidden.logits.shape == (3, 2, vocab)


# ----------------------------------------------------------------------------------------------------
# 4. Gradient checkpointing
# ----------------------------------------------------------------------------------------------------


def _gradients(model: LLaDAModelLM, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids, attention_mask=mask).logits
    loss = F.cross_entropy(logits.flatten(0, 1), ids.flatten(), reduction="none")
    (loss * mask.flatten()).sum().backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def test_gradient_checkpointing_gives_identical_gradients(random_llada):
    model = random_llada.train()
    assert model.config.attention_dropout == model.config.residual_dropout == model.config.embedding_dropout == 0.0
    ids = _random_ids(2, 12, model.config.embedding_size, 31)
    mask = _left_padding_mask([12, 8], 12)
    reference = _gradients(model, ids, mask)

    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.is_gradient_checkpointing
    assert all(block.gradient_checkpointing for block in model.model.transformer.blocks)
    checkpointed = _gradients(model, ids, mask)
    model.gradient_checkpointing_disable()

    assert reference.keys() == checkpointed.keys()
    assert all(g.abs().sum() > 0 for g in reference.values())
    worst = max(_max_diff(reference[k], checkpointed[k]) for k in reference)
    assert worst <= 1e-6, worst


# ----------------------------------------------------------------------------------------------------
# 5. Save / load with strict keys
# ----------------------------------------------------------------------------------------------------


def _load_with_info(directory) -> tuple[LLaDAModelLM, dict]:
    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, output_loading_info=True)


def test_save_load_round_trip_strict_keys(random_llada, tmp_path):
    random_llada.save_pretrained(tmp_path / "ckpt")
    stored = load_file(tmp_path / "ckpt" / "model.safetensors")
    assert set(stored) == set(random_llada.state_dict())
    assert all(k.startswith("model.transformer.") for k in stored)

    loaded, info = _load_with_info(tmp_path / "ckpt")
    assert type(loaded) is LLaDAModelLM
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    original = dict(random_llada.named_parameters())
    for name, param in loaded.named_parameters():
        assert torch.equal(param, original[name]), name
    assert len(dict(loaded.named_parameters())) == len(original)


def _corrupt_copy(source: Path, target: Path, edit) -> Path:
    shutil.copytree(source, target)
    weights = load_file(target / "model.safetensors")
    edit(weights)
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    return target


def test_loading_reports_missing_and_unexpected_keys(random_llada, tmp_path):
    random_llada.save_pretrained(tmp_path / "ckpt")
    missing = "model.transformer.blocks.1.attn_out.weight"
    missing_dir = _corrupt_copy(tmp_path / "ckpt", tmp_path / "missing", lambda w: w.pop(missing))
    _, info = _load_with_info(missing_dir)
    assert set(info["missing_keys"]) == {missing}, info

    extra = "model.transformer.blocks.0.extra_proj.weight"
    extra_dir = _corrupt_copy(tmp_path / "ckpt", tmp_path / "extra", lambda w: w.__setitem__(extra, torch.zeros(2, 2)))
    _, info = _load_with_info(extra_dir)
    assert set(info["unexpected_keys"]) == {extra}, info
    assert not info["missing_keys"], info


# ----------------------------------------------------------------------------------------------------
# 6. The 8B layout
# ----------------------------------------------------------------------------------------------------

D_MODEL, MLP, VOCAB, N_LAYERS = 4096, 12288, 126464, 32
EXPECTED_8B_BLOCK = {
    "attn_norm.weight": (4096,),
    "q_proj.weight": (4096, 4096),
    "k_proj.weight": (4096, 4096),
    "v_proj.weight": (4096, 4096),
    "attn_out.weight": (4096, 4096),
    "ff_norm.weight": (4096,),
    "ff_proj.weight": (12288, 4096),
    "up_proj.weight": (12288, 4096),
    "ff_out.weight": (4096, 12288),
}
EXPECTED_8B = {
    "model.transformer.wte.weight": (126464, 4096),
    **{
        f"model.transformer.blocks.{i}.{name}": shape
        for i in range(N_LAYERS)
        for name, shape in EXPECTED_8B_BLOCK.items()
    },
    "model.transformer.ln_f.weight": (4096,),
    "model.transformer.ff_out.weight": (126464, 4096),
}


def _numel(shape: tuple[int, ...]) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


def test_8b_config_matches_published_checkpoint_layout():
    config = LLaDAConfig()
    assert (config.d_model, config.n_layers, config.n_heads, config.n_kv_heads) == (4096, 32, 32, 32)
    assert (config.mlp_hidden_size, config.vocab_size, config.embedding_size) == (12288, 126464, 126464)
    with torch.device("meta"):
        model = LLaDAModelLM(config)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes == EXPECTED_8B
    assert {name: tuple(t.shape) for name, t in model.state_dict().items()} == EXPECTED_8B

    expected_total = sum(_numel(shape) for shape in EXPECTED_8B.values())
    # 2 * 126464 * 4096 (embedding + head) + 32 * (4 * 4096^2 + 3 * 4096 * 12288 + 2 * 4096) + 4096
    assert (
        expected_total == 2 * VOCAB * D_MODEL + N_LAYERS * (4 * D_MODEL**2 + 3 * D_MODEL * MLP + 2 * D_MODEL) + D_MODEL
    )
    assert expected_total == 8_015_581_184
    assert model.num_parameters() == expected_total
    assert abs(expected_total / 8.02e9 - 1) < 1e-3


# ----------------------------------------------------------------------------------------------------
# 7. Hub-style config.json with auto_map loads the native class offline
# ----------------------------------------------------------------------------------------------------


@pytest.fixture
def hub_style_checkpoint(tiny_checkpoint, tmp_path) -> Path:
    directory = tmp_path / "hub-style"
    shutil.copytree(tiny_checkpoint, directory)
    for code in ("configuration_llada.py", "modeling_llada.py"):  # the copies our save writes; the hub's fail anyway
        (directory / code).unlink()
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config.update(
        {
            "auto_map": {
                "AutoConfig": "configuration_llada.LLaDAConfig",
                "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
                "AutoModel": "modeling_llada.LLaDAModelLM",
            },
            "init_fn": "mitchell",
            "init_device": "meta",
            "init_cutoff_factor": None,
            "precision": "amp_bf16",
            "mlp_ratio": 4,
            "multi_query_attention": None,
            "flash_attention": False,
            "attention_layer_norm": False,
            "block_group_size": 1,
            "rope_full_precision": True,
            "scale_logits": False,
            "input_emb_norm": False,
            "transformers_version": "4.46.3",
        }
    )
    config_path.write_text(json.dumps(config, indent=2))
    # No configuration_llada.py / modeling_llada.py next to it: the remote code could not be loaded anyway.
    assert not (directory / "modeling_llada.py").exists()
    return directory


@pytest.mark.parametrize("trust_remote_code", [None, False])
def test_hub_style_config_loads_native_class(hub_style_checkpoint, tiny_model, trust_remote_code):
    kwargs = {} if trust_remote_code is None else {"trust_remote_code": trust_remote_code}
    config = AutoConfig.from_pretrained(hub_style_checkpoint, **kwargs)
    assert type(config) is LLaDAConfig
    assert config.init_fn == "mitchell" and config.precision == "amp_bf16" and config.mlp_ratio == 4
    for auto_class in (AutoModel, AutoModelForCausalLM):
        model = auto_class.from_pretrained(hub_style_checkpoint, dtype=torch.float32, **kwargs)
        assert type(model) is LLaDAModelLM, auto_class
        for (name, param), (ref_name, ref) in zip(model.named_parameters(), tiny_model.named_parameters()):
            assert name == ref_name and torch.equal(param, ref), name


def test_hub_style_config_loads_through_trl(hub_style_checkpoint):
    from trl.trainer.utils import create_model_from_path

    model = create_model_from_path(str(hub_style_checkpoint))
    assert type(model) is LLaDAModelLM
    assert model.dtype == torch.float32


# ----------------------------------------------------------------------------------------------------
# 8. bf16
# ----------------------------------------------------------------------------------------------------


def test_bf16_close_to_fp32_and_no_global_dtype_change(tiny_checkpoint, tiny_model):
    default_dtype = torch.get_default_dtype()
    bf16 = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.bfloat16).eval()
    assert torch.get_default_dtype() == default_dtype == torch.float32
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    fp32 = _randomize_(tiny_model)
    with torch.no_grad():
        for (_, p16), (_, p32) in zip(bf16.named_parameters(), fp32.named_parameters()):
            p16.copy_(p32)
        ids = _random_ids(2, 24, fp32.config.embedding_size, 41)
        mask = _left_padding_mask([24, 17], 24)
        low = bf16(input_ids=ids, attention_mask=mask).logits
        high = fp32(input_ids=ids, attention_mask=mask).logits
    assert low.dtype == torch.bfloat16 and high.dtype == torch.float32
    assert torch.isfinite(low).all()
    real = mask.bool()
    diff = _max_diff(low[real], high[real])
    scale = high[real].abs().max().item()
    print(f"\n[bf16] max |delta logits| bf16 vs fp32 = {diff:.3e} (max |logit| {scale:.2f}, ratio {diff / scale:.3e})")
    assert diff <= 0.05 * scale
    agreement = (low[real].argmax(-1) == high[real].argmax(-1)).float().mean().item()
    assert agreement >= 0.9
    assert torch.get_default_dtype() == default_dtype


def test_model_construction_leaves_default_dtype(tiny_tokenizer):
    from justgrpo_trl.models.tiny import build_tiny_llada

    before = torch.get_default_dtype()
    build_tiny_llada(tiny_tokenizer)
    LLaDAModelLM(LLaDAConfig(d_model=32, n_layers=1, n_heads=2, mlp_hidden_size=64, vocab_size=50))
    assert torch.get_default_dtype() == before == torch.float32


# ----------------------------------------------------------------------------------------------------
# 9. hidden states, 4D masks, default position ids
# ----------------------------------------------------------------------------------------------------


def test_output_hidden_states(random_llada):
    ids = _random_ids(2, 9, random_llada.config.embedding_size, 51)
    with torch.no_grad():
        out = random_llada(input_ids=ids, output_hidden_states=True)
        assert random_llada(input_ids=ids).hidden_states is None
    assert len(out.hidden_states) == random_llada.config.n_layers + 1
    assert all(h.shape == (2, 9, random_llada.config.d_model) for h in out.hidden_states)
    assert torch.equal(out.hidden_states[0], random_llada.get_input_embeddings()(ids))
    # As in transformers (and the original LLaDA code), the last entry is after the final norm: the head applies to it.
    head = F.linear(out.hidden_states[-1], random_llada.model.transformer.ff_out.weight)
    assert _max_diff(head, out.logits) <= TOL
    with torch.no_grad():
        reference = _llama_oracle(random_llada, "sdpa", causal=False)(input_ids=ids, output_hidden_states=True)
    assert len(reference.hidden_states) == len(out.hidden_states)
    for ours, theirs in zip(out.hidden_states, reference.hidden_states):
        assert _max_diff(ours, theirs) <= TOL


def test_4d_masks_equal_2d_padding_mask(random_llada):
    ids = _random_ids(2, 11, random_llada.config.embedding_size, 61)
    mask = _left_padding_mask([11, 5], 11)
    additive = torch.zeros(2, 1, 11, 11)
    additive.masked_fill_(~mask.bool()[:, None, None, :], torch.finfo(torch.float32).min)
    boolean = mask.bool()[:, None, None, :].expand(2, 1, 11, 11)
    with torch.no_grad():
        reference = random_llada(input_ids=ids, attention_mask=mask).logits
        from_additive = random_llada(input_ids=ids, attention_mask=additive).logits
        from_boolean = random_llada(input_ids=ids, attention_mask=boolean).logits
        unmasked = random_llada(input_ids=ids).logits
    assert _max_diff(from_additive, reference) <= TOL
    assert _max_diff(from_boolean, reference) <= TOL
    assert _max_diff(unmasked[1, 6:], reference[1, 6:]) > 1e-3


def test_default_position_ids_are_arange(random_llada):
    ids = _random_ids(2, 13, random_llada.config.embedding_size, 71)
    with torch.no_grad():
        default = random_llada(input_ids=ids).logits
        explicit_2d = random_llada(input_ids=ids, position_ids=torch.arange(13).expand(2, 13)).logits
        explicit_1d = random_llada(input_ids=ids, position_ids=torch.arange(13)).logits
        shifted = random_llada(input_ids=ids, position_ids=torch.arange(13).expand(2, 13) * 2).logits
    assert torch.equal(default, explicit_2d)
    assert torch.equal(default, explicit_1d)
    assert _max_diff(default, shifted) > 1e-3


def test_all_ones_2d_mask_equals_no_mask(random_llada):
    ids = _random_ids(2, 8, random_llada.config.embedding_size, 81)
    with torch.no_grad():
        a = random_llada(input_ids=ids).logits
        b = random_llada(input_ids=ids, attention_mask=torch.ones(2, 8, dtype=torch.long)).logits
    assert _max_diff(a, b) <= TOL
