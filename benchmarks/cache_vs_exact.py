"""RL with cached rollouts against exact rollouts on the demo's long sort task (answers of 65 to 79 tokens).

    python benchmarks/cache_vs_exact.py sft --output_dir outputs/cve      # SFT checkpoint (seed 0) + held_out.json
    python benchmarks/bench_rollout_cache.py --skip_speed --fidelity_checkpoint outputs/cve/sft --json fid.json
    python benchmarks/cache_vs_exact.py rl --output_dir outputs/cve --seed 1                       # exact rollouts
    python benchmarks/cache_vs_exact.py rl --output_dir outputs/cve --seed 1 --cache dual --refresh 4
    python benchmarks/cache_vs_exact.py report --output_dir outputs/cve

The task is the demo's sort task (`justgrpo_trl.demo`) with 33 to 40 digits, so every answer runs to `2n - 1 >= 65`
tokens plus end-of-text on a canvas of L = 80: the "trained multi-token model" on which the rollout cache's fidelity
is measured. `rl` trains from the shared SFT checkpoint with one seed, with exact rollouts or with a cache (and its
importance correction, on by default), and records the reward curve, the held-out greedy scores (exact match and
the dense position-match score, 200 prompts) before and after, the wall time, and the importance-ratio metrics the
trainer logs. `report` prints the comparison over seeds. CPU only; set OMP_NUM_THREADS=1 on a shared machine.
"""

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from justgrpo_trl.demo import (  # noqa: E402
    DemoConfig,
    build_model_and_tokenizer,
    held_out_scores,
    noisy_teacher,
    position_match_reward,
    run_rl,
    run_sft,
    splits_for,
)

# The sort task with answers of 65 to 79 tokens (33 to 40 digits); the rest is the demo's sort preset, with a longer
# SFT and a wider model so that the answers are mostly sorted.
LONG_SORT = dict(min_digits=33, num_digits=40, max_completion_length=80, d_model=128, mlp_hidden_size=512,
                 sft_steps=1000, sft_batch_size=32, sft_learning_rate=2e-3, rl_steps=20, rl_prompts_per_step=4,
                 num_generations=8, rl_learning_rate=1e-4, num_eval=200, logprob_chunk_size=80,
                 top_entropy_quantile=0.25)  # fmt: skip
RATIO_METRICS = ("sampling/importance_sampling_ratio/mean", "sampling/importance_sampling_ratio/min",
                 "sampling/importance_sampling_ratio/max", "sampling/importance_sampling_ratio/clipped_fraction",
                 "sampling/sampling_logp_difference/mean")  # fmt: skip


def long_sort_config(output_dir: str, **overrides) -> DemoConfig:
    return DemoConfig.for_task("sort", output_dir=output_dir, **{**LONG_SORT, **overrides})


@torch.no_grad()
def sampled_score(model, tokenizer, held_out: list[tuple[str, str]], gen_length: int, seed: int = 0) -> float:
    """Mean position-match score of one exact AR rollout per held-out prompt at temperature 1 (the policy RL
    trains), with a fixed sampling seed."""
    from justgrpo_trl.decoding import ar_decode
    from justgrpo_trl.models import get_spec, resolve_special_tokens

    tokens = resolve_special_tokens(get_spec(model), tokenizer, model.config)
    model.eval()
    prompt_ids = [tokenizer(text=prompt)["input_ids"] for prompt, _ in held_out]
    output = ar_decode(
        model, prompt_ids, gen_length=gen_length, temperature=1.0, generator=torch.Generator().manual_seed(seed),
        **tokens.decode_kwargs(),
    )  # fmt: skip
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in output.completion_ids]
    scores = position_match_reward(None, texts, [answer for _, answer in held_out])
    return sum(scores) / len(scores)


def scores(model, tokenizer, held_out, gen_length: int) -> dict[str, float]:
    """Held-out greedy scores (exact match, position match) and the sampled position-match score."""
    return {
        **held_out_scores(model, tokenizer, held_out, gen_length),
        "sampled_position_match": sampled_score(model, tokenizer, held_out, gen_length),
    }


