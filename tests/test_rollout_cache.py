"""The approximate key/value cache of AR rollouts: the model's cached forward, the cached rollout, and the
importance-sampling correction of the policy gradient (fp32)."""

import pytest
import torch

from justgrpo_trl.cached_decoding import RolloutCache
from justgrpo_trl.decoding import ar_decode, build_canvas, left_pad

GEN_LENGTH = 12


def _canvas(tokens, tokenizer, texts=("hi", "the quick brown fox", "12 + 30 =")):
    """A left-padded canvas with a few slots decoded (random ids), and its key-padding mask."""
    prompts = [tokenizer(t)["input_ids"] for t in texts]
    ids, mask = left_pad(prompts, tokens.pad_id)
    canvas, attention_mask = build_canvas(ids, mask, GEN_LENGTH, tokens.mask_id)
    generator = torch.Generator().manual_seed(3)
    canvas[:, ids.size(1) : ids.size(1) + 5] = torch.randint(0, 200, (len(texts), 5), generator=generator)
    return canvas, attention_mask, ids.size(1)


def test_refresh_is_the_default_forward_bit_for_bit(stop_heavy_model):
    model, tokenizer, tokens = stop_heavy_model
    canvas, attention_mask, width = _canvas(tokens, tokenizer)
    keep = torch.full((canvas.size(0), 1), width + 5)
    with torch.no_grad():
        expected = model(input_ids=canvas, attention_mask=attention_mask, logits_to_keep=keep).logits
        logits, cache = model.forward_cached(canvas, attention_mask, 0, None, keep)
    assert torch.equal(logits, expected)
    layers, shape = model.config.n_layers, (canvas.size(0), model.config.n_kv_heads, canvas.size(1))
    assert len(cache.keys) == layers and cache.keys[0].shape[:3] == shape
    assert cache.nbytes == 2 * layers * canvas.numel() * model.config.d_model * 4


@pytest.mark.parametrize("start,end", [(0, 4), (9, 14), (12, None)])
def test_span_with_a_fresh_cache_equals_the_full_forward(stop_heavy_model, start, end):
    """A cache refreshed on this very canvas is exact: any span's logits equal the full forward's (fp32 1e-5)."""
    model, tokenizer, tokens = stop_heavy_model
    canvas, attention_mask, _ = _canvas(tokens, tokenizer)
    end = canvas.size(1) if end is None else end
    with torch.no_grad():
        full = model(input_ids=canvas, attention_mask=attention_mask).logits
        _, cache = model.forward_cached(canvas, attention_mask, 0, None, torch.zeros((canvas.size(0), 1), dtype=int))
        span = torch.arange(end - start).expand(canvas.size(0), -1)
        logits, _ = model.forward_cached(canvas[:, start:end], attention_mask, start, cache, span)
    torch.testing.assert_close(logits, full[:, start:end], atol=1e-5, rtol=1e-5)


def test_span_reads_stale_keys_from_the_cache(stop_heavy_model):
    """Positions outside the span are read from the cache as they are: a cache refreshed on another canvas gives
    other logits, and the span's own keys and values are written into the cache."""
    model, tokenizer, tokens = stop_heavy_model
    canvas, attention_mask, width = _canvas(tokens, tokenizer)
    other = canvas.clone()
    other[:, width + 5 :] = 7
    keep = torch.zeros((canvas.size(0), 1), dtype=torch.long)
    with torch.no_grad():
        full = model(input_ids=canvas, attention_mask=attention_mask).logits[:, width : width + 2]
        _, stale = model.forward_cached(other, attention_mask, 0, None, keep)
        _, fresh = model.forward_cached(canvas, attention_mask, 0, None, keep)
        before = stale.keys[-1][:, :, width].clone()
        stale.keys[-1][:, :, width] = 0.0
        span = torch.arange(2).expand(canvas.size(0), -1)
        logits, stale = model.forward_cached(canvas[:, width : width + 2], attention_mask, width, stale, span)
    assert not torch.allclose(logits, full, atol=1e-3)
    # The span's keys are written into the cache: the first layer's depend on the token only (the fresh ones), the
    # last layer's on the stale context the span saw (the values computed from it before).
    torch.testing.assert_close(stale.keys[0][:, :, width], fresh.keys[0][:, :, width], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stale.keys[-1][:, :, width], before, atol=1e-5, rtol=1e-5)


def _decode(model, tokenizer, tokens, cache, seed=0, temperature=1.0, **kwargs):
    prompts = [tokenizer(t)["input_ids"] for t in ("hi", "the quick brown fox", "12 + 30 =", "def f(x):")]
    return ar_decode(
        model,
        prompts,
        gen_length=GEN_LENGTH,
        temperature=temperature,
        generator=torch.Generator().manual_seed(seed),
        cache=cache,
        **tokens.decode_kwargs(),
        **kwargs,
    )


