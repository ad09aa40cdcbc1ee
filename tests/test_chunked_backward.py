"""`chunked_backward`: the per-token loss against TRL's own `_compute_loss`, and the chunk-by-chunk backward against
the checkpointed path, in fp32."""

from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from test_trainer_exact import make_trainer, prompt_ids, rollout, trainer_gradients, trl_batch
from trl import GRPOTrainer

import justgrpo_trl.chunked_backward as chunked_backward_module
import justgrpo_trl.trainer as trainer_module
from justgrpo_trl.chunked_backward import SEPARABLE_LOSS_TYPES, ChunkBackward, loss_weights

B, T = 4, 6
LENGTHS = [6, 3, 1, 5]


def random_batch(seed: int) -> dict[str, torch.Tensor]:
    """Values a micro-batch's loss sees, with old log-probs off-policy enough that clipping is active."""
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(T)[None, :] < torch.tensor(LENGTHS)[:, None]).long()
    logps = -torch.rand(B, T, generator=g) * 3
    return {
        "logps": logps,
        "entropies": torch.rand(B, T, generator=g) * 2,
        "completion_mask": mask,
        "advantages": torch.tensor([1.3, -0.7, 0.0, -1.1]),
        "old_per_token_logps": logps + (torch.rand(B, T, generator=g) - 0.5),
        "ref_per_token_logps": logps + (torch.rand(B, T, generator=g) - 0.5),
        "num_items_in_batch": torch.tensor(2 * sum(LENGTHS)),  # the generation batch holds two micro-batches
    }


CASES = [
    *[dict(loss_type=t) for t in SEPARABLE_LOSS_TYPES],
    *[dict(loss_type=t, beta=0.04) for t in ("grpo", "dapo")],
    dict(loss_type="bnpo", beta=0.04, use_bias_correction_kl=True),
    dict(loss_type="grpo", delta=1.2, epsilon_high=0.28),
    dict(loss_type="dr_grpo", top_entropy_quantile=0.5),
]


