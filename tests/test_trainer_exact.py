"""Numerical exactness of JustGRPO's rollouts, log-probs and gradients, against plain brute-force loops (fp32)."""

import pytest
import torch
from datasets import Dataset

from justgrpo_trl import JustGRPOConfig, JustGRPOTrainer
from justgrpo_trl.decoding import ar_decode

GEN_LENGTH = 10
TEMPERATURE = 0.7


def varied_length_reward(prompts, completions, **kwargs):
    return [float(len(c) % 5) for c in completions]


def make_trainer(model, tokenizer, tmp_path, **overrides) -> JustGRPOTrainer:
    config = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=GEN_LENGTH,
        temperature=TEMPERATURE,
        max_steps=1,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logprob_chunk_size=7,
        gradient_checkpointing=False,
        bf16=False,  # TRL defaults to bf16 autocast; exactness is checked in fp32
    )
    config.update(overrides)
    dataset = Dataset.from_dict({"prompt": ["hi", "the quick brown fox", "12 + 30 =", "def add(a, b):"]})
    trainer = JustGRPOTrainer(
        model=model,
        reward_funcs=varied_length_reward,
        args=JustGRPOConfig(**config),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
    return trainer


PROMPTS = ["hi", "the quick brown fox jumps", "12 + 30 =", "def add(a, b):\n", "Question: what is 7 * 6?"]


def prompt_ids(tokenizer, texts=PROMPTS) -> list[list[int]]:
    return [tokenizer(t)["input_ids"] for t in texts]


def trl_batch(prompts: list[list[int]], completions: list[list[int]], pad_id: int):
    """Prompt left-padded + completion right-padded, with TRL's attention mask, as `_compute_loss` receives them."""
    width_p, width_c = max(map(len, prompts)), max(map(len, completions))
    prompt_ids = torch.full((len(prompts), width_p), pad_id)
    prompt_mask = torch.zeros_like(prompt_ids)
    completion_ids = torch.full((len(prompts), width_c), pad_id)
    completion_mask = torch.zeros_like(completion_ids)
    for row, (p, c) in enumerate(zip(prompts, completions)):
        prompt_ids[row, width_p - len(p) :], prompt_mask[row, width_p - len(p) :] = torch.tensor(p), 1
        completion_ids[row, : len(c)], completion_mask[row, : len(c)] = torch.tensor(c), 1
    return prompt_ids, prompt_mask, completion_ids, completion_mask


def oracle_logps(model, prompt: list[int], completion: list[int], tokens, temperature: float) -> list[torch.Tensor]:
    """One forward per completion token on the unpadded canvas [prompt | c_<j | MASK x (L - j)], full logits."""
    logps = []
    for j, token in enumerate(completion):
        canvas = prompt + completion[:j] + [tokens.mask_id] * (GEN_LENGTH - j)
        logits = model(input_ids=torch.tensor([canvas])).logits[0, len(prompt) + j].float() / temperature
        logits[tokens.mask_id] = float("-inf")
        logps.append(torch.log_softmax(logits, dim=-1)[token])
    return logps


def rollout(trainer, prompts):
    torch.manual_seed(0)
    return trainer._generate_single_turn(prompts, None, {}, 1)


def test_scoring_equals_sampling_logprobs(stop_heavy_model, tmp_path):
    model, tokenizer, tokens = stop_heavy_model
    trainer = make_trainer(model, tokenizer, tmp_path)
    prompts = prompt_ids(tokenizer) * 3
    completions, sampling_logps = rollout(trainer, prompts)
    lengths = {len(c) for c in completions}
    assert len(lengths) >= 3, f"completions should end at varied lengths, got {lengths}"
    batch = trl_batch(prompts, completions, tokens.pad_id)
    input_ids, attention_mask = torch.cat(batch[0::2], 1), torch.cat(batch[1::2], 1)
    with torch.no_grad():
        logps, entropies, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, input_ids, attention_mask, batch[2].size(1), compute_entropy=True
        )
    mask = batch[3].bool()
    expected = torch.zeros_like(logps)
    for row, values in enumerate(sampling_logps):
        expected[row, : len(values)] = torch.tensor(values)
    delta = (logps - expected)[mask].abs().max().item()
    print(f"\n[test 1] max |scoring - sampling| log-prob = {delta:.3e} over {int(mask.sum())} tokens")
    assert delta <= 1e-5
    assert torch.all(logps[~mask] == 0)
    assert torch.isfinite(entropies).all() and (entropies[mask] > 0).all()


