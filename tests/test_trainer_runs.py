"""Short JustGRPO training runs on CPU in which every trainable parameter must change.

Each run is 2 optimizer steps of the tiny LLaDA (`conftest.tiny_checkpoint`) with a reward that varies between
completions, so advantages are non-zero and, with Adam, every parameter that receives a gradient moves. Covered: every
TRL loss type, KL to a reference model reloaded from disk, LoRA with the adapter-disabled reference, off-policy steps
(`num_iterations`, `steps_per_generation`), entropy masking, truncated-completion masking, chat and plain prompts, and
a two-process DDP run.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from justgrpo_trl import JustGRPOConfig, JustGRPOTrainer

PROMPTS = ["hello", "the quick brown", "what is 12 + 30?", "fox"]
# Block linear layers only: PEFT matches target names as suffixes, so a bare "ff_out" would also wrap the output head
# `model.transformer.ff_out` (vocab x d_model), which LoRA recipes leave alone.
LORA_TARGETS = r".*\.blocks\.\d+\.(q_proj|k_proj|v_proj|attn_out|ff_proj|up_proj|ff_out)"


def _text(completion) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


def ascii_fraction(prompts, completions, **kwargs) -> list[float]:
    """Share of printable ASCII characters: random byte-level tokens often decode to U+FFFD, so this varies."""
    texts = [_text(c) for c in completions]
    return [sum(" " <= ch <= "~" for ch in t) / len(t) if t else 0.0 for t in texts]


def plain_dataset(n: int = 16) -> Dataset:
    return Dataset.from_dict({"prompt": (PROMPTS * n)[:n]})


def chat_dataset(n: int = 16) -> Dataset:
    return Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in (PROMPTS * n)[:n]]})


def run_training(
    tmp_path, model, dataset=None, peft_config=None, reward_funcs=ascii_fraction, on_trainer=None, **overrides
):
    """Train 2 steps; return the trainer and a copy of every parameter taken just before training. `on_trainer` is
    called with the trainer before training starts (to install spies)."""
    config = dict(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        logging_steps=1,
        learning_rate=5e-3,
        logprob_chunk_size=8,
        seed=0,
        disable_tqdm=True,
    )
    config.update(overrides)
    trainer = JustGRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=JustGRPOConfig(**config),
        train_dataset=dataset if dataset is not None else plain_dataset(),
        peft_config=peft_config,
    )
    if on_trainer is not None:
        on_trainer(trainer)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    return trainer, before


def step_logs(trainer) -> list[dict]:
    logs = [entry for entry in trainer.state.log_history if "loss" in entry and "train_loss" not in entry]
    assert len(logs) == 2, trainer.state.log_history
    return logs


def assert_all_trainable_changed(trainer, before) -> None:
    params = dict(trainer.model.named_parameters())
    trainable = [name for name, p in params.items() if p.requires_grad]
    assert trainable
    unchanged = [name for name in trainable if torch.equal(params[name].detach(), before[name])]
    assert not unchanged, f"trainable parameters that did not change: {unchanged}"
    moved_frozen = [n for n, p in params.items() if not p.requires_grad and not torch.equal(p.detach(), before[n])]
    assert not moved_frozen, f"frozen parameters that changed: {moved_frozen}"


def assert_metrics(trainer, kl: bool = False) -> list[dict]:
    """Generation metrics are logged at steps that generate (the first one at least); loss metrics at every step."""
    logs = step_logs(trainer)
    for key in ("reward", "completions/mean_length", "frac_reward_zero_std"):
        assert key in logs[0], (key, logs[0])
    for log in logs:
        for key in ("loss", "entropy", *(("kl",) if kl else ())):
            assert key in log, (key, log)
        assert kl or "kl" not in log, log
        assert all(torch.isfinite(torch.tensor(float(v))) for v in log.values() if v is not None), log
    assert any(log.get("frac_reward_zero_std", 1) < 1 for log in logs), "no reward signal: the test proves nothing"
    return logs


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"])
def test_every_loss_type_trains_every_parameter(tmp_path, tiny_checkpoint, loss_type):
    level = "sequence" if loss_type == "luspo" else "token"
    trainer, before = run_training(tmp_path, tiny_checkpoint, loss_type=loss_type, importance_sampling_level=level)
    assert_all_trainable_changed(trainer, before)
    assert_metrics(trainer)


def test_kl_with_reference_model_reloaded_from_disk(tmp_path, tiny_checkpoint):
    trainer, before = run_training(tmp_path, tiny_checkpoint, beta=0.1)
    assert trainer.ref_model is not None
    assert_all_trainable_changed(trainer, before)
    for name, p in trainer.accelerator.unwrap_model(trainer.ref_model).named_parameters():
        assert torch.equal(p, before[name]), name  # a reloaded copy of the init, never updated
    logs = assert_metrics(trainer, kl=True)
    assert logs[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before the first update
    assert logs[1]["kl"] > 0


def test_lora_with_adapter_disabled_reference(tmp_path, tiny_checkpoint):
    from peft import LoraConfig, PeftModel

    lora = LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    trainer, before = run_training(tmp_path, tiny_checkpoint, peft_config=lora, beta=0.1)
    assert isinstance(trainer.model, PeftModel) and trainer.ref_model is None
    trainable = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert len(trainable) == 2 * 7 * 2  # (A, B) x 7 linear layers x 2 blocks; the output head is not adapted
    assert_all_trainable_changed(trainer, before)  # also: base weights unchanged
    logs = assert_metrics(trainer, kl=True)
    assert logs[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # LoRA B starts at 0: adapter == base
    assert logs[1]["kl"] > 0


def test_bare_ff_out_lora_target_also_wraps_the_output_head(tiny_model):
    """Why `LORA_TARGETS` is a regex: with LLaDA's names, "ff_out" is both the MLP down-projection and the head."""
    from peft import LoraConfig, get_peft_model

    names = ["q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"]
    bare = get_peft_model(tiny_model, LoraConfig(r=8, target_modules=names, task_type="CAUSAL_LM"))
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in bare.named_parameters() if ".lora_A" in n}
    assert any(n.endswith("model.transformer.ff_out") for n in adapted)
    assert len(adapted) == 7 * 2 + 1