@pytest.mark.parametrize("kind", ["prefix", "dual"])
@pytest.mark.parametrize("update", ["recompute", "append"])
def test_refresh_every_token_is_the_exact_rollout(stop_heavy_model, kind, update):
    """r = 1: every step is a refresh, so the cached rollout is the exact one, token for token, with the same
    recorded log-probs and entropies (rows stop at varied lengths and leave the batch)."""
    model, tokenizer, tokens = stop_heavy_model
    for seed in range(3):
        exact = _decode(model, tokenizer, tokens, None, seed=seed, top_k=50)
        cached = _decode(model, tokenizer, tokens, RolloutCache(kind, 1, update), seed=seed, top_k=50)
        assert cached.completion_ids == exact.completion_ids
        assert cached.logprobs == exact.logprobs and cached.entropies == exact.entropies
    assert len({len(c) for c in exact.completion_ids}) > 1  # varied lengths: rows left the batch


@pytest.mark.parametrize("kind", ["prefix", "dual"])
@pytest.mark.parametrize("update", ["recompute", "append"])
def test_cached_rollout_equals_a_plain_transcription(stop_heavy_model, kind, update):
    """r > 1 (greedy): each cached step equals a plain loop that keeps its own copy of every layer's keys and
    values, refreshed on the full canvas every r steps and overwritten on the span the table in
    `cached_decoding` names."""
    model, tokenizer, tokens = stop_heavy_model
    r = 4
    cached = _decode(model, tokenizer, tokens, RolloutCache(kind, r, update), temperature=0.0)
    prompts = [tokenizer(t)["input_ids"] for t in ("hi", "the quick brown fox", "12 + 30 =", "def f(x):")]
    blocks = model.model.transformer.blocks
    for row, prompt in enumerate(prompts):
        canvas = torch.tensor([prompt + [tokens.mask_id] * GEN_LENGTH])
        width, seq = len(prompt), canvas.size(1)
        out = []
        for step in range(len(cached.completion_ids[row])):
            if step % r == 0:  # refresh: record every layer's keys/values of the full canvas
                keys, values = [], []
                hooks = [
                    b.k_proj.register_forward_hook(lambda m, i, o: keys.append(o.detach().clone())) for b in blocks
                ] + [b.v_proj.register_forward_hook(lambda m, i, o: values.append(o.detach().clone())) for b in blocks]
                with torch.no_grad():
                    logits = model(input_ids=canvas).logits[0, width + step]
                for hook in hooks:
                    hook.remove()
                refresh = step
            else:
                lo = width + (refresh if update == "recompute" else step - 1)
                hi = seq if kind == "prefix" else width + step + 1
                logits = _plain_span_forward(model, canvas, lo, hi, keys, values)[width + step - lo]
            logits[tokens.mask_id] = float("-inf")
            token = int(logits.argmax())
            out.append(token)
            canvas[0, width + step] = token
        assert out == cached.completion_ids[row], (kind, update, row)


def _plain_span_forward(model, canvas, lo, hi, keys, values):
    """One block at a time, by hand: the span's k/v (pre-RoPE projections) overwrite the stored ones, the other
    positions use the stored ones; RoPE at absolute positions; full bidirectional attention."""
    from justgrpo_trl.models.modeling_llada import apply_rotary, rotary_cos_sin

    config = model.config
    heads, dim = config.n_heads, config.head_dim
    seq = canvas.size(1)
    cos, sin = rotary_cos_sin(torch.arange(seq)[None], dim, config.rope_theta, canvas.device)
    with torch.no_grad():
        hidden = model.model.transformer.wte(canvas[:, lo:hi])
        for index, block in enumerate(model.model.transformer.blocks):
            normed = block.attn_norm(hidden)
            keys[index][:, lo:hi] = block.k_proj(normed)
            values[index][:, lo:hi] = block.v_proj(normed)
            k = apply_rotary(keys[index].view(1, seq, heads, dim).transpose(1, 2), cos, sin)
            v = values[index].view(1, seq, heads, dim).transpose(1, 2)
            q = block.q_proj(normed).view(1, hi - lo, heads, dim).transpose(1, 2)
            q = apply_rotary(q, cos[:, lo:hi], sin[:, lo:hi])
            weights = torch.softmax(q @ k.transpose(-1, -2) / dim**0.5, dim=-1)
            attn = (weights @ v).transpose(1, 2).reshape(1, hi - lo, -1)
            hidden = hidden + block.attn_out(attn)
            normed = block.ff_norm(hidden)
            hidden = hidden + block.ff_out(torch.nn.functional.silu(block.ff_proj(normed)) * block.up_proj(normed))
        return model.model.transformer.ff_out(model.model.transformer.ln_f(hidden))[0]


def test_cache_options_are_checked():
    with pytest.raises(ValueError, match="kind"):
        RolloutCache("suffix", 4)
    with pytest.raises(ValueError, match="refresh_every"):
        RolloutCache("dual", 0)
    with pytest.raises(ValueError, match="update"):
        RolloutCache("dual", 4, "lazy")