def test_logprobs_equal_brute_force_oracle(stop_heavy_model, tmp_path):
    model, tokenizer, tokens = stop_heavy_model
    trainer = make_trainer(model, tokenizer, tmp_path, logprob_chunk_size=4)
    prompts = prompt_ids(tokenizer)
    completions, _ = rollout(trainer, prompts)
    batch = trl_batch(prompts, completions, tokens.pad_id)
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.cat(batch[0::2], 1), torch.cat(batch[1::2], 1), batch[2].size(1)
        )
        delta = 0.0
        for row, (prompt, completion) in enumerate(zip(prompts, completions)):
            expected = torch.stack(oracle_logps(model, prompt, completion, tokens, TEMPERATURE))
            delta = max(delta, (logps[row, : len(completion)] - expected).abs().max().item())
    print(f"\n[test 2] max |trainer - oracle| log-prob = {delta:.3e}")
    assert delta <= 1e-5


def trainer_gradients(trainer, prompts, completions, advantages, tokens, chunked=False) -> dict[str, torch.Tensor]:
    """The gradient of one micro-batch as the Trainer takes it: `compute_loss` then `backward`. `chunked=False` runs
    TRL's `_compute_loss` (checkpointed chunks, one backward); `chunked=True` the `chunked_backward` path, which
    backpropagates all chunks but the last inside `compute_loss`."""
    prompt_ids_, prompt_mask, completion_ids, completion_mask = trl_batch(prompts, completions, tokens.pad_id)
    inputs = {
        "prompt_ids": prompt_ids_,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": advantages,
        "num_items_in_batch": completion_mask.sum(),
    }
    trainer.model.zero_grad()
    trainer.model.train()
    if chunked:
        assert trainer._chunked_backward_blocker is None, trainer._chunked_backward_blocker
        trainer.compute_loss(trainer.model, inputs).backward()
    else:
        trainer._compute_loss(trainer.model, inputs).backward()
    return {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()}


def plain_justgrpo_gradients(model, prompts, completions, advantages, tokens, loss_type) -> dict[str, torch.Tensor]:
    """The plain JustGRPO loop: one forward and backward per position, loss -A * log p. On-policy, the clipped ratio's
    gradient is that of log p. Normalisation: 'grpo' averages over a sequence's tokens then over sequences; 'dapo'
    averages over all tokens of the batch."""
    model.zero_grad()
    total_tokens = sum(map(len, completions))
    for prompt, completion, advantage in zip(prompts, completions, advantages.tolist()):
        scale = len(completion) * len(prompts) if loss_type == "grpo" else total_tokens
        for logp in oracle_logps(model, prompt, completion, tokens, TEMPERATURE):
            (-advantage * logp / scale).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked_backward", "checkpointed"])
@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_gradient_equals_plain_loop_for_every_chunk_size(stop_heavy_model, tmp_path, loss_type, chunked):
    model, tokenizer, tokens = stop_heavy_model
    trainer = make_trainer(model, tokenizer, tmp_path, loss_type=loss_type)
    prompts = prompt_ids(tokenizer)[:4]
    completions, _ = rollout(trainer, prompts)
    assert len({len(c) for c in completions}) >= 2
    advantages = torch.tensor([1.0, -0.5, 0.25, -0.75])
    expected = plain_justgrpo_gradients(model, prompts, completions, advantages, tokens, loss_type)
    path = "chunked_backward" if chunked else "checkpointed"
    for chunk_size in (1, 3, 64):
        trainer.args.logprob_chunk_size = chunk_size
        got = trainer_gradients(trainer, prompts, completions, advantages, tokens, chunked=chunked)
        num = sum((got[n] - expected[n]).pow(2).sum() for n in expected).sqrt()
        den = sum(expected[n].pow(2).sum() for n in expected).sqrt()
        print(
            f"\n[test 3] {loss_type}, {path}, chunk {chunk_size}: relative gradient error = {(num / den).item():.3e}"
        )
        assert den > 0 and (num / den).item() <= 1e-4
        for name in expected:  # every parameter tensor, not only the total
            assert (got[name] - expected[name]).norm() <= 1e-4 * expected[name].norm() + 1e-9, name