@pytest.mark.parametrize(
    "overrides",
    [
        dict(num_iterations=2),
        dict(gradient_accumulation_steps=1, steps_per_generation=2),
        dict(num_iterations=2, reuse_sampling_logprobs=False),
    ],
    ids=["num_iterations=2", "steps_per_generation=2", "num_iterations=2-recompute-old-logps"],
)
def test_off_policy_steps(tmp_path, tiny_checkpoint, overrides):
    trainer, before = run_training(tmp_path, tiny_checkpoint, **overrides)
    assert_all_trainable_changed(trainer, before)
    assert_metrics(trainer)


@pytest.mark.parametrize("fast", [False, True], ids=["scored-entropies", "justgrpo-fast"])
def test_top_entropy_quantile(tmp_path, tiny_checkpoint, fast):
    trainer, before = run_training(tmp_path, tiny_checkpoint, top_entropy_quantile=0.5, justgrpo_fast=fast)
    assert_all_trainable_changed(trainer, before)
    assert_metrics(trainer)


def _model_with_scaled_head(checkpoint: str, stop_scale: float, other_scale: float = 1.0) -> torch.nn.Module:
    """The tiny LLaDA with the output-head rows of the stop tokens (and of all other tokens) scaled, to make rollouts
    end early more or less often. The random head gives every token a logit of about 0 +- 0.16."""
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    stop_ids = sorted(set(model.generation_config.eos_token_id) | {model.config.eos_token_id})
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        scale = torch.full((head.size(0), 1), other_scale)
        scale[stop_ids] = stop_scale
        head.mul_(scale)
    return model


def test_mask_truncated_completions_with_some_truncated(tmp_path, tiny_checkpoint, monkeypatch):
    scored_per_row = []
    original = JustGRPOTrainer._compute_loss

    def spy(self, model, inputs):
        scored_per_row.append(inputs["completion_mask"].sum(1))
        return original(self, model, inputs)

    monkeypatch.setattr(JustGRPOTrainer, "_compute_loss", spy)
    model = _model_with_scaled_head(tiny_checkpoint, stop_scale=25.0)  # stop logits +- 4: P(stop) varies widely
    # A small learning rate keeps the second step's rollouts a mix too: at 5e-3 the first update pushes P(stop) to
    # 0 or 1 (which one depends on the CPU's rounding); at 1e-4 seeds 0-4 all give a mix at both steps.
    trainer, before = run_training(
        tmp_path, model, mask_truncated_completions=True, per_device_train_batch_size=8, learning_rate=1e-4
    )
    scored = torch.cat(scored_per_row)
    assert (scored == 0).any() and (scored > 0).any(), scored  # truncated rows reach the scorer fully masked
    logs = assert_metrics(trainer)
    clipped = [log["completions/clipped_ratio"] for log in logs]
    assert all(0 < c < 1 for c in clipped), clipped  # a mix of finished and truncated rollouts at every step
    assert_all_trainable_changed(trainer, before)


def test_mask_truncated_completions_with_all_truncated(tmp_path, tiny_checkpoint):
    """Every rollout runs to max_completion_length: nothing is scored, the loss is 0 and no parameter moves, but the
    backward still runs (the scorer returns a graph-connected zero) and nothing is NaN."""
    # stop logits 0 against others of std 3.2: P(stop) ~ 3e-5 per draw, yet sampling stays diverse
    model = _model_with_scaled_head(tiny_checkpoint, stop_scale=0.0, other_scale=20.0)
    trainer, before = run_training(tmp_path, model, mask_truncated_completions=True, max_completion_length=16)
    logs = step_logs(trainer)
    assert [log["completions/clipped_ratio"] for log in logs] == [1.0, 1.0]
    assert all(log["frac_reward_zero_std"] < 1 for log in logs)  # advantages are non-zero, only the mask zeroes them
    assert all(log["loss"] == 0.0 and log["grad_norm"] == 0.0 for log in logs), logs
    assert all(torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())


