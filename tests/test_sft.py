"""Masked-diffusion SFT: the noising collator, the loss against a plainly written LLaDA reference, datasets, PEFT."""

import pytest
import torch
from datasets import Dataset

from justgrpo_trl.collators import MaskedDiffusionSFTCollator
from justgrpo_trl.models import get_spec, resolve_special_tokens
from justgrpo_trl.sft import (
    MaskedDiffusionSFTConfig,
    MaskedDiffusionSFTTrainer,
    logit_positions,
    tokenize_prompt_completion,
)

EPS = 1e-3
PROMPTS = ["12+30=", "the quick brown fox", "hi", "def add(a, b):"]
COMPLETIONS = ["42", " jumps over the lazy dog.", " there", "\n    return a + b"]


def make_config(tmp_path, **overrides) -> MaskedDiffusionSFTConfig:
    config = dict(
        output_dir=str(tmp_path / "sft"),
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        max_steps=3,
        logging_steps=1,
        seed=0,
        disable_tqdm=True,
    )
    config.update(overrides)
    return MaskedDiffusionSFTConfig(**config)


def text_dataset(n: int = 8) -> Dataset:
    return Dataset.from_dict({"prompt": (PROMPTS * n)[:n], "completion": (COMPLETIONS * n)[:n]})


def make_trainer(tmp_path, model, tokenizer, dataset=None, **overrides) -> MaskedDiffusionSFTTrainer:
    return MaskedDiffusionSFTTrainer(
        model=model,
        args=make_config(tmp_path, **overrides),
        train_dataset=dataset if dataset is not None else text_dataset(),
        processing_class=tokenizer,
    )


def examples(tokenizer, tokens, n: int = len(PROMPTS)) -> list[dict]:
    eos = tokenizer.eos_token_id
    rows = [{"prompt": p, "completion": c} for p, c in zip(PROMPTS, COMPLETIONS)]
    return [tokenize_prompt_completion(row, tokenizer, tokens.stop_ids, eos) for row in (rows * n)[:n]]


@pytest.fixture
def tokens(tiny_model, tiny_tokenizer):
    return resolve_special_tokens(get_spec(tiny_model), tiny_tokenizer, tiny_model.config)


# ----------------------------------------------------------------------------------------------------------------
# A plain reference: LLaDA's SFT (GUIDELINES.md), one sequence and one token at a time
# ----------------------------------------------------------------------------------------------------------------


def reference_noise(batch: list[dict], mask_id: int, pad_id: int, fill_id, fill_length, generator):
    """LLaDA's `forward_process` on `[prompt | completion (+ EOS fill) | padding]`, drawing in the collator's order:
    one `t` per sequence, then one uniform per position; a position is masked if it is in the completion and its
    uniform is below `t`."""
    rows = []
    for example in batch:
        completion = list(example["completion_ids"])
        if fill_id is not None:
            width = fill_length or max(len(e["completion_ids"]) for e in batch)
            completion += [fill_id] * (width - len(completion))
        rows.append((list(example["prompt_ids"]), completion))
    seq = max(len(p) + len(c) for p, c in rows)
    u = torch.rand(len(rows), generator=generator)
    noise = torch.rand((len(rows), seq), generator=generator)
    out = []
    for b, (prompt, completion) in enumerate(rows):
        t = EPS + (1 - EPS) * (1 - u[b].item())
        ids = prompt + completion
        noisy, targets = list(ids), {}
        for i in range(len(prompt), len(ids)):
            if noise[b, i].item() < t:
                noisy[i], targets[i] = mask_id, ids[i]
        out.append({"noisy": noisy, "targets": targets, "t": t, "answer_length": len(completion)})
    return out


def reference_loss(model, noised: list[dict], mask_id: int) -> torch.Tensor:
    """sum over sequences and masked tokens of CE / t / answer_length, divided by the batch size. One unpadded
    forward per sequence, full logits, the mask token excluded from the softmax."""
    total = torch.zeros(())
    for row in noised:
        logits = model(input_ids=torch.tensor([row["noisy"]])).logits[0].float()
        logits[:, mask_id] = float("-inf")
        for position, target in row["targets"].items():
            ce = -torch.log_softmax(logits[position], dim=-1)[target]
            total = total + ce / row["t"] / row["answer_length"]
    return total / len(noised)


def reference_loss_d1(model, noised: list[dict], mask_id: int) -> torch.Tensor:
    """d1's SFT normaliser, written as a loop: the sum over the batch's masked tokens of CE / t, divided once by the
    number of non-prompt (answer) tokens of the whole batch, not row by row."""
    total, answer_tokens = torch.zeros(()), 0
    for row in noised:
        logits = model(input_ids=torch.tensor([row["noisy"]])).logits[0].float()
        logits[:, mask_id] = float("-inf")
        for position, target in row["targets"].items():
            total = total - torch.log_softmax(logits[position], dim=-1)[target] / row["t"]
        answer_tokens += row["answer_length"]
    return total / answer_tokens