@pytest.mark.parametrize("on_policy", [True, False], ids=["on_policy", "off_policy"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_token_loss_equals_trl_compute_loss(stop_heavy_model, tmp_path, case, on_policy):
    """The trainer's per-token loss (`_token_loss`, as the chunked path builds it), term by term and chunk by chunk:
    value and gradient with respect to every log-prob, against `GRPOTrainer._compute_loss` itself."""
    model, tokenizer, _ = stop_heavy_model
    trainer = make_trainer(model, tokenizer, tmp_path, gradient_accumulation_steps=2, **case)
    trainer.model.train()
    batch = random_batch(seed=len(str(case)))
    mask = batch["completion_mask"]
    inputs = {
        "prompt_ids": torch.ones(B, 2, dtype=torch.long),
        "prompt_mask": torch.ones(B, 2, dtype=torch.long),
        "completion_ids": torch.ones(B, T, dtype=torch.long),
        "completion_mask": mask,
        "advantages": batch["advantages"],
        "num_items_in_batch": batch["num_items_in_batch"],
        "old_per_token_logps": None if on_policy else batch["old_per_token_logps"],
        "ref_per_token_logps": batch["ref_per_token_logps"] if trainer.beta else None,
    }
    leaf = batch["logps"].clone().requires_grad_()
    trainer._scored = (leaf, batch["entropies"])
    expected = GRPOTrainer._compute_loss(trainer, trainer.model, inputs)
    (expected_grad,) = torch.autograd.grad(expected, leaf)

    policy_mask = None
    if trainer.top_entropy_quantile < 1.0:
        policy_mask = trainer.get_high_entropy_mask(batch["entropies"], mask, 1 - trainer.top_entropy_quantile)
        assert 0 < policy_mask.sum() < mask.sum()
    token_loss = trainer._token_loss(inputs, policy_mask=policy_mask)
    rows, cols = mask.nonzero(as_tuple=True)
    ours, got_grad = 0.0, torch.zeros(B, T)
    for start in range(0, rows.numel(), 4):  # chunk by chunk, as the trainer does
        r, c = rows[start : start + 4], cols[start : start + 4]
        chunk = leaf.detach()[r, c].requires_grad_()
        loss = token_loss(chunk, r, c)
        (grad,) = torch.autograd.grad(loss, chunk)
        got_grad[r, c] = grad
        ours += loss.item()
    if not on_policy:  # the data must exercise clipping: ratios outside the range, on tokens with an advantage
        ratio = torch.exp(batch["logps"] - batch["old_per_token_logps"])
        outside = (ratio < 1 - trainer.epsilon_low) | (ratio > 1 + trainer.epsilon_high)
        assert (outside & mask.bool() & (batch["advantages"][:, None] != 0)).any()
    assert abs(ours - expected.item()) <= 1e-6 * max(1.0, abs(expected.item()))
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-6, atol=1e-8)
    assert expected_grad.abs().sum() > 0


def test_chunked_equals_checkpointed_off_policy_with_kl(stop_heavy_model, tmp_path):
    """Through `compute_loss`: old log-probs off the current ones (clipping active), a KL term, bnpo. Same gradient,
    same loss, and TRL's metrics logged once."""
    model, tokenizer, tokens = stop_heavy_model
    trainer = make_trainer(model, tokenizer, tmp_path, loss_type="bnpo", beta=0.04, logprob_chunk_size=3)
    prompts = prompt_ids(tokenizer)[:4]
    completions, _ = rollout(trainer, prompts)
    prompt_ids_, prompt_mask, completion_ids, completion_mask = trl_batch(prompts, completions, tokens.pad_id)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        current, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model,
            torch.cat([prompt_ids_, completion_ids], 1),
            torch.cat([prompt_mask, completion_mask], 1),
            completion_ids.size(1),
        )
    inputs = {
        "prompt_ids": prompt_ids_,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.tensor([1.0, -0.5, 0.25, -0.75]),
        "num_items_in_batch": completion_mask.sum(),
        "old_per_token_logps": current + (torch.rand(current.shape, generator=g) - 0.5) * 0.6,
        "ref_per_token_logps": current + (torch.rand(current.shape, generator=g) - 0.5),
    }
    grads, losses = {}, {}
    trainer.model.train()
    assert trainer._chunked_backward_blocker is None
    for chunked in (True, False):
        trainer.model.zero_grad()
        trainer._metrics["train"].clear()
        loss = trainer.compute_loss(trainer.model, inputs) if chunked else trainer._compute_loss(trainer.model, inputs)
        loss.backward()
        losses[chunked] = loss.item()
        grads[chunked] = {n: p.grad.clone() for n, p in trainer.model.named_parameters()}
        assert len(trainer._metrics["train"]["clip_ratio/region_mean"]) == 1
        assert len(trainer._metrics["train"]["kl"]) == 1
    assert trainer._metrics["train"]["clip_ratio/region_mean"][0] > 0, "the case should clip some tokens"
    assert abs(losses[True] - losses[False]) <= 1e-6 * abs(losses[False])
    for name, expected in grads[False].items():
        assert expected.norm() > 0, name
        assert (grads[True][name] - expected).norm() <= 1e-5 * expected.norm(), name


