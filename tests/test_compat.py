"""Drop-in compatibility: what a TRL user migrating a working `GRPOTrainer` pipeline brings, and the contracts of
TRL's own `GRPOTrainer` tests, written for this project on the tiny LLaDA (CPU, 2-step runs).

A failure here after a TRL upgrade means the next release changed a contract the trainer relies on. The loss types,
KL with a reloaded reference, LoRA with the adapter-disabled reference, off-policy steps and chat prompts are in
`test_trainer_runs.py`; resume after a crash is in `test_reliability.py`.
"""

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from datasets import Dataset, IterableDataset
from test_trainer_runs import (
    ascii_fraction,
    assert_all_trainable_changed,
    assert_metrics,
    plain_dataset,
    run_training,
    step_logs,
)
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig

from justgrpo_trl import JustGRPOConfig, JustGRPOTrainer
from justgrpo_trl.decoding import SamplingFilter, scaled_logits
from justgrpo_trl.estimators import estimator_for
from justgrpo_trl.models import get_spec, resolve_special_tokens


def length_reward(prompts, completions, **kwargs) -> list[float]:
    return [float(len(c) % 5) for c in completions]


# --------------------------------------------------------------------------- migrating users


def test_a_plain_grpo_config_is_taken_with_every_value_its_user_set(tmp_path, tiny_checkpoint, caplog):
    args = GRPOConfig(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=4,
        learning_rate=5e-3,
        temperature=0.8,
        beta=0.0,
        logging_steps=1,
        disable_tqdm=True,
    )
    with caplog.at_level(logging.WARNING):
        trainer = JustGRPOTrainer(
            model=tiny_checkpoint, reward_funcs=ascii_fraction, args=args, train_dataset=plain_dataset()
        )
    assert isinstance(trainer.args, JustGRPOConfig)
    assert (trainer.args.temperature, trainer.args.learning_rate, trainer.args.num_generations) == (0.8, 5e-3, 4)
    assert trainer.args.max_steps == 2 and trainer.args.per_device_train_batch_size == 4
    # left at GRPOConfig's default (512): takes JustGRPOConfig's canvas length, and says so
    assert trainer.args.max_completion_length == 256
    assert "max_completion_length: 512 (GRPOConfig's default) -> 256" in caplog.text
    assert trainer.args.estimator == "ar_exact" and trainer.args.logprob_chunk_size == 16

    explicit = GRPOConfig(
        output_dir=str(tmp_path / "o2"), use_cpu=True, max_completion_length=8, steps_per_generation=2
    )
    converted = JustGRPOConfig.from_grpo_config(explicit)
    assert converted.max_completion_length == 8 and converted.steps_per_generation == 2
    assert converted.generation_batch_size == explicit.generation_batch_size


def test_a_plain_grpo_config_trains(tmp_path, tiny_checkpoint):
    fields = dict(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", save_strategy="no", max_steps=2)
    fields |= dict(per_device_train_batch_size=4, num_generations=4, max_completion_length=8, learning_rate=5e-3)
    fields |= dict(logging_steps=1, disable_tqdm=True, seed=0)
    trainer = JustGRPOTrainer(
        model=tiny_checkpoint, reward_funcs=ascii_fraction, args=GRPOConfig(**fields), train_dataset=plain_dataset()
    )
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    assert_all_trainable_changed(trainer, before)
    assert_metrics(trainer)


def test_lora_without_target_modules_adapts_llada_attention(tmp_path, tiny_checkpoint):
    """What TRL's `--use_peft` builds: a `LoraConfig` without `target_modules`."""
    from peft import LoraConfig

    trainer, before = run_training(tmp_path, tiny_checkpoint, peft_config=LoraConfig(r=4, task_type="CAUSAL_LM"))
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in trainer.model.named_parameters() if ".lora_A" in n}
    assert {name.rsplit(".", 1)[-1] for name in adapted} == {"q_proj", "k_proj", "v_proj"}
    assert len(adapted) == 3 * 2  # both blocks
    assert_all_trainable_changed(trainer, before)


def test_missing_reward_functions_give_trls_error(tmp_path, tiny_checkpoint):
    with pytest.raises(ValueError, match="No reward source provided"):
        JustGRPOTrainer(
            model=tiny_checkpoint,
            args=JustGRPOConfig(
                output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=4, num_generations=4
            ),
            train_dataset=plain_dataset(),
        )


# --------------------------------------------------------------------------- sampling options


