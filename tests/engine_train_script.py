"""One SGD step of JustGRPO under whichever engine `accelerate launch` sets up (DDP, DeepSpeed ZeRO-2 or ZeRO-3), for
`tests/test_engines.py`.

Launched once per rank. Usage: `engine_train_script.py CHECKPOINT OUTPUT_DIR [--checkpointed] [--copy_out]`.
`--checkpointed` turns `chunked_backward` off; `--copy_out` makes each machine's first process copy its own
`OUTPUT_DIR/trainer` (which a test may have made a private disk) to `OUTPUT_DIR/machine_of_rank{N}`.

Every engine sees the same prompts and the same rollouts (fixed seed), so the updates must agree. Rank 0 keeps only
the first token of every completion and the other ranks keep theirs whole, so the ranks score very different numbers
of chunks: under ZeRO-2/3, where each chunk's backward (and under ZeRO-3 its forward) is collective, a rank that ran
fewer chunks than the others would hang. Two accumulation steps make the first micro-batch end without an optimizer
step and the second with one. Weights stay fp32 (`bf16=False`): DeepSpeed's bf16 keeps bf16 weights where DDP's
autocast keeps fp32 ones, and updates below a bf16 step would then differ.

The step saves `OUTPUT_DIR/trainer/checkpoint-1`; each rank writes `OUTPUT_DIR/rank{N}.pt` with its full parameters
after the step (gathered under ZeRO-3), the engine, the blocker of the chunked backward, and the chunk counts of each
`backward_chunk_by_chunk` call (real chunks, chunks run).
"""

import argparse
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402

import justgrpo_trl.trainer as trainer_module  # noqa: E402
from justgrpo_trl import JustGRPOConfig, JustGRPOTrainer  # noqa: E402

PROMPTS = ["hello", "the quick brown", "what is 12 + 30?", "fox", "Natalia sold clips", "def add(a, b):"]


def mean_codepoint(prompts, completions, **kwargs) -> list[float]:
    return [sum(map(ord, c)) / (100 * len(c)) if c else 0.0 for c in completions]


def main(
    checkpoint: str,
    output_dir: str,
    checkpointed: bool = False,
    save_on_each_node: bool = False,
    copy_out: bool = False,
) -> None:
    chunk_calls: list[tuple[int, int]] = []
    chunk_by_chunk = trainer_module.backward_chunk_by_chunk

    def counting_chunk_by_chunk(forward, canvases, token_loss, backward, no_sync, num_chunks=None):
        chunk_calls.append((len(canvases), max(num_chunks or 0, len(canvases), 1)))
        return chunk_by_chunk(forward, canvases, token_loss, backward, no_sync, num_chunks)

    trainer_module.backward_chunk_by_chunk = counting_chunk_by_chunk
    args = JustGRPOConfig(
        output_dir=os.path.join(output_dir, "trainer"),
        use_cpu=True,
        bf16=False,  # fp32 everywhere: DeepSpeed's bf16 keeps bf16 weights, where DDP's autocast keeps fp32 ones
        report_to="none",
        save_strategy="steps",
        save_steps=1,
        save_only_model=False,
        max_steps=1,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        num_generations=4,
        max_completion_length=8,
        logging_steps=1,
        optim="sgd",
        learning_rate=0.5,
        max_grad_norm=1e9,  # the update is then the plain gradient step, whatever each engine's clipping code does
        logprob_chunk_size=4,
        seed=0,
        disable_tqdm=True,
        chunked_backward=not checkpointed,
    )
    trainer = JustGRPOTrainer(
        model=checkpoint,
        reward_funcs=mean_codepoint,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS * 4}),
    )
    if trainer.accelerator.process_index == 0:
        generate = trainer._generate_single_turn

        def first_token_only(*gen_args, **gen_kwargs):
            completions, logprobs = generate(*gen_args, **gen_kwargs)
            return [c[:1] for c in completions], [lp[:1] for lp in logprobs]

        trainer._generate_single_turn = first_token_only
    trainer.train()
    wrapped = trainer.model_wrapped if trainer.model_wrapped is not None else trainer.model
    module = trainer.accelerator.unwrap_model(wrapped)
    params = list(module.named_parameters())
    zero3 = trainer.is_deepspeed_enabled and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3
    if zero3:
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in params]):
            after = {name: p.detach().clone() for name, p in params}
    else:
        after = {name: p.detach().clone() for name, p in params}
    engine = "ddp"
    if trainer.is_deepspeed_enabled:
        engine = f"zero{trainer.accelerator.state.deepspeed_plugin.zero_stage}"
    torch.save(
        {
            "after": after,
            "engine": engine,
            "world_size": trainer.accelerator.num_processes,
            "blocker": trainer._chunked_backward_blocker,
            "chunk_calls": chunk_calls,
            "log_history": trainer.state.log_history,
        },
        os.path.join(output_dir, f"rank{trainer.accelerator.process_index}.pt"),
    )
    trainer.accelerator.wait_for_everyone()
    if copy_out and trainer.accelerator.is_local_main_process:
        shutil.copytree(
            args.output_dir, os.path.join(output_dir, f"machine_of_rank{trainer.accelerator.process_index}")
        )
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("output_dir")
    for flag in ("--checkpointed", "--copy_out"):
        parser.add_argument(flag, action="store_true")
    main(**vars(parser.parse_args()))
