"""Paper-exact (`objective='paper'`) vs efficient (`objective='paper_early_stop'`) JustGRPO on the demo's sort task.

    python benchmarks/paper_vs_efficient.py sft  --output_dir outputs/pve            # the SFT checkpoint (seed 0)
    python benchmarks/paper_vs_efficient.py grad --output_dir outputs/pve            # gradient cosine + cost ratio
    python benchmarks/paper_vs_efficient.py rl   --output_dir outputs/pve --objective paper --seed 1
    python benchmarks/paper_vs_efficient.py report --output_dir outputs/pve

`grad`: on the SFT checkpoint (and, for contrast, on the untrained model), one generation batch is sampled with
all L slots decoded; the paper's gradient (every slot) and the efficient gradient (the same rollouts cut at their
first end-of-text, same advantages and n_valid) are compared by cosine; rollouts with and without the early stop, and
the scoring forward+backward of both, are timed on the same prompts. `rl`: RL from the SFT checkpoint with one
objective and seed; the reward curve and the held-out greedy accuracy (exact match, and the dense position-match
score) before and after. Everything runs on CPU; set OMP_NUM_THREADS=1 on a shared machine.
"""

import argparse
import json
import os
import random
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed  # noqa: E402

from justgrpo_trl import JustGRPOConfig, JustGRPOTrainer  # noqa: E402
from justgrpo_trl.decoding import ar_decode  # noqa: E402
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
from justgrpo_trl.models import get_spec, resolve_special_tokens  # noqa: E402


def demo_config(output_dir: str, **overrides) -> DemoConfig:
    return DemoConfig.for_task("sort", output_dir=output_dir, **overrides)


def load(output_dir: str):
    path = Path(output_dir) / "sft"
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


def cmd_sft(args) -> None:
    config = demo_config(args.output_dir, seed=0)
    set_seed(0)
    train, held_out = splits_for(config, seed=0)
    model, tokenizer = build_model_and_tokenizer(config)
    sft = run_sft(model, tokenizer, noisy_teacher(train, config.teacher_noise, 0, "sort"), config)
    sft.model.save_pretrained(Path(args.output_dir) / "sft")
    tokenizer.save_pretrained(Path(args.output_dir) / "sft")
    scores = held_out_scores(sft.model, tokenizer, held_out, config.max_completion_length)
    (Path(args.output_dir) / "sft.json").write_text(json.dumps(scores, indent=2))
    print(scores)


def _trainer(model, tokenizer, config: DemoConfig, objective: str, prompts: list[str], answers: list[str]):
    args = JustGRPOConfig(
        output_dir="/tmp/pve-trainer",
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        per_device_train_batch_size=len(prompts),
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        objective=objective,
        loss_type="grpo",
        beta=0.0,
        temperature=1.0,
        logprob_chunk_size=config.logprob_chunk_size,
        gradient_checkpointing=False,
    )
    dataset = Dataset.from_dict({"prompt": prompts, "answer": answers})
    trainer = JustGRPOTrainer(
        model=model, reward_funcs=position_match_reward, args=args, train_dataset=dataset, processing_class=tokenizer
    )
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.train()
    return trainer


def _gradient(trainer, inputs) -> torch.Tensor:
    trainer.model.zero_grad()
    trainer.compute_loss(trainer.model, inputs).backward()
    return torch.cat([p.grad.flatten() for p in trainer.model.parameters()])


def cut_inputs(output: dict, stop_ids) -> dict:
    """The same rollouts as the efficient mode trains them: each completion up to its first stop token."""
    ids = output["completion_ids"]
    is_stop = torch.isin(ids, torch.tensor(list(stop_ids)))
    lengths = torch.where(is_stop.any(1), is_stop.long().argmax(1) + 1, ids.size(1))
    mask = (torch.arange(ids.size(1))[None] < lengths[:, None]).long()
    return {**output, "completion_mask": mask, "num_items_in_batch": mask.sum()}