@pytest.mark.parametrize("normalizer", ["llada", "d1"])
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_normalizers_equal_their_transcriptions_on_unequal_answer_lengths(
    tmp_path, tiny_model, tiny_tokenizer, tokens, seed, normalizer
):
    """No fill: the answers keep their own lengths , where LLaDA's and d1's normalisers differ."""
    with torch.no_grad():
        tiny_model.model.transformer.ff_out.weight.mul_(20.0)
    trainer = make_trainer(tmp_path, tiny_model, tiny_tokenizer, fill_completions=False, loss_normalizer=normalizer)
    batch = examples(tiny_tokenizer, tokens)
    assert len({len(e["completion_ids"]) for e in batch}) >= 2
    trainer.data_collator.generator = torch.Generator().manual_seed(seed)
    loss = trainer.compute_loss(tiny_model, trainer.data_collator(batch))
    noised = reference_noise(batch, tokens.mask_id, tokens.pad_id, None, None, torch.Generator().manual_seed(seed))
    expected = {"llada": reference_loss, "d1": reference_loss_d1}[normalizer](tiny_model, noised, tokens.mask_id)
    other = {"llada": reference_loss_d1, "d1": reference_loss}[normalizer](tiny_model, noised, tokens.mask_id)
    assert not torch.isclose(expected, other, rtol=1e-3), "the batch should tell the two normalisers apart"
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_unknown_loss_normalizer_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="loss_normalizer"):
        make_config(tmp_path, loss_normalizer="mean")


