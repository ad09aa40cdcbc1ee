"""Reliability: crash and resume, atomic checkpoints, numerical faults, bad input, and load (CPU, tiny model)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.trainer_utils import get_last_checkpoint

from justgrpo_trl import JustGRPOConfig, JustGRPOTrainer
from justgrpo_trl.models.tiny import build_tiny_llada, build_tokenizer
from justgrpo_trl.reliability import RewardFunctionError

SCRIPT = Path(__file__).with_name("reliability_train_script.py")
PROMPTS = ["hello", "the quick brown fox", "12 + 30 =", "def add(a, b):"]


def length_reward(prompts, completions, **kwargs):
    return [float(len(c) % 4) for c in completions]


def config(tmp_path, **overrides) -> JustGRPOConfig:
    values = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=6,
        max_steps=2,
        learning_rate=5e-3,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        gradient_checkpointing=False,
    )
    values.update(overrides)
    return JustGRPOConfig(**values)


def trainer_for(tmp_path, checkpoint, rewards=(length_reward,), dataset=None, **overrides) -> JustGRPOTrainer:
    return JustGRPOTrainer(
        model=checkpoint,
        reward_funcs=list(rewards),
        args=config(tmp_path, **overrides),
        train_dataset=dataset if dataset is not None else Dataset.from_dict({"prompt": PROMPTS}),
    )


def step_logs(trainer) -> list[dict]:
    return [log for log in trainer.state.log_history if "loss" in log and "train_loss" not in log]


# --------------------------------------------------------------------------- reward functions


def fails_on_fox(prompts, completions, **kwargs):
    if any("fox" in str(p) for p in prompts):
        raise ZeroDivisionError("cannot grade foxes")
    return [1.0] * len(completions)


def test_failing_reward_names_the_function_and_the_row(tmp_path, tiny_checkpoint):
    trainer = trainer_for(tmp_path, tiny_checkpoint, rewards=(length_reward, fails_on_fox), max_steps=4)
    with pytest.raises(RewardFunctionError, match=r"'fails_on_fox' failed on row \d+ .*fox.*reward_errors='skip'"):
        trainer.train()


def test_failing_reward_rows_score_none_and_are_counted_with_skip(tmp_path, tiny_checkpoint):
    trainer = trainer_for(
        tmp_path, tiny_checkpoint, rewards=(length_reward, fails_on_fox), max_steps=4, reward_errors="skip"
    )
    trainer.train()  # one epoch: every prompt once, 4 generations each
    logs = step_logs(trainer)
    assert len(logs) == 4 and logs[-1]["reward_failures/fails_on_fox"] == 4  # the fox prompt x 4 generations
    assert logs[-1]["reward_failures/length_reward"] == 0


@pytest.mark.parametrize(
    ("reward", "message"),
    [
        (lambda prompts, completions, **kw: [1.0], r"returned 1 values for \d+ completions"),
        (lambda prompts, completions, **kw: [float("nan")] * len(completions), "must be finite"),
    ],
    ids=["wrong-count", "nan"],
)
def test_malformed_reward_values_are_rejected(tmp_path, tiny_checkpoint, reward, message):
    trainer = trainer_for(tmp_path, tiny_checkpoint, rewards=(reward,))
    with pytest.raises(RewardFunctionError, match=message):
        trainer.train()


# --------------------------------------------------------------------------- numerical faults


def test_nonfinite_gradients_are_zeroed_before_clipping_and_counted(tmp_path, tiny_checkpoint):
    trainer = trainer_for(tmp_path, tiny_checkpoint)
    poisoned = trainer.model.model.transformer.blocks[0].q_proj.weight
    poisoned.register_hook(lambda grad: grad.index_fill(0, torch.tensor([0, 1]), float("nan")))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = step_logs(trainer)
    assert logs[-1]["nonfinite_grad_elements"] == 2 * 2 * poisoned.size(1)  # 2 rows x 2 steps
    assert all(torch.isfinite(torch.tensor(log["grad_norm"])) for log in logs)
    for name, param in trainer.model.named_parameters():
        assert torch.isfinite(param).all(), name
        assert not torch.equal(param, before[name]), name


def test_nonfinite_gradients_poison_the_model_when_the_option_is_off(tmp_path, tiny_checkpoint):
    trainer = trainer_for(
        tmp_path, tiny_checkpoint, zero_nonfinite_grads=False, skip_nonfinite_loss_steps=False, max_steps=1
    )
    trainer.model.model.transformer.blocks[0].q_proj.weight.register_hook(lambda grad: grad * float("nan"))
    trainer.train()
    assert not all(torch.isfinite(p).all() for p in trainer.model.parameters())  # the fault is real


def test_step_with_nonfinite_loss_is_skipped_and_counted(tmp_path, tiny_checkpoint, monkeypatch):
    trainer = trainer_for(tmp_path, tiny_checkpoint, max_steps=3)
    original = trainer._compute_loss
    seen, snapshots = [], []

    def nan_on_second_step(model, inputs):
        loss = original(model, inputs)
        seen.append(trainer.state.global_step)
        snapshots.append({n: p.detach().clone() for n, p in model.named_parameters()})
        return loss * float("nan") if trainer.state.global_step == 1 else loss

    monkeypatch.setattr(trainer, "_compute_loss", nan_on_second_step)
    trainer.train()
    final = dict(trainer.model.named_parameters())
    # step 2 (global_step 1 while running) was skipped: the parameters entering step 3 are those after step 1
    assert seen == [0, 1, 2]
    for name in final:
        assert torch.equal(snapshots[1][name], snapshots[2][name]), name
        assert not torch.equal(snapshots[2][name], final[name]), name
        assert torch.isfinite(final[name]).all()
    assert step_logs(trainer)[-1]["skipped_steps"] == 1


# --------------------------------------------------------------------------- bad input


def test_dataset_without_prompt_column(tmp_path, tiny_checkpoint):
    with pytest.raises(ValueError, match=r"no 'prompt' column .*rename_column"):
        trainer_for(tmp_path, tiny_checkpoint, dataset=Dataset.from_dict({"question": PROMPTS}))


@pytest.mark.parametrize("empty", ["", "   ", [{"role": "user", "content": ""}]])
def test_empty_prompt(tmp_path, tiny_checkpoint, empty):
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS] if isinstance(empty, list) else list(PROMPTS)
    prompts[2] = empty
    with pytest.raises(ValueError, match="Row 2 .* empty prompt"):
        trainer_for(tmp_path, tiny_checkpoint, dataset=Dataset.from_dict({"prompt": prompts}))


def test_prompt_with_the_mask_token(tmp_path, tiny_checkpoint):
    dataset = Dataset.from_dict({"prompt": [*PROMPTS[:3], "fill <|mdm_mask|> in"]})
    with pytest.raises(ValueError, match="contains the mask token"):
        trainer_for(tmp_path, tiny_checkpoint, dataset=dataset).train()


def test_prompt_longer_than_max_prompt_length_errors_by_default(tmp_path, tiny_checkpoint):
    with pytest.raises(ValueError, match=r"more than max_prompt_length=3\..*prompt_truncation='left'"):
        trainer_for(tmp_path, tiny_checkpoint, max_prompt_length=3).train()


def test_prompt_longer_than_max_prompt_length_is_cut_on_the_left_with_a_warning(tmp_path, tiny_checkpoint):
    trainer = trainer_for(tmp_path, tiny_checkpoint, max_prompt_length=3, prompt_truncation="left", max_steps=1)
    ids, _, _ = trainer._tokenize_prompts(["the quick brown fox"])
    full = trainer.processing_class("the quick brown fox")["input_ids"]
    assert ids[0] == full[-3:] and len(full) > 3
    trainer.train()


def test_lengths_beyond_the_model_maximum(tmp_path, tiny_checkpoint):
    limit = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).config.max_sequence_length
    with pytest.raises(ValueError, match="exceeds the model's maximum length"):
        trainer_for(tmp_path, tiny_checkpoint, max_prompt_length=limit - 10, max_completion_length=20)


def test_num_generations_that_does_not_divide_the_batch(tmp_path):
    with pytest.raises(ValueError, match="multiple of num_generations=3"):
        config(tmp_path, num_generations=3)


def test_tokenizer_without_the_mask_token(tmp_path):
    tokenizer = build_tokenizer()
    model = build_tiny_llada(tokenizer)
    vocab = {token: i for token, i in tokenizer.get_vocab().items() if token != "<|mdm_mask|>"}
    stripped = build_tokenizer(vocab_size=len(vocab))  # rebuild without the mask token: a different tokenizer
    stripped_dir = tmp_path / "tok"
    stripped.save_pretrained(stripped_dir)
    raw = json.loads((stripped_dir / "tokenizer.json").read_text())
    raw["added_tokens"] = [t for t in raw["added_tokens"] if t["content"] != "<|mdm_mask|>"]
    raw["model"]["vocab"].pop("<|mdm_mask|>", None)
    (stripped_dir / "tokenizer.json").write_text(json.dumps(raw))
    tokenizer = AutoTokenizer.from_pretrained(stripped_dir)
    assert "<|mdm_mask|>" not in tokenizer.get_vocab()
    with pytest.raises(ValueError, match="no mask token '<\\|mdm_mask\\|>'"):
        JustGRPOTrainer(
            model=model,
            reward_funcs=length_reward,
            args=config(tmp_path),
            train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
            processing_class=tokenizer,
        )


# --------------------------------------------------------------------------- checkpoints


def test_crash_while_saving_leaves_no_checkpoint_that_looks_complete(tmp_path, tiny_checkpoint, monkeypatch):
    trainer = trainer_for(tmp_path, tiny_checkpoint, max_steps=4, save_strategy="steps", save_steps=2)
    calls = []

    def crash_on_second_save(output_dir):
        calls.append(output_dir)
        if len(calls) == 2:
            raise OSError("disk full")
        return original(output_dir)

    original = trainer._save_rng_state
    monkeypatch.setattr(trainer, "_save_rng_state", crash_on_second_save)
    with pytest.raises(OSError, match="disk full"):
        trainer.train()
    output_dir = tmp_path / "out"
    assert sorted(p.name for p in output_dir.iterdir() if "checkpoint" in p.name) == [
        "checkpoint-2",
        "tmp-checkpoint-4",
    ]
    assert get_last_checkpoint(str(output_dir)) == str(output_dir / "checkpoint-2")
    assert (output_dir / "checkpoint-2" / "rng_state.pth").exists()
    assert (output_dir / "checkpoint-2" / "optimizer.pt").exists()


def test_each_epoch_has_its_own_order_and_a_fresh_sampler_replays_it(tmp_path, tiny_checkpoint):
    """The resume contract of the prompt sampler: epoch e's order depends on (seed, e) only. A run resumed in a later
    epoch builds a fresh sampler and jumps to that epoch: it must replay the uninterrupted run's order, and every
    epoch must still get a shuffle of its own, as TRL's sampler gives."""
    dataset = Dataset.from_dict({"prompt": [f"prompt {i}" for i in range(16)]})
    trainer = trainer_for(tmp_path, tiny_checkpoint, dataset=dataset)

    def order(sampler, epoch: int) -> tuple[int, ...]:
        sampler.set_epoch(epoch)
        return tuple(sampler)

    running = trainer._get_train_sampler(dataset)
    orders = [order(running, epoch) for epoch in range(3)]
    assert len(set(orders)) == 3, "each epoch must be shuffled anew"
    assert order(trainer._get_train_sampler(dataset), 2) == orders[2]
    assert order(trainer._get_train_sampler(dataset), 1) == orders[1]


