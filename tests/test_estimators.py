"""diffu-GRPO and AGRPO as estimators of the same trainer, against plain reimplementations (CPU, fp32)."""

import pytest
import torch
from test_trainer_exact import PROMPTS, TEMPERATURE, make_trainer, prompt_ids, trainer_gradients, trl_batch
from test_trainer_runs import assert_all_trainable_changed, assert_metrics, run_training

GEN_LENGTH, BLOCK, STEPS = 8, 4, 4  # 2 blocks of 2 steps: two tokens unmasked per step


def estimator_trainer(stop_heavy_model, tmp_path, estimator, **overrides):
    model, tokenizer, tokens = stop_heavy_model
    overrides = dict(
        estimator=estimator,
        max_completion_length=GEN_LENGTH,
        block_length=BLOCK,
        diffusion_steps=STEPS,
        loss_type="grpo",
        **overrides,
    )
    return make_trainer(model, tokenizer, tmp_path, **overrides), model, tokenizer, tokens


def masked_logps(model, canvas: list[int], read: int, target: int, tokens) -> torch.Tensor:
    logits = model(input_ids=torch.tensor([canvas])).logits[0, read].float() / TEMPERATURE
    logits[tokens.mask_id] = float("-inf")
    return torch.log_softmax(logits, -1)[target]


# --------------------------------------------------------------------------- diffu-GRPO


def plain_diffu_grpo(model, padded_prompts, prompt_mask, completions, patterns, tokens) -> list[list[float]]:
    """d1's estimator written plainly: each row's prompt masked where its own pattern (`[B, P]`, drawn over the
    padded positions) says, the completion all masked, one full forward per row, each completion token read at its
    position."""
    out = []
    for prompt, mask, pattern, completion in zip(padded_prompts.tolist(), prompt_mask.tolist(), patterns, completions):
        # the pattern is drawn over the padded positions; the row itself is scored unpadded
        real = [tokens.mask_id if pattern[i] else t for i, t in enumerate(prompt) if mask[i]]
        canvas = real + [tokens.mask_id] * GEN_LENGTH
        out.append([masked_logps(model, canvas, len(real) + j, t, tokens).item() for j, t in enumerate(completion)])
    return out


def test_diffu_grpo_logprobs_equal_a_plain_reimplementation_per_row_pattern(stop_heavy_model, tmp_path):
    trainer, model, tokenizer, tokens = estimator_trainer(stop_heavy_model, tmp_path, "diffu_grpo", p_mask_prompt=0.5)
    prompts = prompt_ids(tokenizer)
    torch.manual_seed(0)
    completions, _ = trainer._generate_single_turn(prompts, None, {}, 1)
    assert all(len(c) <= GEN_LENGTH for c in completions)
    drawn = trainer.estimator.patterns
    assert drawn.shape == (len(prompts), 1, max(map(len, prompts)))
    batch = trl_batch(prompts, completions, tokens.pad_id)
    input_ids, attention_mask = torch.cat(batch[0::2], 1), torch.cat(batch[1::2], 1)
    results = []
    with torch.no_grad():
        for seed in (11, 12):
            trainer.estimator.patterns = torch.rand(drawn.shape, generator=torch.Generator().manual_seed(seed)) < 0.5
            logps, _, _ = trainer._get_per_token_logps_and_entropies(
                trainer.model, input_ids, attention_mask, batch[2].size(1)
            )
            patterns = trainer.estimator.patterns[:, 0].tolist()
            expected = plain_diffu_grpo(model, batch[0], batch[1], completions, patterns, tokens)
            for row, values in enumerate(expected):
                torch.testing.assert_close(logps[row, : len(values)], torch.tensor(values), rtol=0, atol=1e-5)
                assert torch.all(logps[row, len(values) :] == 0)
            results.append(logps)
    assert not torch.allclose(results[0], results[1]), "the prompt mask must change the estimate"