def cmd_sft(args) -> None:
    config = long_sort_config(args.output_dir, seed=0)
    set_seed(0)
    train, held_out = splits_for(config, seed=0)
    model, tokenizer = build_model_and_tokenizer(config)
    t0 = time.perf_counter()
    sft = run_sft(model, tokenizer, noisy_teacher(train, config.teacher_noise, 0, "sort"), config)
    seconds = time.perf_counter() - t0
    path = Path(args.output_dir) / "sft"
    sft.model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    meta = {"held_out": held_out, "max_completion_length": config.max_completion_length}
    (path / "held_out.json").write_text(json.dumps(meta))  # read by bench_rollout_cache.py --fidelity_checkpoint
    result = {**scores(sft.model, tokenizer, held_out, config.max_completion_length), "sft_seconds": seconds}
    (Path(args.output_dir) / "sft.json").write_text(json.dumps(result, indent=2))
    print(result)


def run_name(cache: str, refresh: int) -> str:
    return "exact" if not cache else f"{cache}-r{refresh}"


def cmd_rl(args) -> None:
    config = long_sort_config(
        args.output_dir, seed=args.seed, rl_steps=args.rl_steps, rollout_cache=args.cache,
        rollout_cache_refresh=args.refresh,
    )  # fmt: skip
    train, held_out = splits_for(config, seed=0)
    path = Path(args.output_dir) / "sft"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    before_file = Path(args.output_dir) / "sft.json"
    before = json.loads(before_file.read_text()) if before_file.exists() else None
    set_seed(args.seed)
    t0 = time.perf_counter()
    rl = run_rl(model, tokenizer, train, config)
    seconds = time.perf_counter() - t0
    after = scores(rl.model, tokenizer, held_out, config.max_completion_length)
    logs = [log for log in rl.state.log_history if "reward" in log]
    result = {
        "setting": run_name(args.cache, args.refresh),
        "seed": args.seed,
        "rl_steps": config.rl_steps,
        "before": before,
        "after": after,
        "reward_per_step": [log["reward"] for log in logs],
        "ratio_metrics_per_step": {key: [log.get(key) for log in logs] for key in RATIO_METRICS},
        "rl_seconds": seconds,
    }
    name = f"rl-{result['setting']}-seed{args.seed}"
    (Path(args.output_dir) / f"{name}.json").write_text(json.dumps(result, indent=2))
    rl.model.save_pretrained(Path(args.output_dir) / name)  # for the fidelity after RL (bench_rollout_cache.py)
    tokenizer.save_pretrained(Path(args.output_dir) / name)
    (Path(args.output_dir) / name / "held_out.json").write_text((path / "held_out.json").read_text())
    print(result["before"], result["after"], f"{seconds:.0f}s")


def _mean_sd(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, (sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)) ** 0.5


def _by_setting(runs: list[dict]) -> dict[str, list[dict]]:
    """Runs grouped by setting, exact first."""
    names = sorted(dict.fromkeys(r["setting"] for r in runs), key=lambda name: (name != "exact", name))
    return {name: sorted((r for r in runs if r["setting"] == name), key=lambda r: r["seed"]) for name in names}