@pytest.mark.parametrize(
    ("overrides", "option"),
    [
        ({"generation_kwargs": {"do_sample": False}}, "generation_kwargs"),
        ({"repetition_penalty": 1.2}, "repetition_penalty"),
        ({"cache_implementation": "static"}, "cache_implementation"),
        ({"estimator": "diffu_grpo", "top_p": 0.9}, "top_p"),
        ({"estimator": "agrpo", "top_k": 20}, "top_k"),
        ({"estimator": "agrpo", "min_p": 0.1}, "min_p"),
    ],
)
def test_sampling_options_that_cannot_be_honoured_are_refused(tmp_path, overrides, option):
    """Refused by the config, or by the estimator when the trainer looks it up (`estimator_for`)."""
    with pytest.raises(ValueError, match=option):
        estimator_for(JustGRPOConfig(output_dir=str(tmp_path), use_cpu=True, **overrides))


def plain_filtered_logps(logits: torch.Tensor, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    """top-k, then top-p, then min-p on one row of scaled logits, written plainly with Python loops."""
    order = sorted(range(logits.numel()), key=lambda i: -logits[i].item())
    kept = order[:top_k]
    probs = torch.softmax(logits[kept], -1).tolist()
    nucleus, total = [], 0.0
    for index, p in zip(kept, probs):
        nucleus.append(index)
        total += p
        if total >= top_p:
            break
    probs = torch.softmax(logits[nucleus], -1)
    final = [i for i, p in zip(nucleus, probs.tolist()) if p >= min_p * probs.max().item()]
    out = torch.full_like(logits, float("-inf"))
    out[final] = torch.log_softmax(logits[final], -1)
    return out


def test_sampling_filter_equals_a_plain_transcription():
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        logits = torch.randn(50, generator=generator) * 3
        ours = torch.log_softmax(SamplingFilter(top_k=30, top_p=0.8, min_p=0.05)(logits), -1)
        expected = plain_filtered_logps(logits, 30, 0.8, 0.05)
        assert torch.equal(torch.isinf(ours), torch.isinf(expected))
        torch.testing.assert_close(ours[~torch.isinf(ours)], expected[~torch.isinf(expected)])


def test_top_k_top_p_min_p_are_honoured_in_rollout_and_scoring(stop_heavy_model, tmp_path):
    """The rollout draws only tokens the truncated distribution allows, records their log-probs under it, and the
    trainer scores the same log-probs (a one-forward-per-token oracle with the filter applied agrees)."""
    from test_trainer_exact import GEN_LENGTH, TEMPERATURE, make_trainer, prompt_ids, rollout, trl_batch

    model, tokenizer, tokens = stop_heavy_model
    options = dict(top_k=40, top_p=0.9, min_p=0.02)
    trainer = make_trainer(model, tokenizer, tmp_path, **options)
    prompts = prompt_ids(tokenizer) * 2
    completions, sampling = rollout(trainer, prompts)
    batch = trl_batch(prompts, completions, tokens.pad_id)
    input_ids, attention_mask = torch.cat(batch[0::2], 1), torch.cat(batch[1::2], 1)
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, input_ids, attention_mask, batch[2].size(1)
        )
        truncation = SamplingFilter(**options)
        narrowed = 0
        for row, (prompt, completion) in enumerate(zip(prompts, completions)):
            for j, token in enumerate(completion):
                canvas = prompt + completion[:j] + [tokens.mask_id] * (GEN_LENGTH - j)
                raw = model(input_ids=torch.tensor([canvas])).logits[0, len(prompt) + j]
                scaled = scaled_logits(raw, tokens.mask_id, TEMPERATURE)
                expected = torch.log_softmax(truncation(scaled), -1)
                assert torch.isfinite(expected[token]), "the sampler drew a token the filter removes"
                assert abs(sampling[row][j] - expected[token].item()) <= 1e-5
                assert abs(logps[row, j].item() - expected[token].item()) <= 1e-5
                narrowed += int(torch.isinf(expected).sum() > 1)  # more than the mask token removed
    assert narrowed > 0, "the options must actually truncate something"


# --------------------------------------------------------------------------- portable checkpoints

LOAD_WITHOUT_PACKAGE = textwrap.dedent(
    """
    import json, sys
    class Blocked:
        def find_spec(self, name, path=None, target=None):
            if name == "justgrpo_trl" or name.startswith("justgrpo_trl."):
                raise ImportError("justgrpo_trl is not importable in this interpreter")
    sys.meta_path.insert(0, Blocked())
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    directory, ids, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    try:
        import justgrpo_trl  # noqa: F401
        raise SystemExit("the package must not be importable here")
    except ImportError:
        pass
    try:
        AutoModelForCausalLM.from_pretrained(directory)
        plain = "loaded"
    except Exception as error:  # without trust_remote_code the model type is unknown
        plain = type(error).__name__
    model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    logits = model(input_ids=torch.tensor([ids])).logits[0].tolist()
    messages = [{"role": "user", "content": "hi"}]
    chat = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    with open(out, "w") as handle:
        json.dump({"module": type(model).__module__, "plain": plain, "logits": logits, "chat": chat,
                   "vocab": tokenizer.get_vocab()}, handle)
    """
)


