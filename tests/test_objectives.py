"""The paper's objective (`objective='paper'`, and the efficient `'paper_early_stop'`) against a plain transcription
of the JustGRPO reference's `logprob_loss` loop, in fp32, on one process and on 2-process DDP."""

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_trainer_exact import GEN_LENGTH, TEMPERATURE, make_trainer

from justgrpo_trl.decoding import cut_at_stop
from justgrpo_trl.estimators.ar_exact import N_VALID_KEY, paper_token_weights

EPS = 0.2
PROMPTS = ["hi", "the quick brown fox", "12 + 30 =", "def add(a, b):"]


def reference_gradients(model, rows, n_valid: float, mask_id: int, gen_length: int = GEN_LENGTH) -> dict:
    """The reference `logprob_loss`, written as a plain loop: for every slot t of every sample, the canvas
    `[prompt | c_<t | MASK x (L - t)]`, the log-prob of c_t at position `P + t` (logits / temperature; the mask token
    excluded from the softmax, as this project does), the clipped on-policy ratio, and the term
    `-min(r A, clip(r) A)` weighted `1 / L / (n_valid + 1e-5)`. `rows` holds `(prompt ids, all L completion ids,
    advantage)`; returns the gradient."""
    model.zero_grad()
    scale = 1.0 / gen_length / (n_valid + 1e-5)
    for prompt, completion, advantage in rows:
        assert len(completion) == gen_length
        for t in range(gen_length):
            canvas = prompt + completion[:t] + [mask_id] * (gen_length - t)
            logits = model(input_ids=torch.tensor([canvas])).logits[0, len(prompt) + t].float() / TEMPERATURE
            logits[mask_id] = float("-inf")
            logp = torch.log_softmax(logits, dim=-1)[completion[t]]
            ratio = torch.exp(logp - logp.detach())
            clipped = torch.clamp(ratio, 1 - EPS, 1 + EPS)
            loss = -torch.min(ratio * advantage, clipped * advantage)
            (loss * scale).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def relative_error(got: dict, expected: dict) -> float:
    num = sum((got[n] - expected[n]).pow(2).sum() for n in expected).sqrt()
    den = sum(expected[n].pow(2).sum() for n in expected).sqrt()
    assert den > 0
    return (num / den).item()


def unpadded_rows(output: dict) -> list[tuple[list[int], list[int], float]]:
    rows = []
    for ids, mask, completion, advantage in zip(
        output["prompt_ids"].tolist(),
        output["prompt_mask"].tolist(),
        output["completion_ids"].tolist(),
        output["advantages"].tolist(),
    ):
        rows.append(([t for t, m in zip(ids, mask) if m], completion, advantage))
    return rows


def make_reward(seen: list):
    """The "hi" group is always rewarded 1 (zero advantages: it counts nowhere in n_valid); the others by the
    length of their answer, which the reward sees up to the first stop token only."""

    def reward(prompts, completions, completion_ids, **kwargs):
        seen.extend(completion_ids)
        return [1.0 if p == "hi" else float(len(ids)) for p, ids in zip(prompts, completion_ids)]

    return reward


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked_backward", "checkpointed"])
@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo"])
def test_paper_objective_gradient_equals_the_reference_loop(stop_heavy_model, tmp_path, loss_type, chunked):
    model, tokenizer, tokens = stop_heavy_model
    trainer = make_trainer(
        model, tokenizer, tmp_path, objective="paper", loss_type=loss_type, per_device_train_batch_size=12
    )
    seen: list = []
    trainer.reward_funcs = [make_reward(seen)]
    trainer.model.train()
    torch.manual_seed(0)
    output = trainer._generate_and_score_completions([{"prompt": p} for p in PROMPTS[:3] for _ in range(4)])

    completions = output["completion_ids"].tolist()
    assert output["completion_mask"].bool().all() and output["completion_ids"].size(1) == GEN_LENGTH
    cut = [cut_at_stop(ids, tokens.stop_ids) for ids in completions]
    assert len({len(c) for c in cut}) >= 3 and min(map(len, cut)) < GEN_LENGTH, "rows should stop at varied lengths"
    assert seen == cut, "the rewards see each completion up to its first stop token only"
    advantages = output["advantages"]
    n_valid = int((advantages != 0).sum())
    assert 0 < n_valid < advantages.numel() and torch.all(output[N_VALID_KEY] == n_valid)

    trainer.model.zero_grad()
    if chunked:
        assert trainer._chunked_backward_blocker is None
        loss = trainer.compute_loss(trainer.model, output)
    else:
        loss = trainer._compute_loss(trainer.model, output)
    loss.backward()
    got = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()}
    expected = reference_gradients(model, unpadded_rows(output), n_valid, tokens.mask_id)
    error = relative_error(got, expected)
    print(f"\n[paper, 1 process] {loss_type}, {'chunked' if chunked else 'checkpointed'}: relative error {error:.3e}")
    assert error <= 1e-5
    assert math.isclose(loss.item(), -(advantages.sum() / n_valid).item(), rel_tol=1e-4, abs_tol=1e-6)


