"""One SGD step of JustGRPO under DDP or FSDP2 on CPU processes, for `tests/test_engines.py`.

    accelerate launch --multi_gpu --num_processes 2 tests/fsdp_train_script.py CHECKPOINT OUTPUT_DIR {ddp|fsdp2}

Accelerate drops FSDP on CPU (`use_cpu` runs plain DDP), so for `fsdp2` this script switches the accelerator's state
back to FSDP after accelerate has built it, with the plugin the Trainer made from `fsdp`/`fsdp_config`: the model is
then sharded with torch's `fully_shard` over gloo, as on GPUs over NCCL. Rank 0 writes `OUTPUT_DIR/result.pt`: the
full parameters after the step (gathered), and the engine that ran; each rank writes its completion lengths. The
step's checkpoint is saved under `OUTPUT_DIR/trainer/checkpoint-1`.
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import accelerate.state  # noqa: E402
import torch  # noqa: E402
from accelerate.utils import DistributedType  # noqa: E402
from datasets import Dataset  # noqa: E402

from justgrpo_trl import JustGRPOConfig, JustGRPOTrainer  # noqa: E402

# Rank 0 gets prompts whose completions stop early, rank 1 prompts that run long (see `lengths_reward`): the ranks'
# rollouts then need very different numbers of forwards, which FSDP's collective gathers must survive.
PROMPTS = ["hello", "the quick brown", "what is 12 + 30?", "fox"]


def force_fsdp_on_cpu() -> None:
    init = accelerate.state.AcceleratorState.__init__

    def init_keeping_fsdp(self, *args, fsdp_plugin=None, **kwargs):
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            # AcceleratorState copies PartialState's fields at every instantiation: switch both
            accelerate.state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin

    accelerate.state.AcceleratorState.__init__ = init_keeping_fsdp


def main(checkpoint: str, output_dir: str, engine: str) -> None:
    engine_args = {}
    if engine == "fsdp2":
        force_fsdp_on_cpu()
        engine_args = dict(
            fsdp="full_shard",
            fsdp_config={
                "fsdp_version": 2,
                "transformer_layer_cls_to_wrap": ["LLaDABlock"],
                "reshard_after_forward": True,
                "state_dict_type": "FULL_STATE_DICT",
            },
        )
    lengths: list[int] = []

    def lengths_reward(prompts, completion_ids, **kwargs):
        lengths.extend(len(c) for c in completion_ids)
        return [float(len(c) % 3) + 0.1 * i for i, c in enumerate(completion_ids)]

    args = JustGRPOConfig(
        output_dir=os.path.join(output_dir, "trainer"),
        use_cpu=True,
        report_to="none",
        save_strategy="steps",
        save_steps=1,
        save_only_model=True,
        max_steps=1,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=16,
        logging_steps=1,
        learning_rate=0.1,
        optim="sgd",
        max_grad_norm=0.0,
        logprob_chunk_size=5,
        seed=0,
        bf16=False,
        gradient_checkpointing=False,
        disable_tqdm=True,
        **engine_args,
    )
    trainer = JustGRPOTrainer(
        model=checkpoint,
        reward_funcs=lengths_reward,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS * 4}),
    )
    trainer.train()
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if trainer.accelerator.is_main_process:
        torch.save(
            {
                "after": {name: value.detach().clone().float() for name, value in state.items()},
                "engine": str(trainer.accelerator.distributed_type),
                "fsdp": trainer.is_fsdp_enabled,
                "log_history": trainer.state.log_history,
            },
            os.path.join(output_dir, "result.pt"),
        )
    torch.save(lengths, os.path.join(output_dir, f"lengths{trainer.accelerator.process_index}.pt"))
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main(*sys.argv[1:4])