def d1_per_token_logps(model, input_ids, logits_to_keep: int, seed: int, p_mask: float, mask_id: int):
    """A transcription of d1's `forward_process` + `_get_per_token_logps` for one inner iteration: the global RNG
    seeded, one uniform per (row, position) over the whole `[prompt | completion]` batch, prompt positions masked
    below `p_mask`, every completion position masked; one batched forward without an attention mask (d1's rows share
    one unpadded prompt), the completion logits read at their own positions, log-prob = -cross-entropy. The mask
    token is excluded from the softmax (this project's convention everywhere) and the temperature is 1, as in d1's
    scorer. Returns the log-probs `[B, logits_to_keep]` and the prompt masks it drew."""
    torch.manual_seed(seed)
    b, length = input_ids.shape
    prompt_index = torch.arange(length) < length - logits_to_keep
    random_matrix = torch.rand((b, length))
    is_mask = (prompt_index[None] & (random_matrix < p_mask)) | ~prompt_index[None]
    noisy = torch.where(is_mask, mask_id, input_ids)
    logits = model(input_ids=noisy).logits.float()
    logits[..., mask_id] = float("-inf")
    completion_logits = logits[:, -logits_to_keep:]
    targets = input_ids[:, -logits_to_keep:]
    loss = torch.nn.functional.cross_entropy(
        completion_logits.reshape(-1, completion_logits.size(-1)), targets.reshape(-1), reduction="none"
    )
    return -loss.view(b, logits_to_keep), is_mask[:, : length - logits_to_keep]


def test_diffu_grpo_equals_a_transcription_of_d1_with_the_same_masks(stop_heavy_model, tmp_path):
    """A group of 4 completions of one prompt (d1's batch), each row with its own prompt mask (d1's
    `torch.rand((b, l))`): the trainer's log-probs under d1's masks equal d1's scorer's."""
    trainer, model, tokenizer, tokens = estimator_trainer(
        stop_heavy_model, tmp_path, "diffu_grpo", p_mask_prompt=0.5, temperature=1.0
    )
    prompt = prompt_ids(tokenizer, ["the quick brown fox jumps over"])[0]
    torch.manual_seed(0)
    completions, _ = trainer._generate_single_turn([prompt] * 4, None, {}, 1)
    input_ids = torch.tensor([prompt + c + [tokens.pad_id] * (GEN_LENGTH - len(c)) for c in completions])
    completion_mask = torch.tensor([[1] * len(c) + [0] * (GEN_LENGTH - len(c)) for c in completions])
    attention_mask = torch.cat([torch.ones(4, len(prompt), dtype=torch.long), completion_mask], 1)
    with torch.no_grad():
        expected, is_mask = d1_per_token_logps(model, input_ids, GEN_LENGTH, 5, 0.5, tokens.mask_id)
        assert len({tuple(row) for row in is_mask.tolist()}) == 4, "d1 draws an independent pattern per row"
        trainer.estimator.patterns = is_mask[:, None]
        logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, input_ids, attention_mask, GEN_LENGTH)
    mask = completion_mask.bool()
    delta = (logps - expected)[mask].abs().max().item()
    print(f"\n[diffu-GRPO vs d1] max |log-prob difference| = {delta:.3e} over {int(mask.sum())} tokens")
    assert delta <= 1e-5


def test_diffu_grpo_old_and_reference_logprobs_follow_each_rows_patterns(stop_heavy_model, tmp_path):
    trainer, model, tokenizer, tokens = estimator_trainer(
        stop_heavy_model, tmp_path, "diffu_grpo", num_iterations=3, beta=0.04, p_mask_prompt=0.5
    )
    trainer.model.train()
    torch.manual_seed(0)
    output = trainer._generate_and_score_completions([{"prompt": text} for text in PROMPTS[1:2] for _ in range(4)])
    patterns = output["diffu_grpo_prompt_masks"]
    assert patterns.shape == (4, 3, output["prompt_ids"].size(1))
    real = output["prompt_mask"].bool()[:, None].expand_as(patterns)
    per_row = {tuple(patterns[row, i][real[row, i]].tolist()) for row in range(4) for i in range(3)}
    assert len(per_row) == 12, "every row and inner iteration has its own pattern"
    old, ref = output["old_per_token_logps_per_iteration"], output["ref_per_token_logps_per_iteration"]
    assert old.shape[:2] == (4, 3) and ref.shape == old.shape
    torch.testing.assert_close(old[:, 0], output["old_per_token_logps"])
    completions = [ids[m.bool()].tolist() for ids, m in zip(output["completion_ids"], output["completion_mask"])]
    for iteration in range(3):
        rows = patterns[:, iteration].tolist()
        expected = plain_diffu_grpo(model, output["prompt_ids"], output["prompt_mask"], completions, rows, tokens)
        for row, values in enumerate(expected):
            torch.testing.assert_close(old[row, iteration, : len(values)], torch.tensor(values), rtol=0, atol=1e-5)
        reference = plain_diffu_grpo(
            trainer.ref_model, output["prompt_ids"], output["prompt_mask"], completions, rows, tokens
        )
        for row, values in enumerate(reference):
            torch.testing.assert_close(ref[row, iteration, : len(values)], torch.tensor(values), rtol=0, atol=1e-5)