# --------------------------------------------------------------------------- multi-process: crash, resume, load


def _launch(checkpoint: str, output_dir: Path, max_steps: int, *flags: str) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"),
        *(
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(port),
        ),
        *(str(SCRIPT), checkpoint, str(output_dir), str(max_steps), *flags),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def _losses(output_dir: Path) -> dict[int, tuple[float, float, float]]:
    history = json.loads((output_dir / "log_history.json").read_text())
    return {
        e["step"]: (e["loss"], e["reward"], e["grad_norm"]) for e in history if "loss" in e and "train_loss" not in e
    }


def test_sigkill_mid_step_then_resume_matches_the_uninterrupted_run(tmp_path, tiny_checkpoint):
    """Two processes; rank 0 is SIGKILLed inside step 3 (after checkpoint-2). The resumed run loses only step 3 and
    then reproduces the uninterrupted run exactly, across an epoch boundary (4 steps per epoch)."""
    full = _launch(tiny_checkpoint, tmp_path / "full", 6)
    assert full.returncode == 0, full.stderr[-6000:]
    crashed = _launch(tiny_checkpoint, tmp_path / "run", 6, "--kill_at_step", "3")
    assert crashed.returncode != 0
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if "checkpoint" in p.name) == ["checkpoint-2"]
    resumed = _launch(tiny_checkpoint, tmp_path / "run", 6, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-6000:]
    expected, got = _losses(tmp_path / "full"), _losses(tmp_path / "run")
    assert sorted(got) == [1, 2, 3, 4, 5, 6]  # steps 1-2 come from checkpoint-2's trainer state
    for step in got:
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step


def test_fifty_steps_with_slow_and_failing_rewards_lose_no_step(tmp_path, tiny_checkpoint):
    result = _launch(tiny_checkpoint, tmp_path / "load", 50, "--flaky_rewards")
    assert result.returncode == 0, result.stderr[-6000:]
    history = json.loads((tmp_path / "load" / "log_history.json").read_text())
    steps = [e for e in history if "loss" in e and "train_loss" not in e]
    assert [e["step"] for e in steps] == list(range(1, 51))
    required = {"loss", "grad_norm", "reward", "reward_std", "entropy", "completions/mean_length", "skipped_steps"}
    assert all(required <= set(e) and all(e[k] == e[k] for k in required) for e in steps)  # present, not NaN
    assert steps[-1]["reward_failures/flaky"] > 0 and steps[-1]["skipped_steps"] == 0