def test_gradient_checkpointing_does_not_change_gradients(stop_heavy_model, tmp_path):
    model, tokenizer, tokens = stop_heavy_model
    trainer = make_trainer(model, tokenizer, tmp_path, gradient_checkpointing=True)
    prompts = prompt_ids(tokenizer)[:3]
    completions, _ = rollout(trainer, prompts)
    advantages = torch.tensor([1.0, -1.0, 0.5])
    with_gc = trainer_gradients(trainer, prompts, completions, advantages, tokens)
    trainer.model.gradient_checkpointing_disable()
    without_gc = trainer_gradients(trainer, prompts, completions, advantages, tokens)
    for name in with_gc:
        torch.testing.assert_close(with_gc[name], without_gc[name], rtol=1e-5, atol=1e-8)


def test_batch_of_distinct_prompts_equals_each_prompt_alone(stop_heavy_model):
    model, tokenizer, tokens = stop_heavy_model
    prompts = prompt_ids(tokenizer)
    assert len({len(p) for p in prompts}) == len(prompts)
    kwargs = dict(
        gen_length=GEN_LENGTH, mask_id=tokens.mask_id, stop_ids=tokens.stop_ids, pad_id=tokens.pad_id, temperature=0.0
    )
    batched = ar_decode(model, prompts, **kwargs)
    assert len({len(c) for c in batched.completion_ids}) >= 2, "greedy completions should stop at different steps"
    for index, prompt in enumerate(prompts):
        alone = ar_decode(model, [prompt], **kwargs)
        assert alone.completion_ids[0] == batched.completion_ids[index]
        torch.testing.assert_close(
            torch.tensor(alone.logprobs[0]), torch.tensor(batched.logprobs[index]), rtol=0, atol=1e-5
        )
    assert batched.nfe == max(len(c) for c in batched.completion_ids)


def test_reused_sampling_logprobs_agree_with_recomputed_old_logprobs(stop_heavy_model, tmp_path):
    model, tokenizer, _ = stop_heavy_model
    inputs = [{"prompt": text} for text in PROMPTS[:2] for _ in range(4)]
    old = {}
    for reuse in (True, False):
        trainer = make_trainer(model, tokenizer, tmp_path, num_iterations=2, reuse_sampling_logprobs=reuse)
        trainer.model.train()
        torch.manual_seed(0)
        output = trainer._generate_and_score_completions(inputs)
        old[reuse] = (output["old_per_token_logps"], output["completion_mask"].bool(), output["completion_ids"])
    assert torch.equal(old[True][2], old[False][2])
    mask = old[True][1]
    delta = (old[True][0] - old[False][0])[mask].abs().max().item()
    print(f"\n[reuse] max |sampling - recomputed| old log-prob = {delta:.3e}")
    assert delta <= 1e-5


def test_scoring_batch_with_nothing_to_score_stays_connected(stop_heavy_model, tmp_path):
    model, tokenizer, tokens = stop_heavy_model
    trainer = make_trainer(model, tokenizer, tmp_path)
    input_ids = torch.tensor([[5, 6, 7, 8, 9]])
    attention_mask = torch.tensor([[1, 1, 1, 0, 0]])  # completion fully masked out (e.g. a truncated completion)
    logps, entropies, _ = trainer._get_per_token_logps_and_entropies(
        trainer.model, input_ids, attention_mask, 2, compute_entropy=True
    )
    assert torch.all(logps == 0) and logps.requires_grad
    (logps.sum() + entropies.sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainer.model.parameters())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"use_vllm": True}, "use_vllm"),
        ({"use_liger_kernel": True}, "use_liger_kernel"),
        ({"cast_lm_head_to_fp32": True}, "cast_lm_head_to_fp32"),
        ({"max_completion_length": 600}, "max_completion_length"),
    ],
)
def test_unsupported_options_are_rejected_with_the_fix(stop_heavy_model, tmp_path, overrides, message):
    model, tokenizer, _ = stop_heavy_model
    with pytest.raises((ValueError, TypeError), match=message):
        make_trainer(model, tokenizer, tmp_path, **overrides)