def test_chunked_backward_runs_each_chunk_once(stop_heavy_model, tmp_path):
    """No recompute: one forward per chunk, where the checkpointed path runs two."""
    model, tokenizer, tokens = stop_heavy_model
    trainer = make_trainer(model, tokenizer, tmp_path, logprob_chunk_size=4)
    prompts = prompt_ids(tokenizer)[:4]
    completions, _ = rollout(trainer, prompts)
    chunks = -(-sum(map(len, completions)) // 4)
    calls = []
    hook = trainer.model.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        for chunked, expected in ((True, chunks), (False, 2 * chunks)):
            calls.clear()
            trainer_gradients(trainer, prompts, completions, torch.tensor([1.0, -1.0, 0.5, 0.0]), tokens, chunked)
            assert len(calls) == expected, (chunked, len(calls), expected)
    finally:
        hook.remove()


def test_nothing_to_score_still_reaches_every_parameter(stop_heavy_model, tmp_path):
    model, tokenizer, tokens = stop_heavy_model
    trainer = make_trainer(model, tokenizer, tmp_path)
    inputs = {
        "prompt_ids": torch.tensor([[5, 6, 7]]),
        "prompt_mask": torch.ones(1, 3, dtype=torch.long),
        "completion_ids": torch.tensor([[8, 9]]),
        "completion_mask": torch.zeros(1, 2, dtype=torch.long),  # e.g. a truncated completion, masked out
        "advantages": torch.tensor([1.0]),
        "num_items_in_batch": torch.tensor(0),
    }
    trainer.model.zero_grad()
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is not None and torch.all(p.grad == 0) for p in trainer.model.parameters())


def test_a_disagreement_with_trl_stops_the_step(stop_heavy_model, tmp_path, monkeypatch):
    """If TRL's loss and the per-token restatement ever differ, the step fails before any optimizer step."""
    model, tokenizer, tokens = stop_heavy_model
    trainer = make_trainer(model, tokenizer, tmp_path)
    prompts = prompt_ids(tokenizer)[:2]
    completions, _ = rollout(trainer, prompts)
    monkeypatch.setattr(chunked_backward_module, "loss_weights", lambda *a, **k: 2 * loss_weights(*a, **k))
    with pytest.raises(RuntimeError, match="chunked_backward=False"):
        trainer_gradients(trainer, prompts, completions, torch.tensor([1.0, -1.0]), tokens, chunked=True)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"chunked_backward": False}, "chunked_backward=False"),
        ({"importance_sampling_level": "sequence"}, "importance_sampling_level"),
        ({"loss_type": "vespo"}, "vespo"),
        ({"top_entropy_quantile": 0.5}, "entropy mask"),
        ({"entropy_coef": 0.01}, "entropy bonus"),
        ({"off_policy_mask_threshold": 0.5}, "off_policy_mask_threshold"),
        ({"estimator": "diffu_grpo"}, "diffu_grpo"),
    ],
)
def test_settings_that_couple_tokens_keep_the_checkpointed_path(stop_heavy_model, tmp_path, overrides, reason):
    model, tokenizer, _ = stop_heavy_model
    trainer = make_trainer(model, tokenizer, tmp_path, **overrides)
    assert reason in trainer._chunked_backward_blocker


def test_justgrpo_fast_and_the_defaults_take_the_chunked_path(stop_heavy_model, tmp_path):
    model, tokenizer, _ = stop_heavy_model
    assert make_trainer(model, tokenizer, tmp_path)._chunked_backward_blocker is None
    fast = make_trainer(model, tokenizer, tmp_path, justgrpo_fast=True, top_entropy_quantile=0.25)
    assert fast._chunked_backward_blocker is None