def test_diffu_grpo_trains_each_micro_batch_under_its_inner_iterations_patterns(tmp_path, tiny_checkpoint):
    """With steps_per_generation=2 a generation batch is split in two micro-batches, each trained num_iterations
    times: steps 0, 1 are inner iteration 0 and steps 2, 3 inner iteration 1. With the learning rate at 0 the
    weights never move, so the log-probs of each training forward must equal the old log-probs recorded under that
    iteration's prompt masks, and differ from the other iteration's."""
    from test_trainer_runs import run_training

    calls = []

    def capture(trainer):
        compute_loss, score = trainer._compute_loss, trainer._get_per_token_logps_and_entropies

        def compute_loss_spy(model, inputs):
            calls.append({"old": inputs["old_per_token_logps_per_iteration"], "mask": inputs["completion_mask"]})
            return compute_loss(model, inputs)

        def score_spy(*args, **kwargs):
            logps, entropies, aux = score(*args, **kwargs)
            if torch.is_grad_enabled():
                calls[-1]["new"] = logps.detach().clone()
            return logps, entropies, aux

        trainer._compute_loss, trainer._get_per_token_logps_and_entropies = compute_loss_spy, score_spy

    overrides = dict(
        estimator="diffu_grpo",
        num_iterations=2,
        steps_per_generation=2,
        gradient_accumulation_steps=1,
        p_mask_prompt=0.6,
        learning_rate=0.0,
        max_steps=4,
        block_length=4,
        diffusion_steps=4,
        chunked_backward=False,
    )
    run_training(tmp_path, tiny_checkpoint, on_trainer=capture, **overrides)
    assert len(calls) == 4 and all("new" in call for call in calls)
    for step, call in enumerate(calls):
        iteration, mask = step // 2, call["mask"].bool()
        assert (call["new"] - call["old"][:, iteration]).abs()[mask].max() <= 1e-5, step
        assert (call["new"] - call["old"][:, 1 - iteration]).abs()[mask].max() > 1e-3, step


# --------------------------------------------------------------------------- AGRPO


def agrpo_rollout(trainer, tokenizer):
    prompts = prompt_ids(tokenizer)[:4]
    torch.manual_seed(0)
    completions, sampling = trainer._generate_single_turn(prompts, None, {}, 1)
    return prompts, completions, sampling


def test_agrpo_with_every_step_equals_the_exact_trajectory_logprob(stop_heavy_model, tmp_path):
    trainer, model, tokenizer, tokens = estimator_trainer(stop_heavy_model, tmp_path, "agrpo", agrpo_num_steps=100)
    prompts, completions, sampling = agrpo_rollout(trainer, tokenizer)
    batch = trl_batch(prompts, completions, tokens.pad_id)
    input_ids, attention_mask, width = torch.cat(batch[0::2], 1), torch.cat(batch[1::2], 1), batch[2].size(1)
    trainer.model.train()
    logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, input_ids, attention_mask, width)
    with torch.no_grad():
        for row, (prompt, completion) in enumerate(zip(prompts, completions)):
            record = trainer.estimator.records[row]
            canvas_ids, steps = record["canvas_ids"], record["canvas_steps"]
            trajectory = 0.0
            for j, token in enumerate(completion):  # the state just before token j's step, rebuilt plainly
                state = [t if 0 <= s < steps[j] else tokens.mask_id for t, s in zip(canvas_ids, steps)]
                trajectory += masked_logps(model, prompt + state, len(prompt) + j, token, tokens).item()
            assert trajectory == pytest.approx(sum(sampling[row]), abs=1e-4)  # what the sampler recorded
            assert logps[row, : len(completion)].sum().item() == pytest.approx(trajectory, abs=1e-4)
    assert len({tuple(trainer.estimator.records[row]["canvas_steps"]) for row in range(len(prompts))}) > 1


