"""Recipes: the YAMLs carry the paper's values, and each recipe trains end to end on the tiny model (CPU, 2 steps)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM
from trl import ModelConfig, TrlParser

from justgrpo_trl import JustGRPOConfig, LLaDAModelLM

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
ACCELERATE_CONFIGS = Path(__file__).resolve().parent.parent / "accelerate_configs"


def load_recipe_module():
    spec = importlib.util.spec_from_file_location("recipe_train", RECIPES / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("recipe", ["gsm8k", "math", "code"])
def test_yaml_carries_the_paper_hyperparameters(recipe, monkeypatch):
    module = load_recipe_module()
    # `use_cpu` only because bf16 validation needs a GPU otherwise; every other value comes from the YAML.
    monkeypatch.setattr("sys.argv", ["train.py", "--config", str(RECIPES / f"{recipe}.yaml"), "--use_cpu", "true"])
    script_args, args, model_args = TrlParser(
        (module.RecipeArguments, JustGRPOConfig, ModelConfig)
    ).parse_args_and_config()
    assert script_args.task == recipe
    assert model_args.model_name_or_path == "GSAI-ML/LLaDA-8B-Instruct"
    assert args.num_generations == 16
    prompts_per_step_on_8_gpus = 8 * args.per_device_train_batch_size * args.gradient_accumulation_steps // 16
    assert prompts_per_step_on_8_gpus == 64
    assert args.max_steps == 125
    assert args.learning_rate == 5e-6 and args.lr_scheduler_type == "constant"
    assert (args.adam_beta1, args.adam_beta2, args.weight_decay, args.max_grad_norm) == (0.9, 0.999, 0.0, 1.0)
    assert args.beta == 0.0 and args.epsilon == 0.2 and args.num_iterations == 1
    assert args.loss_type == "grpo" and args.scale_rewards == "group" and args.objective == "paper"
    assert args.temperature == 1.0 and args.max_completion_length == 256 and args.bf16


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


TINY_ROWS = {
    "gsm8k": [
        {"question": f"What is {a} + {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}
        for a, b in [(1, 2), (30, 12)]
    ],
    "math": [
        {"problem": "Compute $1/2 + 1/4$.", "solution": "It is $\\boxed{\\frac{3}{4}}$."},
        {"problem": "What is $2^3$?", "solution": "$2^3 = \\boxed{8}$"},
    ],
    "code": [
        {"question": "Add two numbers.", "test_cases": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"]},
        {"question": "Square a number.", "test_cases": ["assert square(3) == 9"]},
    ],
}


@pytest.mark.parametrize(("recipe", "beta"), [("gsm8k", 0.04), ("math", 0.0), ("code", 0.0)])
def test_recipe_trains_two_steps_and_writes_a_checkpoint_that_reloads(recipe, beta, tiny_checkpoint, tmp_path):
    data = write_jsonl(tmp_path / f"{recipe}.jsonl", TINY_ROWS[recipe] * 2)
    output_dir = tmp_path / "out"
    overrides = {
        "model_name_or_path": tiny_checkpoint,
        "dataset_path": data,
        "output_dir": str(output_dir),
        "max_steps": 2,
        "save_steps": 2,
        "num_generations": 4,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "max_completion_length": 8,
        "logprob_chunk_size": 8,
        "beta": beta,
        "objective": "trl" if beta else "paper",  # the paper's objective has no KL term
        "learning_rate": 1e-3,
        "use_cpu": True,
        "bf16": False,
        "dtype": "float32",
        "gradient_checkpointing": False,
    }
    argv = ["--config", str(RECIPES / f"{recipe}.yaml")]
    for key, value in overrides.items():
        argv += [f"--{key}", str(value)]
    trainer = load_recipe_module().main(argv)

    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 2
    expected = {"reward", "entropy", "completions/mean_length"} | ({"kl"} if beta else set())
    assert expected <= set(logs[0]), set(logs[0])
    assert trainer.state.global_step == 2
    for directory in (output_dir / "checkpoint-2", output_dir):
        reloaded = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
        assert isinstance(reloaded, LLaDAModelLM)
        for name, param in trainer.model.named_parameters():
            torch.testing.assert_close(reloaded.get_parameter(name), param.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["ddp", "zero2", "zero3", "fsdp", "multinode_zero2"])
def test_accelerate_configs_are_valid(name):
    import yaml

    config = yaml.safe_load((ACCELERATE_CONFIGS / f"{name}.yaml").read_text())
    assert config["mixed_precision"] == "bf16"
    assert config["num_processes"] == 8 * config["num_machines"]
    if name == "fsdp":
        assert config["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"] == LLaDAModelLM._no_split_modules[0]
    if "zero" in name:
        assert config["deepspeed_config"]["zero_stage"] == int(name.split("zero")[1][0])


@pytest.mark.parametrize(
    ("recipe", "expected"),
    [
        (
            "gsm8k_diffu_grpo",
            dict(estimator="diffu_grpo", lora_r=128, lora_alpha=64, learning_rate=3e-6, beta=0.04, epsilon=0.5,
                 num_iterations=12, num_generations=6, block_length=32, diffusion_steps=128, p_mask_prompt=0.15),
        ),
        (
            "gsm8k_agrpo",
            dict(estimator="agrpo", lora_r=64, lora_alpha=64, lora_dropout=0.0, learning_rate=5e-6,
                 lr_scheduler_type="cosine", warmup_steps=0.01, adam_beta2=0.99, weight_decay=0.01, beta=0.0,
                 num_generations=8, agrpo_num_steps=24, agrpo_step_sampler="entropy", agrpo_objective="reference",
                 scale_rewards="none",
                 max_completion_length=384, block_length=12, diffusion_steps=128, remasking="random",
                 temperature=0.6, seed=333),
        ),
    ],
)  # fmt: skip
def test_comparison_recipes_carry_each_papers_values(recipe, expected, monkeypatch):
    module = load_recipe_module()
    argv = ["train.py", "--config", str(RECIPES / f"{recipe}.yaml"), "--use_cpu", "true"]
    monkeypatch.setattr("sys.argv", argv)
    script_args, args, model_args = TrlParser(
        (module.RecipeArguments, JustGRPOConfig, ModelConfig)
    ).parse_args_and_config()
    assert model_args.use_peft and script_args.task == "gsm8k"
    for name, value in expected.items():
        got = getattr(model_args, name) if name.startswith("lora") else getattr(args, name)
        assert got == value, (name, got, value)
