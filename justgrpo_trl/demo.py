"""The embedded CPU demo: masked SFT, then JustGRPO, on a tiny LLaDA built from nothing, with a verifiable task.

    python recipes/demo.py            # or: justgrpo-demo
    python recipes/demo.py --quick    # a few steps, for tests

Steps, all offline on CPU: build a character-level tokenizer and a tiny LLaDA; generate a synthetic, verifiable task
(`--task max`, the default: the largest of four digits, `"3814="` -> `"8"`; `--task sort`: 8 to 16 digits written
out sorted, comma-separated, `"93814="` -> `"1,3,4,8,9"`, answers of 16 to 32 tokens with end-of-text); warm-start
the model with masked-diffusion SFT (`MaskedDiffusionSFTTrainer`, LLaDA's end-of-text fill) on a noisy teacher that
sometimes follows a wrong rule (the first digit; the digits left unsorted); measure greedy AR-order accuracy on
held-out prompts; train with `JustGRPOTrainer` and a verifiable reward (exact match; for sort, the share of matching
positions); measure again. SFT imitates the teacher's mixture; RL with a verifiable reward moves towards the rule.
Writes `metrics.json`, the final checkpoint (reloadable with `AutoModelForCausalLM`) and `demo.png` (reward curve and
the before/after accuracy) into `--output_dir`.
"""

import argparse
import json
import os
import platform
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from datasets import (
    Dataset,  # noqa: E402
    disable_progress_bars,  # noqa: E402
)
from tqdm.auto import tqdm  # noqa: E402
from transformers import PreTrainedTokenizerFast, TrainerCallback, set_seed  # noqa: E402
from transformers.trainer_callback import PrinterCallback, ProgressCallback  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from .decoding import ar_decode  # noqa: E402
from .models import get_spec, resolve_special_tokens  # noqa: E402
from .models.tiny import build_tiny_llada, build_tokenizer  # noqa: E402
from .sft import MaskedDiffusionSFTConfig, MaskedDiffusionSFTTrainer  # noqa: E402

TASK_ALPHABET = "0123456789+=,"
TASKS = ("max", "sort")
# Settings a task changes unless they are given explicitly: the sort task's answers are 16 to 32 tokens long, so the
# canvas, the model's context and the batch sizes differ from the one-digit task's.
TASK_DEFAULTS: dict[str, dict] = {
    "max": {},
    "sort": dict(
        min_digits=8, num_digits=16, max_completion_length=32, d_model=64, n_layers=4, n_heads=4,
        mlp_hidden_size=256, teacher_noise=0.25, sft_steps=600, sft_batch_size=32, sft_learning_rate=2e-3,
        rl_steps=30, rl_prompts_per_step=4, num_generations=8, rl_learning_rate=5e-5, num_eval=200,
        logprob_chunk_size=64,
    ),
}  # fmt: skip


