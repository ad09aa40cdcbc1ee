"""CPU demo: a tiny LLaDA built from nothing, a few JustGRPO steps, and a greedy AR-order generation.

    python recipes/demo.py

No network, no GPU: the model and tokenizer are created locally (see `justgrpo_trl.models.tiny`).
"""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402

from justgrpo_trl import JustGRPOConfig, JustGRPOTrainer  # noqa: E402
from justgrpo_trl.decoding import ar_decode  # noqa: E402
from justgrpo_trl.models.tiny import save_tiny_checkpoint  # noqa: E402


def count_sevens(prompts, completions, **kwargs) -> list[float]:
    """A toy verifiable reward: the share of characters that are '7'."""
    return [c.count("7") / max(len(c), 1) for c in completions]


def main() -> None:
    torch.manual_seed(0)
    workdir = tempfile.mkdtemp(prefix="justgrpo-demo-")
    checkpoint = save_tiny_checkpoint(os.path.join(workdir, "tiny-llada"))
    dataset = Dataset.from_dict({"prompt": ["Write sevens:", "7 7 7", "Say 7:", "Numbers:"] * 8})
    args = JustGRPOConfig(
        output_dir=os.path.join(workdir, "out"),
        per_device_train_batch_size=8,
        num_generations=8,
        max_completion_length=12,
        learning_rate=3e-3,
        max_steps=4,
        logging_steps=1,
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
    )
    trainer = JustGRPOTrainer(model=str(checkpoint), reward_funcs=count_sevens, args=args, train_dataset=dataset)
    trainer.train()
    rewards = [log["reward"] for log in trainer.state.log_history if "reward" in log]
    print("reward per step:", [round(r, 3) for r in rewards])

    tokens, tokenizer = trainer.special_tokens, trainer.processing_class
    prompt = tokenizer("Write sevens:")["input_ids"]
    output = ar_decode(
        trainer.model.eval(),
        [prompt],
        gen_length=12,
        mask_id=tokens.mask_id,
        stop_ids=tokens.stop_ids,
        pad_id=tokens.pad_id,
        temperature=0.0,
    )
    print("greedy completion:", repr(tokenizer.decode(output.completion_ids[0], skip_special_tokens=True)))
    print(f"outputs in {workdir}")


if __name__ == "__main__":
    main()