def test_agrpo_identical_completions_keep_their_own_unmasking_orders(stop_heavy_model, tmp_path, monkeypatch):
    """Two rows of a group with the same text but different unmasking orders: each is scored in the states it went
    through (records are kept per row, never looked up by text)."""
    import justgrpo_trl.estimators.base as base
    from justgrpo_trl.decoding import DecodeOutput

    trainer, model, tokenizer, tokens = estimator_trainer(stop_heavy_model, tmp_path, "agrpo", agrpo_num_steps=100)
    prompt = prompt_ids(tokenizer, ["12 + 30 ="])[0]
    eos = tokens.stop_ids[0]
    completion = [prompt[0], prompt[-1], prompt[1], eos]
    canvas = completion + [eos] * (GEN_LENGTH - len(completion))
    orders = [[0, 0, 1, 1, 2, 2, 3, 3], [3, 2, 1, 0, 3, 2, 1, 0]]  # same tokens, unmasked in different orders

    def crafted(model, prompts, **kwargs):
        n = len(prompts)
        return DecodeOutput(
            completion_ids=[completion] * n,
            logprobs=[[-1.0] * len(completion)] * n,
            entropies=[[1.0] * len(completion)] * n,
            canvas_ids=[canvas] * n,
            canvas_steps=orders[:n],
        )

    monkeypatch.setattr(base, "block_decode", crafted)
    completions, _ = trainer._generate_single_turn([prompt, prompt], None, {}, 1)
    batch = trl_batch([prompt, prompt], completions, tokens.pad_id)
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.cat(batch[0::2], 1), torch.cat(batch[1::2], 1), batch[2].size(1)
        )
        for row, steps in enumerate(orders):
            for j, token in enumerate(completion):
                state = [t if 0 <= s < steps[j] else tokens.mask_id for t, s in zip(canvas, steps)]
                expected = masked_logps(model, prompt + state, len(prompt) + j, token, tokens).item()
                assert logps[row, j].item() == pytest.approx(expected, abs=1e-5), (row, j)
    assert not torch.allclose(logps[0], logps[1])


def reference_agrpo_gradients(model, rows, group_size: int, tokens, eps: float = 0.2) -> dict:
    """A transcription of the AGRPO authors' `compute_loss` with every denoising step scored instead of sampled:
    per row, T = the last step that unmasked a token other than EOS; for each step s <= T, the state with every token
    unmasked at a step >= s masked, the log-probs of the tokens unmasked at s, the ratio against the sampling
    log-probs, the clipped term -min(r A, clip(r) A), weighted 1 / (T + 1) (uniform step sampling) and divided by the
    group size. `rows`: (prompt, canvas ids, unmask steps, sampling log-probs, advantage)."""
    model.zero_grad()
    for prompt, canvas, steps, sampling, advantage in rows:
        last = max(s for t, s in zip(canvas, steps) if t != tokens.pad_id)
        for step in range(last + 1):
            state = [tokens.mask_id if s >= step else t for t, s in zip(canvas, steps)]
            for j in [j for j, s in enumerate(steps) if s == step]:
                logp = masked_logps(model, prompt + state, len(prompt) + j, canvas[j], tokens)
                ratio = torch.exp(logp - sampling[j])
                clipped = torch.clamp(ratio, 1 - eps, 1 + eps)
                loss = -torch.min(ratio * advantage, clipped * advantage)
                (loss / (last + 1) / group_size).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def test_agrpo_reference_objective_equals_a_transcription_of_its_compute_loss(stop_heavy_model, tmp_path):
    seen = []

    def reward(prompts, completions, completion_ids, **kwargs):
        seen.extend(completion_ids)
        return [float(len(ids)) + 0.5 * (p == "hi") for p, ids in zip(prompts, completion_ids)]

    trainer, model, tokenizer, tokens = estimator_trainer(
        stop_heavy_model,
        tmp_path,
        "agrpo",
        agrpo_num_steps=100,
        agrpo_objective="reference",
        scale_rewards="none",
        per_device_train_batch_size=8,
    )
    trainer.reward_funcs = [reward]
    trainer.model.train()
    torch.manual_seed(0)
    output = trainer._generate_and_score_completions([{"prompt": p} for p in PROMPTS[:2] for _ in range(4)])
    assert output["completion_ids"].size(1) == GEN_LENGTH and output["completion_mask"].bool().all()
    rewards = torch.tensor([float(len(ids)) + 0.5 * (i < 4) for i, ids in enumerate(seen)])
    groups = rewards.view(2, 4)
    torch.testing.assert_close(output["advantages"], (groups - groups.mean(1, keepdim=True)).flatten())  # r - mean
    assert any(len(ids) < GEN_LENGTH for ids in seen), "some completion should stop before the canvas ends"

    # TRL shuffles the generation batch before splitting it: each row must keep its own trajectory
    order = torch.tensor([5, 2, 7, 0, 3, 6, 1, 4])
    shuffled = {
        k: v[order] if isinstance(v, torch.Tensor) and v.dim() and v.size(0) == 8 else v for k, v in output.items()
    }
    trainer.model.zero_grad()
    trainer._compute_loss(trainer.model, shuffled).backward()
    got = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()}
    rows = []
    for row, (ids, mask, canvas, advantage) in enumerate(
        zip(output["prompt_ids"], output["prompt_mask"], output["completion_ids"], output["advantages"])
    ):
        record = trainer.estimator.records[int(output["rollout_row_index"][row])]
        assert tuple(canvas.tolist()) == record["completion"]
        prompt = ids[mask.bool()].tolist()
        rows.append((prompt, canvas.tolist(), record["canvas_steps"], record["logprobs"], advantage.item()))
    expected = reference_agrpo_gradients(model, rows, 4, tokens)
    num = sum((got[n] - expected[n]).pow(2).sum() for n in expected).sqrt()
    den = sum(expected[n].pow(2).sum() for n in expected).sqrt()
    print(f"\n[agrpo reference objective] relative gradient error {(num / den).item():.3e}")
    assert den > 0 and (num / den).item() <= 1e-5