@dataclass
class DemoConfig:
    """Everything that defines a demo run; saved in `metrics.json`."""

    seed: int = field(default=0, metadata={"help": "Seeds the task, the model init, SFT and RL."})
    output_dir: str = field(default="outputs/demo", metadata={"help": "Where metrics.json, demo.png, checkpoint go."})
    # task
    task: str = field(
        default="max",
        metadata={
            "help": "'max': answer the largest of num_digits digits (one token). 'sort': write the digits sorted, "
            "comma-separated (min_digits to num_digits digits: answers of 16 to 32 tokens with the defaults)."
        },
    )
    num_digits: int = field(default=4, metadata={"help": "Digits per prompt (sort: the most digits)."})
    min_digits: int = field(default=4, metadata={"help": "sort: the fewest digits per prompt."})
    max_digit: int = field(default=9, metadata={"help": "sort: digits are drawn from 0 to max_digit."})
    teacher_noise: float = field(
        default=0.5,
        metadata={
            "help": "Share of SFT answers in which the teacher is wrong: the first digit (max), the digits in prompt "
            "order (sort)."
        },
    )
    num_eval: int = field(default=500, metadata={"help": "Held-out prompts for the greedy accuracy."})
    max_completion_length: int = field(default=2, metadata={"help": "Canvas length L: the answer digit + EOS fill."})
    # model
    d_model: int = field(default=256, metadata={"help": "Tiny LLaDA width."})
    n_layers: int = field(default=4, metadata={"help": "Tiny LLaDA depth."})
    n_heads: int = field(default=4, metadata={"help": "Attention heads."})
    mlp_hidden_size: int = field(default=1024, metadata={"help": "SwiGLU hidden size."})
    # masked SFT
    sft_steps: int = field(default=300, metadata={"help": "Masked-diffusion SFT optimizer steps."})
    sft_batch_size: int = field(default=128, metadata={"help": "SFT sequences per step."})
    sft_learning_rate: float = field(default=1e-3, metadata={"help": "SFT peak learning rate (cosine decay)."})
    # JustGRPO
    rl_steps: int = field(default=60, metadata={"help": "JustGRPO optimizer steps."})
    rl_prompts_per_step: int = field(default=16, metadata={"help": "Prompts per RL step."})
    num_generations: int = field(default=8, metadata={"help": "Completions per prompt (GRPO group size)."})
    rl_learning_rate: float = field(default=1e-4, metadata={"help": "JustGRPO constant learning rate."})
    temperature: float = field(default=1.0, metadata={"help": "Rollout temperature."})
    logprob_chunk_size: int = field(default=128, metadata={"help": "Scoring canvases per forward."})
    objective: str = field(
        default="trl",
        metadata={"help": "JustGRPOConfig.objective: 'trl' (loss_type grpo), 'paper' or 'paper_early_stop'."},
    )
    sft_normalizer: str = field(
        default="llada", metadata={"help": "MaskedDiffusionSFTConfig.loss_normalizer: 'llada' or 'd1'."}
    )
    top_entropy_quantile: float = field(
        default=1.0,
        metadata={"help": "Below 1: JustGRPO-Fast, training only this share of highest-entropy tokens (paper: 0.25)."},
    )
    rollout_cache: str = field(
        default="",
        metadata={"help": "JustGRPOConfig.rollout_cache for the RL rollouts: '' (off, exact), 'dual' or 'prefix'."},
    )
    rollout_cache_refresh: int = field(default=4, metadata={"help": "JustGRPOConfig.rollout_cache_refresh (r)."})

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}.")
        if self.task == "sort" and not 2 <= self.min_digits <= self.num_digits:
            raise ValueError(f"sort needs 2 <= min_digits <= num_digits, got {self.min_digits}, {self.num_digits}.")

    @classmethod
    def for_task(cls, task: str = "max", **overrides) -> "DemoConfig":
        """The task's defaults (`TASK_DEFAULTS`), then `overrides`."""
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
        return cls(**{**TASK_DEFAULTS[task], "task": task, **overrides})

    @classmethod
    def quick(cls, task: str = "max", **overrides) -> "DemoConfig":
        """A run of a few steps on a smaller model (tests): checks the plumbing, not the learning."""
        small = dict(
            num_eval=32, d_model=64, n_layers=2, mlp_hidden_size=128, sft_steps=4, sft_batch_size=16, rl_steps=2,
            rl_prompts_per_step=4, num_generations=4,
        )  # fmt: skip
        return cls.for_task(task, **{**small, **overrides})


# ----------------------------------------------------------------------------------------------------------------
# Task
# ----------------------------------------------------------------------------------------------------------------


def make_problem(rng: random.Random, num_digits: int) -> tuple[str, str]:
    """One problem: `num_digits` random digits, answered by the largest, `"3814="` -> `"8"`."""
    digits = [rng.randrange(10) for _ in range(num_digits)]
    return "".join(map(str, digits)) + "=", str(max(digits))


