"""The approximate key/value cache of AR rollouts: the model's cached forward, the cached rollout, and the
importance-sampling correction of the policy gradient (fp32)."""

from functools import partial

import pytest
import torch

from justgrpo_trl.cached_decoding import RolloutCache, cached_ar_decode
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
    decode = ar_decode if cache is None else partial(cached_ar_decode, cache=cache)
    return decode(
        model,
        prompts,
        gen_length=GEN_LENGTH,
        temperature=temperature,
        generator=torch.Generator().manual_seed(seed),
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


@pytest.mark.parametrize(
    "kind, update, lookahead",
    [("prefix", "recompute", 0), ("prefix", "append", 0), ("dual", "recompute", 0), ("dual", "append", 0),
     ("dual", "recompute", 3), ("dual", "append", 3)],
)  # fmt: skip
def test_cached_rollout_equals_a_plain_transcription(stop_heavy_model, kind, update, lookahead):
    """r > 1 (greedy): each cached step equals a plain loop that keeps its own copy of every layer's keys and
    values, refreshed on the full canvas every r steps and overwritten on the span the table in
    `cached_decoding` names."""
    model, tokenizer, tokens = stop_heavy_model
    r = 4
    cached = _decode(model, tokenizer, tokens, RolloutCache(kind, r, update, lookahead), temperature=0.0)
    prompts = [tokenizer(t)["input_ids"] for t in ("hi", "the quick brown fox", "12 + 30 =", "def f(x):")]
    blocks = model.model.transformer.blocks
    for row, prompt in enumerate(prompts):
        canvas = torch.tensor([prompt + [tokens.mask_id] * GEN_LENGTH])
        width, seq = len(prompt), canvas.size(1)
        out, out_logps = [], []
        for step in range(len(cached.completion_ids[row])):
            if step % r == 0:  # refresh: record every layer's keys/values of the full canvas
                keys, values = [], []
                hooks = [b.k_proj.register_forward_hook(_recorder(keys)) for b in blocks]
                hooks += [b.v_proj.register_forward_hook(_recorder(values)) for b in blocks]
                with torch.no_grad():
                    logits = model(input_ids=canvas).logits[0, width + step]
                for hook in hooks:
                    hook.remove()
                refresh = step
            else:
                lo = width + (refresh if update == "recompute" else step - 1)
                hi = seq if kind == "prefix" else min(seq, width + step + 1 + lookahead)
                logits = _plain_span_forward(model, canvas, lo, hi, keys, values)[width + step - lo]
            logits[tokens.mask_id] = float("-inf")
            token = int(logits.argmax())
            out.append(token)
            out_logps.append(float(torch.log_softmax(logits, -1)[token]))
            canvas[0, width + step] = token
        assert out == cached.completion_ids[row], (kind, update, row)
        torch.testing.assert_close(torch.tensor(cached.logprobs[row]), torch.tensor(out_logps), atol=1e-5, rtol=0)


def test_cache_settings_give_different_rollouts(stop_heavy_model):
    """The settings are really different approximations on this model (so the transcription test tells them apart):
    their recorded log-probs differ from each other and from the exact ones."""
    model, tokenizer, tokens = stop_heavy_model
    runs = [_decode(model, tokenizer, tokens, None, temperature=0.0)]
    for kind in ("prefix", "dual"):
        for update in ("recompute", "append"):
            runs.append(_decode(model, tokenizer, tokens, RolloutCache(kind, 4, update), temperature=0.0))
    first = [torch.tensor(run.logprobs[1][:8]) for run in runs]
    for i in range(len(first)):
        for j in range(i):
            assert not torch.allclose(first[i], first[j], atol=1e-4), (i, j)


def _recorder(store: list):
    return lambda module, args, output: store.append(output.detach().clone())


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
    with pytest.raises(ValueError, match="lookahead"):
        RolloutCache("prefix", 4, lookahead=8)
    with pytest.raises(ValueError, match="lookahead"):
        RolloutCache("dual", 4, lookahead=-1)


@pytest.mark.parametrize("update", ["recompute", "append"])
def test_dual_cache_with_a_full_lookahead_is_the_prefix_cache(stop_heavy_model, update):
    """A lookahead reaching the canvas' end recomputes the whole masked suffix at every step, which is what the
    prefix cache does: the same rollout, bit for bit. A shorter lookahead is a different approximation."""
    model, tokenizer, tokens = stop_heavy_model
    prefix = _decode(model, tokenizer, tokens, RolloutCache("prefix", 4, update), seed=1)
    full = _decode(model, tokenizer, tokens, RolloutCache("dual", 4, update, lookahead=GEN_LENGTH), seed=1)
    short = _decode(model, tokenizer, tokens, RolloutCache("dual", 4, update, lookahead=2), seed=1)
    assert full.completion_ids == prefix.completion_ids and full.logprobs == prefix.logprobs
    assert short.logprobs != prefix.logprobs


# ---------------------------------------------------------------------------------------------------------------
# The importance-sampling correction of the policy gradient
# ---------------------------------------------------------------------------------------------------------------


def _cached_trainer(model, tokenizer, tmp_path, **overrides):
    from test_trainer_exact import make_trainer

    options = dict(rollout_cache="dual", rollout_cache_refresh=4, loss_type="grpo")
    options.update(overrides)
    return make_trainer(model, tokenizer, tmp_path, **options)


def _inputs(prompts, completions, sampling, advantages, pad_id):
    from test_trainer_exact import trl_batch

    prompt_ids_, prompt_mask, completion_ids, completion_mask = trl_batch(prompts, completions, pad_id)
    sampling_logps = torch.zeros(completion_mask.shape)
    for row, values in enumerate(sampling):
        sampling_logps[row, : len(values)] = torch.tensor(values)
    return {
        "prompt_ids": prompt_ids_,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": advantages,
        "num_items_in_batch": completion_mask.sum(),
        "sampling_per_token_logps": sampling_logps,
    }


def _trl_truncated_is_gradients(model, prompts, completions, sampling, advantages, tokens, mode, low, high, eps=0.2):
    """A plain transcription of TRL 1.16's `_compute_loss` with `vllm_importance_sampling_correction` (token level,
    loss_type 'grpo', on-policy: old = current log-probs, detached), each exact log-prob from its own forward."""
    from test_trainer_exact import TEMPERATURE, oracle_logps

    model.zero_grad()
    losses = []
    for prompt, completion, sampled, advantage in zip(prompts, completions, sampling, advantages):
        logps = torch.stack(oracle_logps(model, prompt, completion, tokens, TEMPERATURE))
        old = logps.detach()
        ratio = torch.exp(old - torch.tensor(sampled))  # TRL: exp(old_per_token_logps - sampling_per_token_logps)
        if mode == "token_truncate":
            is_ratio = torch.clamp(ratio, min=low, max=high)
        else:
            is_ratio = ratio.masked_fill((ratio < low) | (ratio > high), 0.0)
        coef_1 = torch.exp(logps - old)
        coef_2 = torch.clamp(coef_1, 1 - eps, 1 + eps)
        per_token_loss = -torch.min(coef_1 * advantage, coef_2 * advantage) * is_ratio
        losses.append(per_token_loss.sum() / len(completion))
    (torch.stack(losses).mean()).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked_backward", "checkpointed"])
@pytest.mark.parametrize("mode", ["token_truncate", "token_mask"])
def test_correction_gradient_equals_trl_truncated_is_loss(stop_heavy_model, tmp_path, mode, chunked):
    from test_trainer_exact import prompt_ids, rollout

    model, tokenizer, tokens = stop_heavy_model
    low, high = 0.7, 1.4
    trainer = _cached_trainer(
        model,
        tokenizer,
        tmp_path,
        rollout_cache_importance_sampling_mode=mode,
        rollout_cache_importance_sampling_clip_min=low,
        rollout_cache_importance_sampling_clip_max=high,
        chunked_backward=chunked,
        logprob_chunk_size=3,
    )
    prompts = prompt_ids(tokenizer)[:4]
    completions, sampling = rollout(trainer, prompts)
    # Spread the sampler's log-probs so that ratios fall on both sides of both caps.
    generator = torch.Generator().manual_seed(0)
    sampling = [[v + 0.6 * float(torch.randn((), generator=generator)) for v in row] for row in sampling]
    advantages = torch.tensor([1.0, -0.5, 0.25, -0.75])
    expected = _trl_truncated_is_gradients(model, prompts, completions, sampling, advantages, tokens, mode, low, high)

    inputs = _inputs(prompts, completions, sampling, advantages, tokens.pad_id)
    trainer.model.zero_grad()
    trainer.model.train()
    assert (trainer._chunked_backward_blocker is None) == chunked
    trainer.compute_loss(trainer.model, inputs).backward()
    got = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()}
    num = sum((got[n] - expected[n]).pow(2).sum() for n in expected).sqrt()
    den = sum(expected[n].pow(2).sum() for n in expected).sqrt()
    print(f"\n[IS] {mode}, chunked={chunked}: relative gradient error {(num / den).item():.3e}")
    assert den > 0 and (num / den).item() <= 1e-4
    metrics = trainer._metrics["train"]
    clipped = metrics["sampling/importance_sampling_ratio/clipped_fraction"][-1]
    assert 0.0 < clipped < 1.0
    assert metrics["sampling/importance_sampling_ratio/min"][-1] >= (0.0 if mode == "token_mask" else low - 1e-6)
    assert metrics["sampling/importance_sampling_ratio/max"][-1] <= high + 1e-6