def test_a_saved_checkpoint_loads_where_the_package_is_not_importable(tmp_path, tiny_checkpoint):
    trainer, _ = run_training(tmp_path, tiny_checkpoint, save_strategy="steps", save_steps=2)
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert (checkpoint / "modeling_llada.py").exists() and (checkpoint / "configuration_llada.py").exists()
    auto_map = json.loads((checkpoint / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForCausalLM"] == "modeling_llada.LLaDAModelLM"

    ids = trainer.processing_class("the quick brown fox")["input_ids"]
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_PACKAGE, str(checkpoint), json.dumps(ids), str(tmp_path / "loaded.json")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    loaded = json.loads((tmp_path / "loaded.json").read_text())
    assert loaded["module"].startswith("transformers_modules.") and loaded["plain"] != "loaded"
    natively = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)  # the package is imported here
    assert type(natively).__module__.startswith("justgrpo_trl.")
    for name, param in trainer.model.named_parameters():  # the checkpoint holds the trained weights
        torch.testing.assert_close(natively.get_parameter(name), param.detach().float(), rtol=0, atol=0)
    with torch.no_grad():
        expected = natively(input_ids=torch.tensor([ids])).logits[0]
    torch.testing.assert_close(torch.tensor(loaded["logits"]), expected, rtol=0, atol=1e-5)
    tokenizer = trainer.processing_class
    spec = get_spec(trainer.model)
    tokens = resolve_special_tokens(spec, tokenizer, trainer.model.config)
    assert loaded["vocab"][spec.mask_token] == tokens.mask_id
    assert loaded["chat"] == tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )


# --------------------------------------------------------------------------- TRL's GRPOTrainer contracts


def test_several_reward_functions_with_weights(tmp_path, tiny_checkpoint):
    trainer, before = run_training(
        tmp_path, tiny_checkpoint, reward_funcs=[ascii_fraction, length_reward], reward_weights=[1.0, 0.5]
    )
    assert_all_trainable_changed(trainer, before)
    first = step_logs(trainer)[0]
    means = [first["rewards/ascii_fraction/mean"], first["rewards/length_reward/mean"]]
    assert first["reward"] == pytest.approx(means[0] + 0.5 * means[1], rel=1e-4)