def cmd_grad(args) -> None:
    config = demo_config(args.output_dir)
    train, _ = splits_for(config, seed=0)
    results = {}
    for label in ("sft_checkpoint", "untrained"):
        if label == "sft_checkpoint":
            model, tokenizer = load(args.output_dir)
        else:
            model, tokenizer = build_model_and_tokenizer(config)
        tokens = resolve_special_tokens(get_spec(model), tokenizer, model.config)
        cosines, costs = [], []
        for seed in range(args.batches):
            rng = random.Random(100 + seed)
            problems = rng.sample(train, config.rl_prompts_per_step)
            rows = [p for p, _ in problems for _ in range(config.num_generations)]
            answers = [a for _, a in problems for _ in range(config.num_generations)]
            paper = _trainer(model, tokenizer, config, "paper", rows, answers)
            efficient = _trainer(model, tokenizer, config, "paper_early_stop", rows, answers)
            torch.manual_seed(seed)
            output = paper._generate_and_score_completions([{"prompt": p, "answer": a} for p, a in zip(rows, answers)])
            cut = cut_inputs(output, tokens.stop_ids)
            t0 = time.perf_counter()
            g_paper = _gradient(paper, output)
            t1 = time.perf_counter()
            g_efficient = _gradient(efficient, cut)
            t2 = time.perf_counter()
            cosines.append(torch.nn.functional.cosine_similarity(g_paper, g_efficient, dim=0).item())
            prompt_ids = [tokenizer(text=p)["input_ids"] for p in rows]
            decode = dict(gen_length=config.max_completion_length, temperature=1.0, **tokens.decode_kwargs())
            with torch.no_grad():
                t3 = time.perf_counter()
                ar_decode(model, prompt_ids, stop_early=False, generator=torch.Generator().manual_seed(seed), **decode)
                t4 = time.perf_counter()
                early = ar_decode(model, prompt_ids, generator=torch.Generator().manual_seed(seed), **decode)
                t5 = time.perf_counter()
            costs.append(
                {
                    "rollout_s": {"paper": t4 - t3, "efficient": t5 - t4},
                    "rollout_forwards": {"paper": config.max_completion_length, "efficient": early.nfe},
                    "scoring_fwd_bwd_s": {"paper": t1 - t0, "efficient": t2 - t1},
                    "scored_tokens": {
                        "paper": int(output["completion_mask"].sum()),
                        "efficient": int(cut["completion_mask"].sum()),
                    },
                    "n_valid": float(output["paper_n_valid"][0]),
                }
            )
        results[label] = {"cosines": cosines, "costs": costs}
        print(label, "cosines", [round(c, 4) for c in cosines])
    (Path(args.output_dir) / "grad.json").write_text(json.dumps(results, indent=2))


def cmd_rl(args) -> None:
    config = demo_config(args.output_dir, seed=args.seed, objective=args.objective, rl_steps=args.rl_steps)
    train, held_out = splits_for(config, seed=0)
    model, tokenizer = load(args.output_dir)
    set_seed(args.seed)
    before = held_out_scores(model, tokenizer, held_out, config.max_completion_length)
    t0 = time.perf_counter()
    rl = run_rl(model, tokenizer, train, config)
    seconds = time.perf_counter() - t0
    after = held_out_scores(rl.model, tokenizer, held_out, config.max_completion_length)
    logs = [log for log in rl.state.log_history if "reward" in log]
    result = {
        "objective": args.objective,
        "seed": args.seed,
        "rl_steps": config.rl_steps,
        "before": before,
        "after": after,
        "reward_per_step": [log["reward"] for log in logs],
        "rl_seconds": seconds,
    }
    name = f"rl-{args.objective}-seed{args.seed}.json"
    (Path(args.output_dir) / name).write_text(json.dumps(result, indent=2))
    print(result["before"], result["after"], f"{seconds:.0f}s")


def cmd_report(args) -> None:
    out = Path(args.output_dir)
    grad = json.loads((out / "grad.json").read_text()) if (out / "grad.json").exists() else {}
    for label, entry in grad.items():
        cos = entry["cosines"]
        print(f"{label}: cosine mean {sum(cos) / len(cos):.4f}, min {min(cos):.4f} over {len(cos)} batches")
        for key in ("rollout_s", "scoring_fwd_bwd_s", "rollout_forwards", "scored_tokens"):
            paper = sum(c[key]["paper"] for c in entry["costs"])
            efficient = sum(c[key]["efficient"] for c in entry["costs"])
            print(f"  {key}: paper / efficient = {paper / efficient:.2f} ({paper:.3g} vs {efficient:.3g})")
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("rl-*.json"))]
    for objective in ("paper", "paper_early_stop"):
        mine = [r for r in runs if r["objective"] == objective]
        if not mine:
            continue
        steps = min(len(r["reward_per_step"]) for r in mine)
        mean = [sum(r["reward_per_step"][i] for r in mine) / len(mine) for i in range(steps)]
        blocks = [round(sum(mean[i : i + 5]) / len(mean[i : i + 5]), 3) for i in range(0, steps, 5)]
        after = [r["after"]["position_match"] for r in mine]
        average = sum(after) / len(after)
        spread = (sum((a - average) ** 2 for a in after) / max(1, len(after) - 1)) ** 0.5
        seconds = sum(r["rl_seconds"] for r in mine) / len(mine)
        print(f"{objective}: {len(mine)} seeds; mean reward per 5-step block {blocks}; held-out position match after")
        print(f"  RL {average:.3f} +- {spread:.3f} (sd over seeds); mean RL wall time {seconds:.0f}s")
        for r in mine:
            curve = r["reward_per_step"]
            k = max(1, len(curve) // 5)
            print(
                f"  seed {r['seed']}: reward first {k} steps {sum(curve[:k]) / k:.3f} -> last {k} "
                f"{sum(curve[-k:]) / k:.3f}; held-out exact {r['before']['exact_match']:.3f} -> "
                f"{r['after']['exact_match']:.3f}, position match {r['before']['position_match']:.3f} -> "
                f"{r['after']['position_match']:.3f}; {r['rl_seconds']:.0f}s"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("sft", "grad", "rl", "report"))
    parser.add_argument("--output_dir", default="outputs/paper_vs_efficient")
    parser.add_argument("--objective", default="paper", choices=("paper", "paper_early_stop"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rl_steps", type=int, default=30)
    parser.add_argument("--batches", type=int, default=3)
    args = parser.parse_args()
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    {"sft": cmd_sft, "grad": cmd_grad, "rl": cmd_rl, "report": cmd_report}[args.command](args)


if __name__ == "__main__":
    main()