def test_efficient_mode_weights_the_tokens_up_to_the_stop_like_the_paper(stop_heavy_model, tmp_path):
    """`paper_early_stop`: the rollout stops at the first stop token, and each token up to it weighs 1 / L / n_valid
    (the reference loop restricted to those tokens)."""
    model, tokenizer, tokens = stop_heavy_model
    trainer = make_trainer(
        model, tokenizer, tmp_path, objective="paper_early_stop", loss_type="grpo", per_device_train_batch_size=12
    )
    trainer.reward_funcs = [make_reward([])]
    trainer.model.train()
    torch.manual_seed(0)
    output = trainer._generate_and_score_completions([{"prompt": p} for p in PROMPTS[:3] for _ in range(4)])
    lengths = output["completion_mask"].sum(1).tolist()
    assert len(set(lengths)) >= 3
    n_valid = int((output["advantages"] != 0).sum())
    trainer.model.zero_grad()
    trainer.compute_loss(trainer.model, output).backward()
    got = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()}

    model.zero_grad()
    for (prompt, completion, advantage), length in zip(unpadded_rows(output), lengths):
        for t in range(length):
            canvas = prompt + completion[:t] + [tokens.mask_id] * (GEN_LENGTH - t)
            logits = model(input_ids=torch.tensor([canvas])).logits[0, len(prompt) + t].float() / TEMPERATURE
            logits[tokens.mask_id] = float("-inf")
            (-advantage * torch.log_softmax(logits, -1)[completion[t]] / GEN_LENGTH / n_valid).backward()
    expected = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    assert relative_error(got, expected) <= 1e-5


def test_paper_weights_are_zero_without_valid_samples():
    mask = torch.ones(2, 3)
    assert torch.equal(paper_token_weights(mask, torch.zeros(2), 3), torch.zeros(2, 3))
    torch.testing.assert_close(paper_token_weights(mask, torch.full((2,), 4.0), 3), torch.full((2, 3), 1 / 12))


def test_paper_objective_refuses_a_kl_term(stop_heavy_model, tmp_path):
    model, tokenizer, _ = stop_heavy_model
    with pytest.raises(ValueError, match="beta=0"):
        make_trainer(model, tokenizer, tmp_path, objective="paper", beta=0.04)
    with pytest.raises(ValueError, match="objective"):
        make_trainer(model, tokenizer, tmp_path, objective="reference")


# ----------------------------------------------------------------------------------------------------------------
# 2-process DDP
# ----------------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_paper_objective_gradient_equals_the_reference_under_ddp(stop_heavy_model, tmp_path):
    """2 CPU processes (gloo). Each rank trains one group; n_valid is the mean of the two ranks' counts, and DDP
    averages the ranks' gradients, as the reference's `accelerator.gather(valid_samples).mean()` and DDP do."""
    model, tokenizer, tokens = stop_heavy_model
    checkpoint = tmp_path / "stop-heavy"
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    script = Path(__file__).with_name("paper_ddp_script.py")
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"),
        *("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
        *("--main_process_port", str(_free_port()), str(script), str(checkpoint), str(tmp_path)),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2 and ranks[0]["ddp"]
    for name in ranks[0]["grads"]:
        assert torch.equal(ranks[0]["grads"][name], ranks[1]["grads"][name]), name
    counts = [int((r["output"]["advantages"] != 0).sum()) for r in ranks]
    assert counts[0] != counts[1], "the ranks should count different n_valid, or the gather proves nothing"
    n_valid = sum(counts) / 2
    assert all(torch.all(r["output"][N_VALID_KEY] == n_valid) for r in ranks)
    per_rank = [reference_gradients(model, unpadded_rows(r["output"]), n_valid, tokens.mask_id) for r in ranks]
    expected = {n: (per_rank[0][n] + per_rank[1][n]) / 2 for n in per_rank[0]}
    error = relative_error(ranks[0]["grads"], expected)
    print(f"\n[paper, 2-process DDP] relative error {error:.3e} (n_valid per rank {counts})")
    assert error <= 1e-5