def test_entropy_bonus(tmp_path, tiny_checkpoint):
    """`entropy_coef > 0` puts the entropies in the loss: their gradient must be finite (the mask entry is -inf)."""
    trainer, before = run_training(tmp_path, tiny_checkpoint, entropy_coef=0.01)
    assert_all_trainable_changed(trainer, before)
    assert_metrics(trainer)


@pytest.mark.parametrize("dataset", [plain_dataset, chat_dataset], ids=["plain", "conversational"])
def test_prompt_formats(tmp_path, tiny_checkpoint, dataset):
    seen = []

    def record(prompts, completions, **kwargs):
        seen.append((prompts[0], completions[0]))
        return ascii_fraction(prompts, completions)

    trainer, before = run_training(tmp_path, tiny_checkpoint, dataset=dataset(), reward_funcs=record)
    assert_all_trainable_changed(trainer, before)
    assert_metrics(trainer)
    prompt, completion = seen[0]
    if dataset is chat_dataset:
        assert prompt[0]["role"] == "user" and completion[0]["role"] == "assistant"
    else:
        assert isinstance(prompt, str) and isinstance(completion, str)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_ddp_script(output_dir, checkpoint, *flags: str) -> list[dict]:
    """Run `ddp_train_script.py` on 2 CPU processes; return what each rank saved."""
    script = Path(__file__).with_name("ddp_train_script.py")
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"),
        *("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
        *("--main_process_port", str(_free_port()), str(script), checkpoint, str(output_dir), *flags),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    return [torch.load(output_dir / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def test_ddp_two_processes(tmp_path, tiny_checkpoint):
    """`accelerate launch` with 2 CPU processes (torch.distributed, gloo): ranks see different prompts, all-reduced
    gradients keep their parameters identical, and every parameter moves."""
    ranks = launch_ddp_script(tmp_path, tiny_checkpoint)
    assert [r["world_size"] for r in ranks] == [2, 2] and all(r["ddp"] for r in ranks)
    assert set(ranks[0]["prompts"]) != set(ranks[1]["prompts"])  # otherwise equal parameters would prove nothing
    names = list(ranks[0]["after"])
    assert names == list(ranks[1]["after"]) and len(names) == len(ranks[0]["before"])
    for name in names:
        assert torch.equal(ranks[0]["before"][name], ranks[1]["before"][name]), name
        assert torch.equal(ranks[0]["after"][name], ranks[1]["after"][name]), f"ranks diverged: {name}"
        assert not torch.equal(ranks[0]["after"][name], ranks[0]["before"][name]), f"did not change: {name}"
    logs = [e for e in ranks[0]["log_history"] if "loss" in e and "train_loss" not in e]
    assert len(logs) == 2 and all("reward" in e and "entropy" in e for e in logs)


def test_ddp_a_nonfinite_loss_on_one_rank_skips_the_step_on_every_rank(tmp_path, tiny_checkpoint):
    """Rank 0's loss is NaN in step 2, rank 1's is finite. The decision to skip is taken across ranks: both skip
    step 2 (so each counts one skip, summed to 2 in the logs), and their parameters stay identical."""
    ranks = launch_ddp_script(tmp_path, tiny_checkpoint, "--nan_loss_on_rank0")
    logs = [e for e in ranks[0]["log_history"] if "loss" in e and "train_loss" not in e]
    assert [e["skipped_steps"] for e in logs] == [0, 2]
    for name in ranks[0]["after"]:
        assert torch.equal(ranks[0]["after"][name], ranks[1]["after"][name]), f"ranks diverged: {name}"
        assert torch.isfinite(ranks[0]["after"][name]).all(), name


def test_a_code_reward_run_learns_through_the_hardened_sandbox(tmp_path, tiny_checkpoint, single_thread):
    """20 fixed-seed steps through `code_reward` with every isolation layer required: the task is a program that
    prints nothing (stdin/stdout rows with empty output), which random byte tokens almost never are (a syntax
    error) and an early stop is. The mean reward of the last 5 steps must beat the first 5 by 0.4 (measured: 0.425
    -> 1.0)."""
    from conftest import load_stop_heavy

    from justgrpo_trl.grading.executor import LocalExecutor
    from justgrpo_trl.grading.isolation import IsolationUnavailable
    from justgrpo_trl.rewards import make_code_reward

    try:
        executor = LocalExecutor(2, require_full_isolation=True)
    except IsolationUnavailable:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("full sandbox isolation is unavailable here")
    model, _, _ = load_stop_heavy(tiny_checkpoint)
    n = 64
    dataset = Dataset.from_dict({"prompt": (PROMPTS * n)[:n], "inputs": [[""]] * n, "outputs": [[""]] * n})
    with executor:
        reward = make_code_reward(executor=executor, name="code_reward")
        trainer, _ = run_training(
            tmp_path,
            model,
            dataset=dataset,
            reward_funcs=[reward],
            max_steps=20,
            per_device_train_batch_size=8,
            num_generations=8,
        )
    rewards = [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]
    assert len(rewards) == 20
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert first < 0.6 and last - first >= 0.4, rewards