def test_a_reward_model(tmp_path, tiny_checkpoint, tiny_tokenizer):
    """A sequence-classification reward model with its own tokenizer, as TRL scores it."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=len(tiny_tokenizer),
        num_labels=1,
        pad_token_id=tiny_tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    reward_model = LlamaForSequenceClassification(config)
    with torch.no_grad():
        reward_model.score.weight.mul_(50.0)  # rewards far enough apart that the advantages are not all 0
    fields = dict(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", save_strategy="no", max_steps=2)
    fields |= dict(per_device_train_batch_size=4, num_generations=4, max_completion_length=8, learning_rate=5e-3)
    fields |= dict(logging_steps=1, disable_tqdm=True, seed=0)
    trainer = JustGRPOTrainer(
        model=tiny_checkpoint,
        reward_funcs=reward_model,
        args=JustGRPOConfig(**fields),
        train_dataset=plain_dataset(),
        reward_processing_classes=tiny_tokenizer,
    )
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    assert_all_trainable_changed(trainer, before)
    first = step_logs(trainer)[0]
    (name,) = [key for key in first if key.startswith("rewards/") and key.endswith("/mean")]
    assert first[name] == pytest.approx(first["reward"]) and first["reward_std"] > 0


def test_evaluation_during_training(tmp_path, tiny_checkpoint):
    fields = dict(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", save_strategy="no", max_steps=2)
    fields |= dict(per_device_train_batch_size=4, num_generations=4, max_completion_length=8, learning_rate=5e-3)
    fields |= dict(
        logging_steps=1, disable_tqdm=True, eval_strategy="steps", eval_steps=1, per_device_eval_batch_size=4
    )
    trainer = JustGRPOTrainer(
        model=tiny_checkpoint,
        reward_funcs=ascii_fraction,
        args=JustGRPOConfig(**fields),
        train_dataset=plain_dataset(),
        eval_dataset=plain_dataset(4),
    )
    trainer.train()
    evals = [log for log in trainer.state.log_history if "eval_reward" in log]
    assert len(evals) == 2 and all("eval_completions/mean_length" in log for log in evals)


def test_log_completions(tmp_path, tiny_checkpoint):
    trainer, _ = run_training(tmp_path, tiny_checkpoint, log_completions=True, num_completions_to_print=2)
    logs = trainer._logs
    assert len(logs["prompt"]) > 0 and len(logs["completion"]) == len(logs["prompt"])
    assert all(isinstance(text, str) for text in logs["completion"])


def test_iterable_dataset(tmp_path, tiny_checkpoint):
    prompts = plain_dataset(16)["prompt"]

    def rows():
        yield from ({"prompt": p} for p in prompts)

    trainer, before = run_training(tmp_path, tiny_checkpoint, dataset=IterableDataset.from_generator(rows))
    assert_all_trainable_changed(trainer, before)


def test_callbacks_see_every_step(tmp_path, tiny_checkpoint):
    seen = []

    class Recorder(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(("log", "loss" in (logs or {}) or "train_loss" in (logs or {})))

    trainer, _ = run_training(tmp_path, tiny_checkpoint, on_trainer=lambda t: t.add_callback(Recorder()))
    assert [s for s in seen if isinstance(s, int)] == [1, 2]
    assert ("log", True) in seen


def test_reference_model_sync(tmp_path, tiny_checkpoint):
    """`sync_ref_model`: the reference is mixed towards the policy every `ref_model_sync_steps` steps."""
    trainer, _ = run_training(
        tmp_path, tiny_checkpoint, beta=0.1, sync_ref_model=True, ref_model_sync_steps=1, ref_model_mixup_alpha=1.0
    )
    policy = dict(trainer.model.named_parameters())
    for name, ref in trainer.ref_model.named_parameters():
        torch.testing.assert_close(ref, policy[name].detach(), rtol=0, atol=0)  # alpha = 1: a copy
    assert step_logs(trainer)[0]["kl"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("overrides", [dict(num_iterations=2, steps_per_generation=2, gradient_accumulation_steps=1)])
def test_num_iterations_with_steps_per_generation(tmp_path, tiny_checkpoint, overrides):
    trainer, before = run_training(tmp_path, tiny_checkpoint, max_steps=4, **overrides)
    assert_all_trainable_changed(trainer, before)
    logs = [e for e in trainer.state.log_history if "loss" in e and "train_loss" not in e]
    assert len(logs) == 4 and "reward" in logs[0] and "reward" not in logs[1]  # one generation per 4 steps


def test_resume_from_the_last_checkpoint_with_resume_true(tmp_path, tiny_checkpoint):
    """`--resume_from_checkpoint true` (the README's command) resumes from the last checkpoint in output_dir."""
    from test_recipes import RECIPES, TINY_ROWS, load_recipe_module, write_jsonl

    module = load_recipe_module()
    assert module.resume_argument("true") is True and module.resume_argument("false") is None
    assert module.resume_argument("out/checkpoint-2") == "out/checkpoint-2"
    data = write_jsonl(tmp_path / "gsm8k.jsonl", TINY_ROWS["gsm8k"] * 2)
    common = ["--config", str(RECIPES / "gsm8k.yaml"), "--model_name_or_path", tiny_checkpoint]
    common += ["--dataset_path", data, "--output_dir", str(tmp_path / "out"), "--save_steps", "1"]
    common += ["--num_generations", "4", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1"]
    common += ["--max_completion_length", "6", "--use_cpu", "true", "--bf16", "false", "--dtype", "float32"]
    common += ["--gradient_checkpointing", "false", "--learning_rate", "1e-3"]
    module.main([*common, "--max_steps", "2"])
    resumed = module.main([*common, "--max_steps", "3", "--resume_from_checkpoint", "true"])
    assert resumed.state.global_step == 3
    trained = [e["step"] for e in resumed.state.log_history if "loss" in e and "train_loss" not in e]
    assert trained == [1, 2, 3]  # steps 1-2 restored from checkpoint-2's state, step 3 trained now


def test_a_dataset_of_conversations_with_a_system_prompt(tmp_path, tiny_checkpoint):
    rows = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": p}] for p in ["a", "b"] * 8]
    trainer, before = run_training(tmp_path, tiny_checkpoint, dataset=Dataset.from_dict({"prompt": rows}))
    assert_all_trainable_changed(trainer, before)


def test_tokenizer_saved_with_the_checkpoint_keeps_the_special_tokens(tmp_path, tiny_checkpoint):
    trainer, _ = run_training(tmp_path, tiny_checkpoint, save_strategy="steps", save_steps=2)
    saved = AutoTokenizer.from_pretrained(tmp_path / "out" / "checkpoint-2")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "checkpoint-2")
    tokens = resolve_special_tokens(get_spec(model), saved, model.config)
    assert tokens == trainer.special_tokens
