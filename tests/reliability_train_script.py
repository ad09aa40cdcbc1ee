"""A small JustGRPO run for the reliability tests, launched under `accelerate launch` (2 CPU processes).

    python -m accelerate.commands.launch --multi_gpu --num_processes 2 tests/reliability_train_script.py \
        CHECKPOINT OUTPUT_DIR MAX_STEPS [--kill_at_step N] [--resume] [--flaky_rewards]

Writes OUTPUT_DIR/log_history.json (rank 0) when training ends. `--kill_at_step N` SIGKILLs rank 0 in the middle of
step N (inside its reward function); `--flaky_rewards` adds a reward that is sometimes slow and sometimes raises.
"""

import argparse
import json
import os
import random
import signal
import time

from datasets import Dataset

from justgrpo_trl import JustGRPOConfig, JustGRPOTrainer


def ascii_share(prompts, completions, **kwargs):
    return [sum(32 <= ord(ch) < 127 for ch in c) / max(len(c), 1) for c in completions]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("output_dir")
    parser.add_argument("max_steps", type=int)
    parser.add_argument("--kill_at_step", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--flaky_rewards", action="store_true")
    options = parser.parse_args()

    def killer(prompts, completions, trainer_state, **kwargs):
        if options.kill_at_step is not None and trainer_state.global_step + 1 == options.kill_at_step:
            if os.environ.get("RANK", "0") == "0":
                os.kill(os.getpid(), signal.SIGKILL)  # a crash in the middle of a step
        return [0.0] * len(completions)

    flaky_random = random.Random(int(os.environ.get("RANK", "0")))

    def flaky(prompts, completions, **kwargs):
        if flaky_random.random() < 0.3:
            time.sleep(0.05)
        if flaky_random.random() < 0.2:
            raise RuntimeError("grader backend unavailable")
        return [float(len(c) % 3) for c in completions]

    rewards = [ascii_share, killer] + ([flaky] if options.flaky_rewards else [])
    prompts = ["hello", "the quick brown fox", "12 + 30 =", "def add(a, b):", "Numbers:", "Say 7:", "x", "ab"]
    args = JustGRPOConfig(
        output_dir=options.output_dir,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=6,
        max_steps=options.max_steps,
        learning_rate=5e-3,
        logging_steps=1,
        save_steps=2,
        save_strategy="steps",
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        seed=7,
        reward_errors="skip" if options.flaky_rewards else "raise",
        dataloader_num_workers=0,
    )
    trainer = JustGRPOTrainer(
        model=options.checkpoint, reward_funcs=rewards, args=args, train_dataset=Dataset.from_dict({"prompt": prompts})
    )
    trainer.train(resume_from_checkpoint=True if options.resume else None)
    if trainer.accelerator.is_main_process:
        with open(os.path.join(options.output_dir, "log_history.json"), "w") as f:
            json.dump(trainer.state.log_history, f)
    # Leave together and tear the process group down before the interpreter exits: left to interpreter shutdown, a
    # gloo group can abort a rank ("terminate called without an active exception") after a successful run.
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main()