def cmd_report(args) -> None:
    """The comparison over seeds (printed) and `cache_vs_exact.png` (reward curves and held-out scores)."""
    out = Path(args.output_dir)
    groups = _by_setting([json.loads(p.read_text()) for p in sorted(out.glob("rl-*.json"))])
    sft = json.loads((out / "sft.json").read_text()) if (out / "sft.json").exists() else None
    if sft:
        print(f"after SFT: held-out greedy position match {sft['position_match']:.3f}, "
              f"exact {sft['exact_match']:.3f}, "
              f"sampled position match {sft.get('sampled_position_match', float('nan')):.3f}")  # fmt: skip
    for setting, mine in groups.items():
        steps = min(len(r["reward_per_step"]) for r in mine)
        curve = [sum(r["reward_per_step"][i] for r in mine) / len(mine) for i in range(steps)]
        blocks = [round(sum(curve[i : i + 5]) / len(curve[i : i + 5]), 3) for i in range(0, steps, 5)]
        print(f"{setting}: seeds {[r['seed'] for r in mine]}; mean reward per 5-step block {blocks}")
        for key in ("position_match", "sampled_position_match", "exact_match"):
            mean, sd = _mean_sd([r["after"][key] for r in mine])
            print(f"  held-out {key} after RL: {mean:.3f} +- {sd:.3f} (sd over seeds)")
        print(f"  mean RL wall time {_mean_sd([r['rl_seconds'] for r in mine])[0]:.0f}s")
        if any(v is not None for v in mine[0]["ratio_metrics_per_step"][RATIO_METRICS[0]]):
            for key in RATIO_METRICS:
                values = [v for r in mine for v in r["ratio_metrics_per_step"][key] if v is not None]
                first = [r["ratio_metrics_per_step"][key][0] for r in mine]
                last = [r["ratio_metrics_per_step"][key][-1] for r in mine]
                print(f"  {key}: mean {sum(values) / len(values):.4f} (first step {sum(first) / len(first):.4f}, "
                      f"last {sum(last) / len(last):.4f})")  # fmt: skip
        for r in mine:
            after = r["after"]
            print(f"    seed {r['seed']}: greedy position match {after['position_match']:.3f}, sampled "
                  f"{after['sampled_position_match']:.3f}, {r['rl_seconds']:.0f}s")  # fmt: skip
    plot_report(groups, sft, out / "cache_vs_exact.png")


def plot_report(groups: dict[str, list[dict]], sft: dict | None, path: Path) -> None:
    """Left: the mean rollout reward per step of each setting, with its spread over seeds. Right: each seed's held-out
    greedy position match after RL, per setting, with the SFT checkpoint's as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    for index, (setting, mine) in enumerate(groups.items()):
        steps = min(len(r["reward_per_step"]) for r in mine)
        per_step = torch.tensor([r["reward_per_step"][:steps] for r in mine])
        mean, sd = per_step.mean(0), per_step.std(0) if len(mine) > 1 else torch.zeros(steps)
        x = range(1, steps + 1)
        left.plot(x, mean, label=f"{setting} ({len(mine)} seeds)", color=f"C{index}")
        left.fill_between(x, mean - sd, mean + sd, color=f"C{index}", alpha=0.15)
        scores = [r["after"]["position_match"] for r in mine]
        right.scatter([index] * len(scores), scores, color=f"C{index}")
        right.errorbar(index + 0.15, *_mean_sd(scores)[:1], yerr=_mean_sd(scores)[1], fmt="_", color=f"C{index}")
    if sft:
        right.axhline(sft["position_match"], color="gray", linestyle="--", label="after SFT")
        right.legend(loc="lower right")
    left.set(xlabel="RL step", ylabel="mean rollout reward (position match)", title="Reward (mean +- sd over seeds)")
    left.legend(loc="lower right")
    right.set_xticks(range(len(groups)), list(groups))
    right.set(ylabel="held-out greedy position match", title="After RL, per seed")
    fig.suptitle("JustGRPO-Fast on the long sort task: exact against cached rollouts")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


def main() -> None:
    hf_logging.set_verbosity_warning()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("sft", "rl", "report"))
    parser.add_argument("--output_dir", default="outputs/cache_vs_exact")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rl_steps", type=int, default=LONG_SORT["rl_steps"])
    parser.add_argument("--cache", default="", choices=("", "dual", "prefix"), help="'' = exact rollouts.")
    parser.add_argument("--refresh", type=int, default=4)
    args = parser.parse_args()
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    {"sft": cmd_sft, "rl": cmd_rl, "report": cmd_report}[args.command](args)


if __name__ == "__main__":
    main()