def agrpo_gradient(trainer, prompts, completions, advantages, tokens) -> torch.Tensor:
    gradients = trainer_gradients(trainer, prompts, completions, advantages, tokens)
    return torch.cat([gradient.flatten() for gradient in gradients.values()])


def test_entropy_step_sampler_is_unbiased_and_favours_high_entropy_steps():
    from justgrpo_trl.estimators import entropy_step_weights

    steps, entropies = [0, 0, 1, 2, 2, 3], [0.1, 0.2, 2.0, 0.5, 0.5, 0.25]
    generator = torch.Generator().manual_seed(0)
    totals, counts, draws = dict.fromkeys(range(4), 0.0), dict.fromkeys(range(4), 0), 20000
    for _ in range(draws):
        for step, weight in entropy_step_weights(steps, entropies, 2, generator).items():
            totals[step] += weight
            counts[step] += 1
    for step in range(4):  # E[weight of a step] = 1: every step's term is counted once in expectation
        assert abs(totals[step] / draws - 1.0) < 0.05, (step, totals[step] / draws)
    assert counts[1] > counts[2] > counts[0] > counts[3]  # drawn in the order of their summed entropy


@pytest.mark.parametrize(("sampler", "num_draws"), [("stratified", 300), ("entropy", 150)])
def test_agrpo_gradient_is_unbiased_over_draws_of_the_sampled_steps(stop_heavy_model, tmp_path, sampler, num_draws):
    """Unbiased: over N draws of K=1 step, the squared distance from the mean gradient to the K=all gradient is
    about the sum of per-coordinate variances / N; the stated tolerance is a ratio below 2 (a bias the size of one
    draw's error would give a ratio near N). A single draw is far off, so the check has power."""
    trainer, model, tokenizer, tokens = estimator_trainer(stop_heavy_model, tmp_path, "agrpo", agrpo_num_steps=100)
    trainer.model.train()
    prompts, completions, _ = agrpo_rollout(trainer, tokenizer)
    records = [trainer.estimator.records[row] for row in range(len(prompts))]
    assert max(len(set(r["canvas_steps"][: len(c)])) for r, c in zip(records, completions)) >= 2
    advantages = torch.tensor([1.0, -0.5, 0.25, -0.75])
    full = agrpo_gradient(trainer, prompts, completions, advantages, tokens)
    trainer.args.agrpo_num_steps, trainer.args.agrpo_step_sampler = 1, sampler  # `full`: every step, exactly
    torch.manual_seed(1)
    draws = torch.stack([agrpo_gradient(trainer, prompts, completions, advantages, tokens) for _ in range(num_draws)])
    distance = (draws.mean(0) - full).pow(2).sum()
    expected = draws.var(0).sum() / draws.size(0)
    single_error = ((draws[0] - full).norm() / full.norm()).item()
    mean_error = ((draws.mean(0) - full).norm() / full.norm()).item()
    print(
        f"\n[agrpo, {sampler}] K=1: one draw off by {single_error:.3f}, mean of {num_draws} off by {mean_error:.4f} "
        "(relative L2); "
        f"squared distance / (variance / N) = {(distance / expected).item():.3f}"
    )
    assert single_error > 0.2
    assert (distance / expected).item() < 2.0