def make_sort_problem(rng: random.Random, min_digits: int, max_digits: int, max_digit: int = 9) -> tuple[str, str]:
    """One sorting problem: `min_digits` to `max_digits` random digits (0 to `max_digit`), answered by the same digits
    in ascending order, comma-separated: `"93814="` -> `"1,3,4,8,9"` (`2n - 1` answer tokens, plus end-of-text)."""
    digits = [rng.randrange(max_digit + 1) for _ in range(rng.randint(min_digits, max_digits))]
    return "".join(map(str, digits)) + "=", ",".join(map(str, sorted(digits)))


def _wrong_answer(prompt: str, task: str) -> str:
    """The noisy teacher's wrong rule: the first digit (max), or the digits written out in prompt order (sort)."""
    return prompt[0] if task == "max" else ",".join(prompt.rstrip("="))


def noisy_teacher(train: list[tuple[str, str]], noise: float, seed: int, task: str = "max") -> list[tuple[str, str]]:
    """The SFT data: with probability `noise` the teacher follows the wrong rule (`_wrong_answer`) instead."""
    rng = random.Random(seed + 2)
    return [(prompt, _wrong_answer(prompt, task) if rng.random() < noise else answer) for prompt, answer in train]


def make_splits(
    seed: int,
    num_digits: int,
    num_train: int,
    num_eval: int,
    task: str = "max",
    min_digits: int | None = None,
    max_digit: int = 9,
) -> tuple[list, list]:
    """Disjoint train and held-out `(prompt, answer)` lists: held-out prompts never appear in training."""
    rng = random.Random(seed)

    def problem() -> tuple[str, str]:
        if task == "sort":
            return make_sort_problem(rng, min_digits or num_digits, num_digits, max_digit)
        return make_problem(rng, num_digits)

    held_out: dict[str, str] = {}
    while len(held_out) < num_eval:
        prompt, answer = problem()
        held_out[prompt] = answer
    train = []
    while len(train) < num_train:
        prompt, answer = problem()
        if prompt not in held_out:
            train.append((prompt, answer))
    return train, list(held_out.items())


def splits_for(config: DemoConfig, seed: int | None = None) -> tuple[list, list]:
    """`make_splits` for `config`'s task: one training problem per SFT sequence, `num_eval` held out. `seed` defaults
    to `config.seed`; the benchmarks fix it so that every RL seed sees the same task."""
    num_train = config.sft_steps * config.sft_batch_size
    return make_splits(
        config.seed if seed is None else seed, config.num_digits, num_train, config.num_eval, config.task,
        config.min_digits, config.max_digit,
    )  # fmt: skip


def position_match_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """The sort task's dense reward: the share of character positions where the completion (stripped) agrees with the
    answer, over the longer of the two; 1 exactly when the completion is the answer. A tiny model rarely sorts 8 to 16
    digits exactly at first, so an exact-match reward alone would leave most groups without signal."""
    rewards = []
    for completion, gold in zip(completions, answer):
        text = completion.strip()
        rewards.append(sum(a == b for a, b in zip(text, gold)) / max(len(text), len(gold), 1))
    return rewards


def exact_match_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """1 if the completion (special tokens stripped) is exactly the answer, else 0: a verifiable reward."""
    return [1.0 if completion.strip() == gold else 0.0 for completion, gold in zip(completions, answer)]


# ----------------------------------------------------------------------------------------------------------------
# Model and evaluation
# ----------------------------------------------------------------------------------------------------------------


def build_model_and_tokenizer(config: DemoConfig):
    """A character-level tokenizer (byte-level BPE with no merges: every digit is one token) and a tiny LLaDA."""
    tokenizer = build_tokenizer(TASK_ALPHABET, vocab_size=256)
    model = build_tiny_llada(
        tokenizer,
        seed=config.seed,
        d_model=config.d_model,
        n_layers=config.n_layers,
        n_heads=config.n_heads,
        n_kv_heads=config.n_heads,
        mlp_hidden_size=config.mlp_hidden_size,
        max_sequence_length=64 if config.task == "max" else 2 * (config.num_digits + 2 + config.max_completion_length),
    )
    return model, tokenizer