def test_every_chunk_but_the_last_backpropagates_inside_no_sync(stop_heavy_model, tmp_path, monkeypatch):
    """Under DDP each backward outside `no_sync` all-reduces the gradients: only the last chunk's may do so. The
    gradient would be the same without `no_sync`, so this is checked on the calls themselves."""
    from contextlib import contextmanager

    model, tokenizer, tokens = stop_heavy_model
    trainer = make_trainer(model, tokenizer, tmp_path, logprob_chunk_size=3)
    prompts = prompt_ids(tokenizer)[:4]
    completions, _ = rollout(trainer, prompts)
    prompt_ids_, prompt_mask, completion_ids, completion_mask = trl_batch(prompts, completions, tokens.pad_id)
    inputs = {
        "prompt_ids": prompt_ids_,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.tensor([1.0, -0.5, 0.25, -0.75]),
        "num_items_in_batch": completion_mask.sum(),
        "old_per_token_logps": None,
        "ref_per_token_logps": None,
    }
    inside = [False]
    backward_calls = []

    @contextmanager
    def recording_no_sync(wrapped):
        assert wrapped is trainer.model
        inside[0] = True
        try:
            yield
        finally:
            inside[0] = False

    def recording_backward(loss, **kwargs):
        backward_calls.append(inside[0])
        loss.backward()

    monkeypatch.setattr(trainer.accelerator, "no_sync", recording_no_sync)
    monkeypatch.setattr(trainer.accelerator, "backward", recording_backward)
    trainer.model.train()
    assert trainer._chunked_backward_blocker is None
    loss = trainer.compute_loss(trainer.model, inputs)
    num_chunks = -(-int(completion_mask.sum()) // 3)
    assert num_chunks >= 3
    assert backward_calls == [True] * (num_chunks - 1)
    assert loss.requires_grad  # the last chunk is left to the Trainer's own backward, outside no_sync


def test_deepspeed_chunks_go_through_the_engine_with_the_boundary_off():
    """Under DeepSpeed a chunk that is not the last is backpropagated by the engine itself, with the accumulation
    boundary off (no reduction-for-step, no `engine.step()`) and no division by the accumulation steps (TRL's loss
    weights already divide); the Trainer's own backward, which steps, is left for the last chunk."""
    calls = []

    class Engine:
        def set_gradient_accumulation_boundary(self, is_boundary):
            calls.append(("boundary", is_boundary))

        def backward(self, loss, **kwargs):
            calls.append(("backward", kwargs))
            loss.backward()

        def step(self):
            calls.append(("step",))

    accelerator = SimpleNamespace(
        distributed_type=DistributedType.DEEPSPEED,
        deepspeed_engine_wrapped=SimpleNamespace(engine=Engine()),
        num_processes=1,
        no_sync=lambda model: nullcontext(),
        backward=lambda loss, **kwargs: calls.append(("accelerator.backward", kwargs)),
    )
    chunk = ChunkBackward.for_accelerator(accelerator, torch.nn.Linear(1, 1))
    x = torch.ones(3, requires_grad=True)
    chunk.backward((2 * x).sum())
    assert calls == [("boundary", False), ("backward", {"scale_wrt_gas": False})]
    assert torch.equal(x.grad, torch.full((3,), 2.0))
    assert chunk.num_chunks(5) == 5  # one process: nothing to pad


def test_dummy_chunks_pad_without_changing_the_gradient(stop_heavy_model, tmp_path, monkeypatch):
    """Ranks that score fewer chunks pad to the others' count (ZeRO-2/3): the dummy chunks run forwards and backwards
    of weight 0, and the gradient stays the same."""
    model, tokenizer, tokens = stop_heavy_model
    trainer = make_trainer(model, tokenizer, tmp_path, logprob_chunk_size=4)
    prompts = prompt_ids(tokenizer)[:4]
    completions, _ = rollout(trainer, prompts)
    chunks = -(-sum(map(len, completions)) // 4)
    advantages = torch.tensor([1.0, -1.0, 0.5, 0.0])
    expected = trainer_gradients(trainer, prompts, completions, advantages, tokens, chunked=True)
    for_accelerator = ChunkBackward.for_accelerator

    def padded(accelerator, wrapped):
        plain = for_accelerator(accelerator, wrapped)
        return ChunkBackward(plain.backward, plain.no_sync, lambda count: count + 3)

    monkeypatch.setattr(trainer_module.ChunkBackward, "for_accelerator", staticmethod(padded))
    forwards = []
    hook = trainer.model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    try:
        grads = trainer_gradients(trainer, prompts, completions, advantages, tokens, chunked=True)
    finally:
        hook.remove()
    assert len(forwards) == chunks + 3
    for name, grad in expected.items():
        assert torch.allclose(grads[name], grad, rtol=1e-6, atol=1e-9), name