# --------------------------------------------------------------------------- short training runs


@pytest.mark.parametrize(
    "overrides",
    [
        {"estimator": "diffu_grpo", "num_iterations": 2, "beta": 0.04, "epsilon": 0.5},
        {"estimator": "agrpo", "agrpo_num_steps": 2},
        {"estimator": "agrpo", "agrpo_num_steps": 2, "num_iterations": 2},
    ],
    ids=["diffu_grpo", "agrpo", "agrpo-mu2"],
)
def test_short_runs_with_each_estimator_change_every_parameter(tmp_path, tiny_checkpoint, overrides):
    trainer, before = run_training(tmp_path, tiny_checkpoint, block_length=4, diffusion_steps=4, **overrides)
    assert_all_trainable_changed(trainer, before)
    assert_metrics(trainer, kl=overrides.get("beta", 0) > 0)


def test_agrpo_rejects_a_kl_term(tmp_path):
    from justgrpo_trl import JustGRPOConfig
    from justgrpo_trl.estimators import estimator_for

    with pytest.raises(ValueError, match="beta=0"):
        estimator_for(JustGRPOConfig(output_dir=str(tmp_path), estimator="agrpo", beta=0.04, use_cpu=True))


@pytest.mark.parametrize("option", [{"top_k": 150}, {"top_p": 0.99}])
def test_block_rollout_estimators_refuse_top_k_top_p_rather_than_ignore_them(tmp_path, option):
    from justgrpo_trl import JustGRPOConfig
    from justgrpo_trl.estimators import estimator_for

    for estimator in ("diffu_grpo", "agrpo"):
        with pytest.raises(ValueError, match="top_[kp]"):
            estimator_for(JustGRPOConfig(output_dir=str(tmp_path), estimator=estimator, use_cpu=True, **option))


# --------------------------------------------------------------------------- the protocol


def test_a_new_estimator_is_one_class_and_one_registry_line(tmp_path, tiny_checkpoint, monkeypatch):
    """A fourth estimator plugs in through `ESTIMATORS` alone, with no edit to the trainer: here JustGRPO's own
    strategy, subclassed to record which protocol hooks the trainer calls, with what."""
    from test_trainer_runs import run_training

    from justgrpo_trl import estimators
    from justgrpo_trl.estimators.ar_exact import ARExact

    calls = []

    class Recording(ARExact):
        name = "recording"

        def rollout(self, model, prompt_ids, temperature):
            calls.append(("rollout", len(prompt_ids)))
            return super().rollout(model, prompt_ids, temperature)

        def start_generation_batch(self):
            calls.append(("start",))

        def finish_generation_batch(self, output):
            calls.append(("finish", tuple(output["completion_ids"].shape)))
            return output

        def compute_loss(self, trl_loss, inputs, iteration):
            calls.append(("loss", iteration))
            return trl_loss(inputs)

    monkeypatch.setitem(estimators.ESTIMATORS, "recording", Recording)
    trainer, before = run_training(tmp_path, tiny_checkpoint, estimator="recording", num_iterations=2, max_steps=4)
    assert type(trainer.estimator) is Recording
    assert [c[0] for c in calls[:3]] == ["start", "rollout", "finish"] and calls[1] == ("rollout", 4)
    assert [c[1] for c in calls if c[0] == "loss"] == [0, 1, 0, 1]  # each generation trained twice
    assert sum(c[0] == "rollout" for c in calls) == 2
    assert_all_trainable_changed(trainer, before)