@torch.no_grad()
def greedy_accuracy(
    model, tokenizer: PreTrainedTokenizerFast, problems: list[tuple[str, str]], gen_length: int, batch_size: int = 256
) -> tuple[float, list[dict]]:
    """Greedy AR-order decoding (`ar_decode`, temperature 0) of every held-out prompt; exact-match accuracy."""
    tokens = resolve_special_tokens(get_spec(model), tokenizer, model.config)
    was_training = model.training
    model.eval()
    correct, samples = 0, []
    for start in tqdm(range(0, len(problems), batch_size), desc="greedy eval", leave=False):
        batch = problems[start : start + batch_size]
        prompt_ids = [tokenizer(text=prompt)["input_ids"] for prompt, _ in batch]
        output = ar_decode(model, prompt_ids, gen_length=gen_length, temperature=0.0, **tokens.decode_kwargs())
        for (prompt, answer), ids in zip(batch, output.completion_ids):
            text = tokenizer.decode(ids, skip_special_tokens=True).strip()
            correct += text == answer
            samples.append({"prompt": prompt, "answer": answer, "completion": text})
    model.train(was_training)
    return correct / len(problems), samples


def mean_position_match(samples: list[dict]) -> float:
    """The mean dense score (`position_match_reward`) of `greedy_accuracy`'s samples: the informative held-out
    score on the sort task, where a tiny model rarely gets a whole answer right."""
    dense = position_match_reward(None, [s["completion"] for s in samples], [s["answer"] for s in samples])
    return sum(dense) / len(dense)


def held_out_scores(model, tokenizer, held_out: list[tuple[str, str]], gen_length: int) -> dict[str, float]:
    """Greedy held-out scores: exact match and the mean position match."""
    exact, samples = greedy_accuracy(model, tokenizer, held_out, gen_length)
    return {"exact_match": exact, "position_match": mean_position_match(samples)}


# ----------------------------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------------------------


def _common_args(config: DemoConfig, stage: str) -> dict:
    return dict(
        output_dir=str(Path(config.output_dir) / stage),
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        activation_checkpointing=False,
        dataloader_num_workers=0,
    )