def test_correction_is_off_for_exact_rollouts_and_the_sampler_is_marked_approximate(stop_heavy_model, tmp_path):
    """r = 1 (and no cache) is exact: no correction, the rollout's log-probs may be reused as old log-probs. With
    r > 1 they are never passed off as exact: TRL's old-log-prob pass scores them."""
    model, tokenizer, _ = stop_heavy_model
    from test_trainer_exact import prompt_ids, rollout

    exact = _cached_trainer(model, tokenizer, tmp_path, rollout_cache_refresh=1, num_iterations=2)
    assert exact.estimator.correction is None and exact.estimator.sampling_logprobs_exact
    model.train()
    rollout(exact, prompt_ids(tokenizer)[:2])
    assert exact.estimator._sampling_logps is not None
    cached = _cached_trainer(model, tokenizer, tmp_path, num_iterations=2)
    assert cached.estimator.correction is not None and not cached.estimator.sampling_logprobs_exact
    rollout(cached, prompt_ids(tokenizer)[:2])
    assert cached.estimator._sampling_logps is None


def test_cache_options_are_validated(stop_heavy_model, tmp_path):
    model, tokenizer, _ = stop_heavy_model
    for overrides, message in [
        (dict(rollout_cache="suffix"), "kind"),
        (dict(rollout_cache_importance_sampling_mode="sequence_mask"), "sequence-level"),
        (dict(estimator="diffu_grpo"), "ar_exact"),
        (dict(loss_type="vespo"), "vespo"),
        (dict(rollout_cache="prefix", rollout_cache_lookahead=8), "lookahead"),
    ]:
        with pytest.raises(ValueError, match=message):
            _cached_trainer(model, tokenizer, tmp_path, **overrides)


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked_backward", "checkpointed"])
def test_fast_corrects_only_the_scored_tokens(stop_heavy_model, tmp_path, chunked):
    """JustGRPO-Fast: only the top-entropy tokens are scored, and only they carry a (corrected) policy term; the
    others have no exact log-prob and must not reach the loss (uncapped ratios: a stray one would be huge)."""
    from test_trainer_exact import TEMPERATURE, oracle_logps, prompt_ids, rollout

    model, tokenizer, tokens = stop_heavy_model
    trainer = _cached_trainer(
        model,
        tokenizer,
        tmp_path,
        justgrpo_fast=True,
        top_entropy_quantile=0.25,
        chunked_backward=chunked,
        rollout_cache_importance_sampling_clip_max=None,
    )
    prompts = prompt_ids(tokenizer)[:4]
    completions, sampling = rollout(trainer, prompts)
    recorded = [trainer.estimator.records[row]["entropies"] for row in range(len(completions))]
    threshold = torch.quantile(torch.tensor([e for row in recorded for e in row]), 0.75)
    generator = torch.Generator().manual_seed(1)
    sampling = [[v + 0.5 * float(torch.randn((), generator=generator)) for v in row] for row in sampling]
    advantages = torch.tensor([1.0, -0.5, 0.25, -0.75])
    model.zero_grad()
    for prompt, completion, sampled, entropies, advantage in zip(
        prompts, completions, sampling, recorded, advantages.tolist()
    ):
        for logp, q, entropy in zip(oracle_logps(model, prompt, completion, tokens, TEMPERATURE), sampled, entropies):
            if entropy >= threshold:
                weight = float(torch.exp(logp.detach() - q))
                (-advantage * weight * logp / len(completion) / len(prompts)).backward()
    expected = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    inputs = _inputs(prompts, completions, sampling, advantages, tokens.pad_id)
    trainer.model.zero_grad()
    trainer.model.train()
    trainer.compute_loss(trainer.model, inputs).backward()
    got = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()}
    num = sum((got[n] - expected[n]).pow(2).sum() for n in expected).sqrt()
    den = sum(expected[n].pow(2).sum() for n in expected).sqrt()
    assert den > 0 and (num / den).item() <= 1e-4
    assert trainer._metrics["train"]["sampling/importance_sampling_ratio/clipped_fraction"][-1] == 0.0


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked_backward", "checkpointed"])
def test_training_with_a_cached_rollout_logs_the_ratio_metrics(tmp_path, tiny_checkpoint, chunked):
    """End to end (2 steps, num_iterations=2 so that TRL computes old log-probs): the cached rollout, TRL's
    old-log-prob pass, the correction against it, every parameter trained, the ratio metrics logged."""
    from test_trainer_runs import assert_all_trainable_changed, assert_metrics, run_training

    trainer, before = run_training(
        tmp_path,
        tiny_checkpoint,
        rollout_cache="dual",
        rollout_cache_refresh=4,
        num_iterations=2,
        loss_type="grpo",
        chunked_backward=chunked,
    )
    assert_all_trainable_changed(trainer, before)
    logs = assert_metrics(trainer)
    for name in ("min", "mean", "max", "clipped_fraction"):
        assert all(f"sampling/importance_sampling_ratio/{name}" in log for log in logs), logs
