"""One optimizer step of `objective='paper'` on 2 processes, for
`tests/test_objectives.py::test_paper_objective_gradient_equals_the_reference_under_ddp`.

Launched once per rank by `accelerate launch`. Usage: `paper_ddp_script.py CHECKPOINT OUTPUT_DIR`. Each rank trains
one group of 4 completions (fp32, no gradient clipping) and writes `OUTPUT_DIR/rank{N}.pt`: the all-reduced gradient
just before the optimizer step, and the generation output it trained on (prompts, all L completion tokens,
advantages, n_valid).
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from justgrpo_trl import JustGRPOConfig, JustGRPOTrainer  # noqa: E402

KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages", "paper_n_valid")


def reward(prompts, completions, completion_ids, **kwargs):
    """The "hi" group always scores 1 (no valid sample on its rank); the other by answer length."""
    return [1.0 if p == "hi" else float(len(ids)) for p, ids in zip(prompts, completion_ids)]


class GradientCapture(TrainerCallback):
    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in kwargs["trainer"].model.named_parameters()}


def main(checkpoint: str, output_dir: str) -> None:
    args = JustGRPOConfig(
        output_dir=os.path.join(output_dir, "trainer"),
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        max_steps=1,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=10,
        temperature=0.7,
        objective="paper",
        loss_type="dr_grpo",
        max_grad_norm=0.0,
        logprob_chunk_size=7,
        gradient_checkpointing=False,
        seed=0,
        disable_tqdm=True,
    )
    trainer = JustGRPOTrainer(
        model=checkpoint,
        reward_funcs=reward,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["hi", "12 + 30 ="]}),
    )
    capture = GradientCapture()
    trainer.add_callback(capture)
    generated = []
    generate = trainer._generate_and_score_completions

    def record(inputs):
        output = generate(inputs)
        generated.append({key: output[key].detach().clone() for key in KEYS})
        return output

    trainer._generate_and_score_completions = record
    original = capture.on_pre_optimizer_step
    capture.on_pre_optimizer_step = lambda *a, **k: original(*a, trainer=trainer, **k)
    trainer.train()
    wrapped = trainer.model_wrapped if trainer.model_wrapped is not None else trainer.model
    torch.save(
        {
            "grads": capture.grads,
            "output": generated[0],
            "world_size": trainer.accelerator.num_processes,
            "ddp": isinstance(wrapped, DistributedDataParallel),
        },
        os.path.join(output_dir, f"rank{trainer.accelerator.process_index}.pt"),
    )
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
