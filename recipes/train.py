"""Train a masked diffusion LM with JustGRPO (or another estimator) on a task: the entry point of every recipe.

    accelerate launch --config_file accelerate_configs/zero2.yaml recipes/train.py --config recipes/gsm8k.yaml

Any YAML value can be overridden on the command line (`--max_steps 10`). `recipes/gsm8k.py` is this script.
"""

import os
import sys
from dataclasses import dataclass, field

from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config

from justgrpo_trl import JustGRPOConfig, JustGRPOTrainer
from justgrpo_trl.tasks import TASKS, get_task, load_task_dataset


@dataclass
class RecipeArguments(ScriptArguments):
    """Which task to train on, and where its data comes from."""

    task: str = field(default="gsm8k", metadata={"help": f"Task: one of {sorted(TASKS)}."})
    dataset_path: str | None = field(
        default=None,
        metadata={"help": "Local .jsonl/.parquet file (or hub id) instead of the task's default data set."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})


def resume_argument(value: str | bool | None) -> str | bool | None:
    """`--resume_from_checkpoint true` means "the last checkpoint in output_dir" (`Trainer.train(True)`); the CLI
    hands it over as the string "true", which `Trainer.train` would take for a path. Other strings are paths."""
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "no", "0", "none", ""):
        return None
    return value


def main(argv: list[str] | None = None) -> JustGRPOTrainer:
    parser = TrlParser((RecipeArguments, JustGRPOConfig, ModelConfig))
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    script_args, training_args, model_args = parser.parse_args_and_config()
    task = get_task(script_args.task)
    train_dataset = load_task_dataset(
        script_args.task,
        dataset_path=script_args.dataset_path or script_args.dataset_name,
        split=script_args.dataset_train_split,
        max_samples=script_args.max_train_samples,
        dataset_config=script_args.dataset_config,
    )
    training_args.model_init_kwargs = {
        "dtype": model_args.dtype,
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        **(training_args.model_init_kwargs or {}),
    }
    trainer = JustGRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=list(task.reward_funcs),
        args=training_args,
        train_dataset=train_dataset,
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=resume_argument(training_args.resume_from_checkpoint))
    trainer.save_model(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_path or task.dataset_name)
    trainer.accelerator.wait_for_everyone()
    return trainer


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Destroy the process group before interpreter shutdown, which can otherwise abort a rank after a good run.
    main().accelerator.end_training()
