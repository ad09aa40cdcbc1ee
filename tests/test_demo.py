"""The embedded demo, shortened (`--quick`): it runs end to end and writes what it promises."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from justgrpo_trl.demo import (
    DemoConfig,
    exact_match_reward,
    make_problem,
    make_sort_problem,
    make_splits,
    noisy_teacher,
    parse_args,
    position_match_reward,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    """`python recipes/demo.py --quick` in a subprocess, exactly as a user runs it."""
    output_dir = tmp_path_factory.mktemp("demo")
    command = [sys.executable, str(REPO / "recipes" / "demo.py"), "--quick", "--output_dir", str(output_dir)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Held-out greedy accuracy" in result.stdout
    return output_dir


def test_quick_demo_writes_metrics(quick_run):
    metrics = json.loads((quick_run / "metrics.json").read_text())
    quick = DemoConfig.quick()
    assert metrics["seed"] == 0 and metrics["config"]["rl_steps"] == quick.rl_steps
    for key in ("before_rl", "after_rl", "delta"):
        assert 0.0 <= abs(metrics["accuracy"][key]) <= 1.0
    assert metrics["accuracy"]["delta"] == pytest.approx(
        metrics["accuracy"]["after_rl"] - metrics["accuracy"]["before_rl"]
    )
    assert len(metrics["rl"]["reward_per_step"]) == quick.rl_steps
    assert len(metrics["sft"]["loss_per_step"]) == quick.sft_steps
    assert metrics["num_eval"] == quick.num_eval
    for key in ("sft", "rl", "eval_before", "eval_after", "total"):
        assert metrics["timings_s"][key] >= 0


def test_quick_demo_checkpoint_reloads(quick_run):
    checkpoint = quick_run / "checkpoint"
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    ids = torch.tensor([tokenizer("3814=")["input_ids"]])
    logits = model(input_ids=ids, logits_to_keep=1).logits
    assert logits.shape == (1, 1, model.config.embedding_size) and torch.isfinite(logits).all()


def test_quick_demo_writes_a_png(quick_run):
    data = (quick_run / "demo.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_task_is_verifiable_and_splits_are_disjoint():
    import random

    prompt, answer = make_problem(random.Random(0), 4)
    digits = prompt.rstrip("=")
    assert len(digits) == 4 and digits.isdigit() and prompt.endswith("=") and answer == max(digits)
    train, held_out = make_splits(0, 4, 2000, 100)
    assert len(held_out) == 100 and not {p for p, _ in train} & {p for p, _ in held_out}
    assert make_splits(0, 4, 50, 10) == make_splits(0, 4, 50, 10)  # seeded
    assert exact_match_reward(["1234="] * 3, ["4", " 4 ", "1"], ["4"] * 3) == [1.0, 1.0, 0.0]


def test_noisy_teacher_answers_with_the_first_digit_about_half_the_time():
    train, _ = make_splits(0, 4, 4000, 10)
    noisy = noisy_teacher(train, 0.5, seed=0)
    assert [p for p, _ in noisy] == [p for p, _ in train]
    assert all(a in (p[0], max(p[:-1])) for p, a in noisy)
    informative = [(p, a) for p, a in noisy if p[0] != max(p[:-1])]  # rows where the two answers differ
    share_first = sum(a == p[0] for p, a in informative) / len(informative)
    assert 0.45 < share_first < 0.55 and len(informative) > 2000


def test_cli_flags():
    config = parse_args(["--quick", "--seed", "3", "--rl_steps", "5", "--output_dir", "x"])
    assert (config.seed, config.rl_steps, config.output_dir) == (3, 5, "x")
    assert config.sft_steps == DemoConfig.quick().sft_steps
    assert parse_args([]) == DemoConfig()


def test_sort_task_has_multi_token_answers_of_varied_length():
    import random

    rng = random.Random(0)
    problems = [make_sort_problem(rng, 8, 16) for _ in range(300)]
    for prompt, answer in problems:
        digits = prompt.rstrip("=")
        assert prompt.endswith("=") and 8 <= len(digits) <= 16
        assert answer == ",".join(sorted(digits))
    lengths = {len(answer) + 1 for _, answer in problems}  # one token per character, plus end-of-text
    assert min(lengths) == 16 and max(lengths) == 32 and len(lengths) == 9
    train, held_out = make_splits(0, 16, 500, 50, "sort", 8)
    assert not {p for p, _ in train} & {p for p, _ in held_out}
    noisy = noisy_teacher(train, 0.5, 0, "sort")
    assert all(a in (t, ",".join(p.rstrip("="))) for (p, a), (_, t) in zip(noisy, train))
    assert position_match_reward(None, ["1,2,3", "1,2", "3,2,1"], ["1,2,3"] * 3) == [1.0, 0.6, 0.6]


def test_cli_selects_the_sort_task_with_its_defaults():
    config = parse_args(["--task", "sort", "--seed", "2"])
    assert config == DemoConfig.for_task("sort", seed=2)
    assert (config.max_completion_length, config.min_digits, config.num_digits) == (32, 8, 16)
    assert parse_args(["--task", "sort", "--max_completion_length", "40"]).max_completion_length == 40
    assert parse_args(["--quick", "--task", "sort"]).task == "sort"
    with pytest.raises(ValueError, match="task"):
        DemoConfig(task="reverse")


def test_quick_sort_demo_runs_with_the_paper_objective(tmp_path, single_thread):
    from justgrpo_trl.demo import run_demo

    config = DemoConfig.quick("sort", output_dir=str(tmp_path), sft_steps=2, rl_steps=1, num_eval=8, objective="paper")
    metrics = run_demo(config)
    assert metrics["config"]["task"] == "sort" and len(metrics["rl"]["reward_per_step"]) == 1
    assert 0.0 <= metrics["accuracy"]["after_rl"] <= 1.0
    assert set(metrics["position_match"]) == {"before_rl", "after_rl"}  # the sort task's dense held-out score


def test_demo_trains_with_a_rollout_cache_and_justgrpo_fast(tmp_path, single_thread):
    """The demo's cache options reach the trainer: the RL rollouts are cached (r = 2) and corrected, which logs the
    importance-ratio metrics, under JustGRPO-Fast."""
    from justgrpo_trl.demo import build_model_and_tokenizer, run_rl

    flags = ["--rollout_cache", "dual", "--rollout_cache_refresh", "2", "--top_entropy_quantile", "0.25"]
    config = parse_args(["--quick", "--task", "sort", "--output_dir", str(tmp_path), "--rl_steps", "1", *flags])
    assert (config.rollout_cache, config.rollout_cache_refresh, config.top_entropy_quantile) == ("dual", 2, 0.25)
    model, tokenizer = build_model_and_tokenizer(config)
    train, _ = make_splits(0, config.num_digits, 16, 4, "sort", config.min_digits)
    trainer = run_rl(model, tokenizer, train, config)
    assert trainer.args.rollout_cache == "dual" and trainer.args.rollout_cache_refresh == 2
    assert trainer.args.justgrpo_fast and trainer.args.top_entropy_quantile == 0.25
    logged = trainer.state.log_history[0]
    assert (
        0.0 < logged["sampling/importance_sampling_ratio/mean"] and "sampling/sampling_logp_difference/mean" in logged
    )
    assert DemoConfig().rollout_cache == "" and not DemoConfig().top_entropy_quantile < 1  # off by default