class StageProgress(TrainerCallback):
    """One progress bar per training stage, with the latest metrics as its postfix (instead of a printed dict per
    logging step)."""

    def __init__(self, desc: str, keys: dict[str, str]):
        self.desc, self.keys, self.bar = desc, keys, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = tqdm(total=state.max_steps, desc=self.desc, dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        shown = {label: f"{logs[key]:.3f}" for key, label in self.keys.items() if key in (logs or {})}
        if self.bar is not None and shown:
            self.bar.set_postfix(shown, refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        self.bar.close()


def _quiet_progress(trainer, desc: str, keys: dict[str, str]) -> None:
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(StageProgress(desc, keys))


def run_sft(model, tokenizer, train: list[tuple[str, str]], config: DemoConfig):
    """Masked-diffusion SFT on the training problems; returns the trainer (its log history holds the losses)."""
    dataset = Dataset.from_dict({"prompt": [p for p, _ in train], "completion": [a for _, a in train]})
    args = MaskedDiffusionSFTConfig(
        **_common_args(config, "sft"),
        max_steps=config.sft_steps,
        per_device_train_batch_size=config.sft_batch_size,
        learning_rate=config.sft_learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, config.sft_steps // 20),
        weight_decay=0.0,
        max_completion_length=config.max_completion_length,
        fill_completions=True,
        loss_normalizer=config.sft_normalizer,
    )
    trainer = MaskedDiffusionSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    _quiet_progress(trainer, "masked SFT", {"loss": "loss"})
    trainer.train()
    return trainer


def run_rl(model, tokenizer, train: list[tuple[str, str]], config: DemoConfig):
    """JustGRPO with the exact-match reward on training prompts; returns the trainer."""
    from .trainer import JustGRPOConfig, JustGRPOTrainer  # imports TRL

    rng = random.Random(config.seed + 1)
    problems = rng.sample(train, min(len(train), config.rl_steps * config.rl_prompts_per_step))
    dataset = Dataset.from_dict({"prompt": [p for p, _ in problems], "answer": [a for _, a in problems]})
    args = JustGRPOConfig(
        **_common_args(config, "rl"),
        max_steps=config.rl_steps,
        per_device_train_batch_size=config.rl_prompts_per_step * config.num_generations,
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        learning_rate=config.rl_learning_rate,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        loss_type="grpo",  # TRL defaults to "dapo"; under objective="paper*" the paper's weights replace it
        objective=config.objective,
        beta=0.0,
        temperature=config.temperature,
        logprob_chunk_size=config.logprob_chunk_size,
        top_entropy_quantile=config.top_entropy_quantile,
        justgrpo_fast=config.top_entropy_quantile < 1.0,
        rollout_cache=config.rollout_cache or None,
        rollout_cache_refresh=config.rollout_cache_refresh,
    )
    reward = exact_match_reward if config.task == "max" else position_match_reward
    trainer = JustGRPOTrainer(
        model=model, reward_funcs=reward, args=args, train_dataset=dataset, processing_class=tokenizer
    )
    _quiet_progress(trainer, "JustGRPO", {"reward": "reward", "entropy": "entropy"})
    trainer.train()
    return trainer


# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------


def plot(metrics: dict, path: Path) -> None:
    """Reward per RL step (with a moving average) and the held-out accuracy before and after RL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rewards = metrics["rl"]["reward_per_step"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [2, 1]})
    steps = range(1, len(rewards) + 1)
    left.plot(steps, rewards, color="tab:blue", alpha=0.35, label="mean reward")
    window = max(1, len(rewards) // 10)
    if len(rewards) >= window:
        smooth = [sum(rewards[max(0, i - window + 1) : i + 1]) / len(rewards[max(0, i - window + 1) : i + 1])
                  for i in range(len(rewards))]  # fmt: skip
        left.plot(steps, smooth, color="tab:blue", label=f"moving average ({window})")
    dense = "position_match" in metrics  # the sort task: a dense score, next to which exact match stays near 0
    reward_name = "position match" if dense else "exact match"
    left.set(xlabel="JustGRPO step", ylabel=f"reward ({reward_name})", title="Rollout reward", ylim=(-0.02, 1.02))
    left.legend(loc="best")
    held_out = metrics["position_match" if dense else "accuracy"]
    before, after = held_out["before_rl"], held_out["after_rl"]
    bars = right.bar(["after SFT\n(before RL)", "after JustGRPO"], [before, after], color=["tab:gray", "tab:green"])
    right.bar_label(bars, labels=[f"{100 * v:.1f}%" for v in (before, after)])
    right.set(ylabel=f"held-out greedy {reward_name}", title="Held-out score", ylim=(0, 1.12))
    fig.suptitle(f"JustGRPO on a tiny LLaDA, {metrics['task']} (seed {metrics['seed']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_table(metrics: dict) -> None:
    accuracy = metrics["accuracy"]
    rows = [
        ("after masked SFT (before RL)", accuracy["before_rl"]),
        ("after JustGRPO", accuracy["after_rl"]),
        ("change", accuracy["after_rl"] - accuracy["before_rl"]),
    ]
    n = metrics["num_eval"]
    print(f"\nHeld-out greedy accuracy ({n} prompts, seed {metrics['seed']}):")
    print(f"  {'stage':<30} {'accuracy':>9}")
    for name, value in rows:
        sign = "+" if name == "change" and value >= 0 else ""
        print(f"  {name:<30} {sign}{100 * value:>7.1f}%")
    if "position_match" in metrics:
        match = metrics["position_match"]
        print(f"  held-out greedy position match: {100 * match['before_rl']:.1f}% -> {100 * match['after_rl']:.1f}%")
    timings = metrics["timings_s"]
    print(f"Time: SFT {timings['sft']:.0f}s, RL {timings['rl']:.0f}s, total {timings['total']:.0f}s\n")


# ----------------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------------


def run_demo(config: DemoConfig) -> dict:
    """The whole demo; returns the metrics written to `output_dir/metrics.json`."""
    start = time.perf_counter()
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    set_seed(config.seed)
    timings = {}

    train, held_out = splits_for(config)
    model, tokenizer = build_model_and_tokenizer(config)
    print(f"[demo] tiny LLaDA: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"{len(train)} SFT problems, {len(held_out)} held-out prompts")  # fmt: skip

    print("[demo] 1/4 masked-diffusion SFT")
    t0 = time.perf_counter()
    sft = run_sft(model, tokenizer, noisy_teacher(train, config.teacher_noise, config.seed, config.task), config)
    timings["sft"] = time.perf_counter() - t0
    model = sft.model

    print("[demo] 2/4 greedy accuracy before RL")
    t0 = time.perf_counter()
    before, before_samples = greedy_accuracy(model, tokenizer, held_out, config.max_completion_length)
    timings["eval_before"] = time.perf_counter() - t0
    print(f"[demo] accuracy before RL: {100 * before:.1f}%")

    print("[demo] 3/4 JustGRPO")
    t0 = time.perf_counter()
    rl = run_rl(model, tokenizer, train, config)
    timings["rl"] = time.perf_counter() - t0
    model = rl.model

    print("[demo] 4/4 greedy accuracy after RL")
    t0 = time.perf_counter()
    after, samples = greedy_accuracy(model, tokenizer, held_out, config.max_completion_length)
    timings["eval_after"] = time.perf_counter() - t0

    checkpoint = output_dir / "checkpoint"
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    timings["total"] = time.perf_counter() - start

    rl_logs = [log for log in rl.state.log_history if "reward" in log]
    metrics = {
        "task": describe_task(config),
        "seed": config.seed,
        "num_eval": len(held_out),
        "accuracy": {"before_rl": before, "after_rl": after, "delta": after - before},
        "sft": {"loss_per_step": [log["loss"] for log in sft.state.log_history if "loss" in log]},
        "rl": {
            "reward_per_step": [log["reward"] for log in rl_logs],
            "reward_std_per_step": [log.get("reward_std") for log in rl_logs],
            "frac_reward_zero_std_per_step": [log.get("frac_reward_zero_std") for log in rl_logs],
        },
        "samples_after_rl": samples[:10],
        "config": asdict(config),
        "timings_s": timings,
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
        },
        "checkpoint": str(checkpoint),
    }
    if config.task == "sort":  # exact match stays near 0 there; the dense score is the informative one
        metrics["position_match"] = {
            "before_rl": mean_position_match(before_samples),
            "after_rl": mean_position_match(samples),
        }
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot(metrics, output_dir / "demo.png")
    print_table(metrics)
    print(f"[demo] wrote {output_dir / 'metrics.json'}, {output_dir / 'demo.png'} and {checkpoint}/")
    return metrics


def describe_task(config: DemoConfig) -> str:
    what = (
        f"largest of {config.num_digits} digits"
        if config.task == "max"
        else f"sorting {config.min_digits}-{config.num_digits} digits"
    )
    return f"{what}, SFT teacher wrong {config.teacher_noise:.0%} of the time"


def parse_args(argv: list[str] | None = None) -> DemoConfig:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="A few steps on a smaller model (for tests).")
    for f in fields(DemoConfig):
        parser.add_argument(f"--{f.name}", type=type(f.default), default=None, help=f.metadata.get("help"))
    args = vars(parser.parse_args(argv))
    quick = args.pop("quick")
    overrides = {k: v for k, v in args.items() if v is not None}
    task = overrides.pop("task", "max")
    return DemoConfig.quick(task, **overrides) if quick else DemoConfig.for_task(task, **overrides)


def main(argv: list[str] | None = None) -> None:
    """Console entry point (`justgrpo-demo`, `python recipes/demo.py`); returns None: `sys.exit(main())` gives 0."""
    hf_logging.set_verbosity_warning()
    disable_progress_bars()  # the dataset maps are instant; keep the training bars readable
    run_demo(parse_args(argv))


if __name__ == "__main__":
    main()
