"""Two-step JustGRPO run for the multi-process test (`tests/test_trainer_runs.py::test_ddp_two_processes`).

Launched once per rank by `accelerate launch`/`torchrun`. Usage: `ddp_train_script.py CHECKPOINT OUTPUT_DIR
[--nan_loss_on_rank0]`; the flag makes rank 0's loss NaN in the second step (rank 1's stays finite).
Each rank writes `OUTPUT_DIR/rank{N}.pt` with its parameters before and after training, the prompts its reward
function saw, the world size, and whether the model was wrapped in DDP.
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from justgrpo_trl import JustGRPOConfig, JustGRPOTrainer  # noqa: E402

PROMPTS = ["hello", "the quick brown", "what is 12 + 30?", "fox", "Natalia sold clips", "def add(a, b):"]


def main(checkpoint: str, output_dir: str, nan_loss_on_rank0: bool = False) -> None:
    seen_prompts: list[str] = []

    def mean_codepoint(prompts, completions, **kwargs):
        seen_prompts.extend(prompts)
        return [sum(map(ord, c)) / (100 * len(c)) if c else 0.0 for c in completions]

    args = JustGRPOConfig(
        output_dir=os.path.join(output_dir, "trainer"),
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
    trainer = JustGRPOTrainer(
        model=checkpoint,
        reward_funcs=mean_codepoint,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS * 4}),
    )
    if nan_loss_on_rank0 and trainer.accelerator.process_index == 0:
        compute_loss = trainer._compute_loss

        def nan_in_second_step(model, inputs):
            loss = compute_loss(model, inputs)
            return loss * float("nan") if trainer.state.global_step == 1 else loss

        trainer._compute_loss = nan_in_second_step
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    wrapped = trainer.model_wrapped if trainer.model_wrapped is not None else trainer.model
    after = {name: p.detach().clone() for name, p in trainer.accelerator.unwrap_model(wrapped).named_parameters()}
    torch.save(
        {
            "before": before,
            "after": after,
            "prompts": seen_prompts,
            "world_size": trainer.accelerator.num_processes,
            "ddp": isinstance(wrapped, DistributedDataParallel),
            "log_history": trainer.state.log_history,
        },
        os.path.join(output_dir, f"rank{trainer.accelerator.process_index}.pt"),
    )
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()  # destroy the process group before interpreter shutdown


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], nan_loss_on_rank0="--nan_loss_on_rank0" in sys.argv[3:])