@pytest.mark.parametrize("fill", [True, False], ids=["eos-fill", "no-fill"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_equals_plain_reference(tmp_path, tiny_model, tiny_tokenizer, tokens, seed, fill):
    with torch.no_grad():  # O(1) head so that the loss is far from log(V) and a wrong weighting shows
        tiny_model.model.transformer.ff_out.weight.mul_(20.0)
    trainer = make_trainer(tmp_path, tiny_model, tiny_tokenizer, fill_completions=fill, max_completion_length=12)
    collator = trainer.data_collator
    batch = examples(tiny_tokenizer, tokens)
    collator.generator = torch.Generator().manual_seed(seed)
    inputs = collator(batch)
    loss = trainer.compute_loss(tiny_model, inputs)

    fill_id = tiny_tokenizer.eos_token_id if fill else None
    noised = reference_noise(
        batch, tokens.mask_id, tokens.pad_id, fill_id, 12 if fill else None, torch.Generator().manual_seed(seed)
    )
    expected = reference_loss(tiny_model, noised, tokens.mask_id)
    assert sum(len(r["targets"]) for r in noised) > 0
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_loss_only_builds_logits_at_masked_positions(tmp_path, tiny_model, tiny_tokenizer, tokens, monkeypatch):
    trainer = make_trainer(tmp_path, tiny_model, tiny_tokenizer)
    inputs = trainer.data_collator(examples(tiny_tokenizer, tokens))
    shapes = []
    forward = type(tiny_model).forward

    def spy(self, *args, **kwargs):
        output = forward(self, *args, **kwargs)
        shapes.append(tuple(output.logits.shape))
        return output

    monkeypatch.setattr(type(tiny_model), "forward", spy)
    trainer.compute_loss(tiny_model, inputs)
    assert shapes == [(int((inputs["labels"] != -100).sum()), tiny_model.config.embedding_size)]


def test_batch_without_masked_tokens_gives_zero_loss_with_a_graph(tmp_path, tiny_model, tiny_tokenizer, tokens):
    trainer = make_trainer(tmp_path, tiny_model, tiny_tokenizer)
    inputs = trainer.data_collator(examples(tiny_tokenizer, tokens))
    inputs["input_ids"] = torch.where(inputs["labels"] != -100, inputs["labels"], inputs["input_ids"])
    inputs["labels"] = torch.full_like(inputs["labels"], -100)
    loss = trainer.compute_loss(tiny_model, inputs)
    assert loss.item() == 0.0
    loss.backward()  # connected to the parameters, so DDP and gradient accumulation keep working


# ----------------------------------------------------------------------------------------------------------------
# The collator
# ----------------------------------------------------------------------------------------------------------------


def _random_examples(generator, n: int, mask_id: int) -> list[dict]:
    def ids(low, high):
        length = int(torch.randint(low, high, (), generator=generator))
        return [int(x) for x in torch.randint(10, 200, (length,), generator=generator) if int(x) != mask_id]

    return [{"prompt_ids": ids(1, 9), "completion_ids": ids(1, 7)} for _ in range(n)]


@pytest.mark.parametrize("fill_id", [None, 1], ids=["no-fill", "fill"])
def test_collator_never_masks_prompt_or_padding(fill_id):
    mask_id, pad_id = 250, 1
    collator = MaskedDiffusionSFTCollator(mask_id, pad_id, eps=EPS, fill_id=fill_id, generator=torch.Generator())
    collator.generator.manual_seed(0)
    data_gen = torch.Generator().manual_seed(1)
    masked_count = completion_count = 0
    for _ in range(300):
        batch = _random_examples(data_gen, 6, mask_id)
        out = collator(batch)
        fill_width = max(len(e["completion_ids"]) for e in batch)
        for row, example in enumerate(batch):
            prompt, completion = example["prompt_ids"], example["completion_ids"]
            if fill_id is not None:
                completion = completion + [fill_id] * (fill_width - len(completion))
            start, end = len(prompt), len(prompt) + len(completion)
            ids, labels, attention = out["input_ids"][row], out["labels"][row], out["attention_mask"][row]
            assert ids[:start].tolist() == prompt and (labels[:start] == -100).all()  # prompt: never masked
            assert (ids[end:] == pad_id).all() and (labels[end:] == -100).all()  # padding: never masked
            assert (attention[:end] == 1).all() and (attention[end:] == 0).all()  # ... nor attended
            masked = ids[start:end] == mask_id
            clean = torch.tensor(completion)
            assert torch.equal(torch.where(masked, clean, ids[start:end]), clean)
            assert torch.equal(labels[start:end], torch.where(masked, clean, torch.full_like(clean, -100)))
            assert out["answer_lengths"][row] == len(completion)
            masked_count += int(masked.sum())
            completion_count += len(completion)
        assert ((out["input_ids"] == mask_id) == (out["labels"] != -100)).all()
    rate = masked_count / completion_count
    assert 0.45 < rate < 0.55, rate  # E[t] = (1 + eps) / 2


def test_collator_masks_every_completion_position_including_the_eos_fill():
    collator = MaskedDiffusionSFTCollator(mask_id=250, pad_id=1, fill_id=1, fill_length=6, generator=torch.Generator())
    batch = [{"prompt_ids": [5, 6, 7], "completion_ids": [8, 9]}, {"prompt_ids": [5], "completion_ids": [8, 9, 10]}]
    seen = torch.zeros(2, 9, dtype=torch.bool)
    for _ in range(200):
        out = collator(batch)
        seen |= out["labels"] != -100
    assert seen[0].tolist() == [False] * 3 + [True] * 6
    assert seen[1].tolist() == [False] + [True] * 6 + [False] * 2
    assert out["answer_lengths"].tolist() == [6, 6]
    assert out["input_ids"][1, 7:].tolist() == [1, 1] and out["attention_mask"][1, 7:].tolist() == [0, 0]


def test_masking_rate_t_is_in_eps_to_one():
    eps = 0.3  # large, so that a wrong lower bound shows
    collator = MaskedDiffusionSFTCollator(mask_id=250, pad_id=1, eps=eps, generator=torch.Generator().manual_seed(0))
    batch = [{"prompt_ids": [5], "completion_ids": [8] * 4}] * 512
    t = torch.cat([collator(batch)["p_mask"] for _ in range(20)])
    assert (t > eps).all() and (t <= 1.0).all()
    assert t.mean().item() == pytest.approx((1 + eps) / 2, abs=0.01)
    assert t.min().item() < eps + 0.01 and t.max().item() > 0.99  # uniform over the whole interval
    with pytest.raises(ValueError, match="eps"):
        MaskedDiffusionSFTCollator(mask_id=250, pad_id=1, eps=0.0)


def test_collator_rejects_completions_longer_than_the_fill_or_holding_the_mask():
    collator = MaskedDiffusionSFTCollator(mask_id=250, pad_id=1, fill_id=1, fill_length=2)
    with pytest.raises(ValueError, match="longer than fill_length"):
        collator([{"prompt_ids": [5], "completion_ids": [8, 9, 10]}])
    with pytest.raises(ValueError, match="mask token"):
        collator([{"prompt_ids": [5], "completion_ids": [250]}])


def test_logit_positions_shift():
    masked = torch.tensor([[False, False, True, True], [False, True, False, False]])
    assert torch.equal(logit_positions(masked, 0), masked)
    shifted = logit_positions(masked, 1)
    assert shifted.tolist() == [[False, True, True, False], [True, False, False, False]]
    assert shifted.sum() == masked.sum()
    with pytest.raises(ValueError):
        logit_positions(torch.tensor([[True, False]]), 1)


# ----------------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------------


def test_text_and_chat_datasets_are_tokenised_like_rl_prompts(tmp_path, tiny_model, tiny_tokenizer, tokens):
    chat = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": p}] for p in PROMPTS],
            "completion": [[{"role": "assistant", "content": c}] for c in COMPLETIONS],
        }
    )
    eot = tiny_tokenizer.convert_tokens_to_ids("<|eot_id|>")
    for dataset in (text_dataset(4), chat):
        trainer = make_trainer(tmp_path, tiny_model, tiny_tokenizer, dataset=dataset, max_completion_length=None)
        prepared = trainer.train_dataset
        assert sorted(prepared.column_names) == ["completion_ids", "prompt_ids"]
        for row, example in zip(prepared, dataset):
            if dataset is chat:  # what TRL's GRPOTrainer feeds the sampler
                prompt = tiny_tokenizer.apply_chat_template(
                    example["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True
                )["input_ids"]
                assert row["completion_ids"][-1] == eot
            else:
                prompt = tiny_tokenizer(text=example["prompt"])["input_ids"]
                completion = tiny_tokenizer(example["completion"], add_special_tokens=False)["input_ids"]
                assert row["completion_ids"] == completion + [tiny_tokenizer.eos_token_id]
            assert row["prompt_ids"] == list(prompt)
            assert row["completion_ids"][-1] in tokens.stop_ids


def test_truncation_and_missing_columns(tmp_path, tiny_model, tiny_tokenizer):
    trainer = make_trainer(tmp_path, tiny_model, tiny_tokenizer, max_prompt_length=3, max_completion_length=4)
    for row in trainer.train_dataset:
        assert len(row["prompt_ids"]) <= 3 and len(row["completion_ids"]) <= 4
    assert trainer.data_collator.fill_length == 4
    with pytest.raises(ValueError, match="prompt.*completion"):
        make_trainer(tmp_path, tiny_model, tiny_tokenizer, dataset=Dataset.from_dict({"text": ["a"]}))


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


def _fixed_batch_loss(trainer, model, tokenizer, tokens) -> float:
    trainer.data_collator.generator = torch.Generator().manual_seed(123)
    with torch.no_grad():
        return sum(trainer.compute_loss(model, trainer.data_collator(examples(tokenizer, tokens))).item()
                   for _ in range(8))  # fmt: skip


def test_training_lowers_the_loss(tmp_path, tiny_model, tiny_tokenizer, tokens):
    trainer = make_trainer(tmp_path, tiny_model, tiny_tokenizer, max_steps=30, learning_rate=3e-3)
    before = _fixed_batch_loss(trainer, tiny_model, tiny_tokenizer, tokens)
    trainer.data_collator.generator = None
    trainer.train()
    after = _fixed_batch_loss(trainer, trainer.model, tiny_tokenizer, tokens)
    assert after < 0.7 * before, (before, after)


def test_peft_lora_trains_only_the_adapter(tmp_path, tiny_checkpoint, tiny_tokenizer, tokens):
    from peft import LoraConfig, PeftModel

    targets = r".*\.blocks\.\d+\.(q_proj|k_proj|v_proj|attn_out|ff_proj|up_proj|ff_out)"
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=targets, task_type="CAUSAL_LM")
    trainer = MaskedDiffusionSFTTrainer(
        model=tiny_checkpoint,
        args=make_config(tmp_path, max_steps=20, learning_rate=1e-2),
        train_dataset=text_dataset(),
        peft_config=lora,
    )
    assert isinstance(trainer.model, PeftModel)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    loss_before = _fixed_batch_loss(trainer, trainer.model, tiny_tokenizer, tokens)
    trainer.data_collator.generator = None
    trainer.train()
    params = dict(trainer.model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(not torch.equal(params[n], before[n]) for n in trainable if "lora_B" in n)
    assert all(torch.equal(p, before[n]) for n, p in params.items() if n not in trainable)
    assert _fixed_batch_loss(trainer, trainer.model, tiny_tokenizer, tokens) < loss_before


def test_gradient_accumulation_matches_a_full_batch(tmp_path, tiny_model, tiny_tokenizer, tokens):
    """The loss is a per-micro-batch mean, so Trainer must divide it by the accumulation steps: two halves accumulated
    give the gradient of the whole batch."""
    trainer = make_trainer(tmp_path, tiny_model, tiny_tokenizer, gradient_accumulation_steps=2)
    assert trainer.loss_is_scaled_for_ga is False
    trainer.data_collator.generator = torch.Generator().manual_seed(0)
    inputs = trainer.data_collator(examples(tiny_tokenizer, tokens))
    trainer.compute_loss(tiny_model, inputs).backward()
    full = [p.grad.clone() for p in tiny_model.parameters()]
    tiny_model.zero_grad()
    for half in (slice(0, 2), slice(2, 4)):
        part = {k: v[half] for k, v in inputs.items()}
        (trainer.compute_loss(tiny_model, part) / 2).backward()
    for expected, p in zip(full, tiny_model.parameters()):
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-6)