def test_prompt_with_mask_token_is_rejected(stop_heavy_model, tmp_path):
    model, tokenizer, tokens = stop_heavy_model
    trainer = make_trainer(model, tokenizer, tmp_path)
    with pytest.raises(ValueError, match="mask token"):
        trainer._generate_single_turn([[5, 6, tokens.mask_id]], None, {}, 1)


def test_prompt_beyond_model_length_is_rejected(stop_heavy_model, tmp_path):
    model, tokenizer, _ = stop_heavy_model
    trainer = make_trainer(model, tokenizer, tmp_path)
    with pytest.raises(ValueError, match="maximum length"):
        trainer._generate_single_turn([[7] * (model.config.max_sequence_length - GEN_LENGTH + 1)], None, {}, 1)


def test_non_diffusion_model_is_rejected(tmp_path, tiny_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(
        LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=400)
    )
    with pytest.raises(ValueError, match="register_diffusion_lm"):
        make_trainer(llama, tiny_tokenizer, tmp_path)


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked_backward", "checkpointed"])
def test_justgrpo_fast_equals_the_plain_loop_on_the_top_entropy_tokens_only(
    stop_heavy_model, tmp_path, monkeypatch, chunked
):
    model, tokenizer, tokens = stop_heavy_model
    quantile = 0.25
    trainer = make_trainer(
        model, tokenizer, tmp_path, loss_type="grpo", justgrpo_fast=True, top_entropy_quantile=quantile
    )
    prompts = prompt_ids(tokenizer)[:4]
    completions, _ = rollout(trainer, prompts)
    recorded = [trainer.estimator.records[row]["entropies"] for row in range(len(prompts))]
    threshold = torch.quantile(torch.tensor([e for row in recorded for e in row]), 1 - quantile)
    selected = [[e >= threshold for e in row] for row in recorded]
    advantages = torch.tensor([1.0, -0.5, 0.25, -0.75])

    model.zero_grad()
    for prompt, completion, keep, advantage in zip(prompts, completions, selected, advantages.tolist()):
        for logp, kept in zip(oracle_logps(model, prompt, completion, tokens, TEMPERATURE), keep):
            if kept:
                (-advantage * logp / len(completion) / len(prompts)).backward()
    expected = {n: p.grad.detach().clone() for n, p in model.named_parameters()}

    import justgrpo_trl.estimators.scoring as scoring_module

    scored = []

    class CountingCanvases(scoring_module.ARScoringCanvases):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            scored.append(self.num_canvases)

    monkeypatch.setattr(scoring_module, "ARScoringCanvases", CountingCanvases)
    got = trainer_gradients(trainer, prompts, completions, advantages, tokens, chunked=chunked)
    assert scored == [sum(map(sum, selected))] and scored[0] < sum(map(len, completions)) / 2
    num = sum((got[n] - expected[n]).pow(2).sum() for n in expected).sqrt()
    den = sum(expected[n].pow(2).sum() for n in expected).sqrt()
    print(
        f"\n[fast] scored {scored[0]} of {sum(map(len, completions))} tokens, relative gradient error {num / den:.3e}"
    )
    assert den > 0 and num / den <= 1e-4


def test_justgrpo_fast_rejects_a_kl_term(stop_heavy_model, tmp_path):
    model, tokenizer, _ = stop_heavy_model
    with pytest.raises(ValueError, match="beta=0"):
        make_trainer(model, tokenizer, tmp_path, justgrpo_fast=True, top_entropy_quantile=0.25, beta=0.04)
