"""Smoke test of `benchmarks/bench_justgrpo.py` on the tiny model: it runs, reports every phase, and ours and the
naive baseline agree exactly. No timing is asserted (timings are what the benchmark reports, not what it checks)."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from justgrpo_bench import measure, report, run, workload  # noqa: E402


@pytest.fixture(scope="module")
def bench():
    """The benchmark's public functions, by the names the tests use."""
    return SimpleNamespace(
        run=run.run,
        format_report=report.format_report,
        draw_lengths=workload.draw_lengths,
        measure_peak_profiler=measure.measure_peak_profiler,
    )


def test_benchmark_runs_and_reports(bench, tmp_path):
    out = tmp_path / "bench.json"
    argv = ["--model", "tiny", "--batch_size", "4", "--prompt_length", "6", "--gen_length", "10"]
    argv += ["--chunk_size", "3", "8", "--repeats", "1", "--warmup", "0", "--threads", "1"]
    argv += ["--memory", "profiler", "--json", str(out), "--quiet"]
    report = bench.run(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert set(report) == {"config", "results", "ratios", "checks", "targets"}

    cfg = report["config"]
    lengths = cfg["lengths"]
    assert len(lengths) == 4 and all(1 <= n <= 10 for n in lengths)
    assert cfg["valid_tokens"] == sum(lengths)
    assert 0 < cfg["fast_selected"] < cfg["valid_tokens"]

    phases = {"rollout/baseline", "rollout/ours", "scoring/baseline"}
    for c in (3, 8):
        phases |= {f"scoring/ours[c={c}]", f"scoring/fast[q=0.25,c={c}]", f"scoring/ckpt[c={c}]"}
    results = report["results"]
    assert set(results) == phases
    for name, r in results.items():
        assert r["time_s"] > 0 and r["tokens_per_s"] > 0 and len(r["wall_times_s"]) == len(r["cpu_times_s"]) == 1, name
        assert r["peak_memory_bytes"] is not None and r["model_flops"] > 0, name
        assert r["mfu"] is None  # no --peak_tflops on CPU
    assert set(report["ratios"]) == phases - {"rollout/baseline", "scoring/baseline"}
    assert all(v["speedup"] > 0 and v["memory"] is not None for v in report["ratios"].values())

    # Forward-pass accounting: the baseline runs every position for every row; ours only the valid (row, position)
    # pairs, each once; the checkpointed path runs each scored canvas twice (forward + recompute).
    valid, batch, gen = sum(lengths), 4, 10
    assert results["rollout/baseline"]["calls"] == gen and results["rollout/baseline"]["canvases"] == batch * gen
    assert results["rollout/ours"]["calls"] == max(lengths) and results["rollout/ours"]["canvases"] == valid
    assert results["scoring/baseline"]["canvases"] == batch * gen
    assert results["scoring/ours[c=3]"]["canvases"] == valid
    assert results["scoring/ours[c=3]"]["calls"] == -(-valid // 3)
    assert results["scoring/ckpt[c=3]"]["canvases"] == 2 * valid
    assert results["scoring/ckpt[c=8]"]["calls"] == 2 * -(-valid // 8)
    assert results["scoring/fast[q=0.25,c=8]"]["canvases"] == cfg["fast_selected"]
    assert results["rollout/ours"]["logit_rows"] == valid  # one logit row per decoded token, never [B, S, V]

    # Equal log-probs and gradients (fp32): ours, checkpointed and fast against the per-position baseline, and the
    # rollout's recorded sampling log-probs against the exact scores (what reuse_sampling_logprobs relies on).
    checks = report["checks"]
    assert checks["rollout_sampling_logps_vs_baseline_exact_max_abs"] < 1e-5
    for key, value in checks.items():
        assert value < 1e-5, key
    assert any("grad_rel_err" in key for key in checks)

    assert {"rollout >= 2x", "scoring c=3 >= 2.5x", "fast c=8 >= 3x"} <= set(report["targets"])
    assert all(t["met"] in (True, False) for t in report["targets"].values())
    text = bench.format_report(report)
    assert "scoring/fast[q=0.25,c=3]" in text and "speedup" in text


def test_reference_baseline_and_lengths(bench):
    """The `reference` baseline runs; drawn lengths average ~0.6 of gen_length; the forced stop holds."""
    generator = torch.Generator().manual_seed(0)
    lengths = bench.draw_lengths(4096, 256, 0.6, generator)
    assert abs(lengths.float().mean().item() / 256 - 0.6) < 0.02
    assert int(lengths.min()) >= 32 and int(lengths.max()) <= 256

    argv = ["--model", "tiny", "--batch_size", "3", "--prompt_length", "5", "--gen_length", "6", "--chunk_size", "4"]
    argv += [
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--memory",
        "off",
        "--baseline",
        "reference",
        "--no-checkpointed",
        "--quiet",
    ]
    report = bench.run(argv)
    assert report["config"]["baseline"] == "reference"
    assert all(r["peak_memory_bytes"] is None for r in report["results"].values())
    assert report["checks"]["scoring/ours[c=4] logps_max_abs_diff"] < 1e-5


def test_profiler_peak_counts_live_tensors(bench):
    def allocate():
        a = torch.ones(1 << 20)  # 4 MiB
        b = a * 2  # 8 MiB live
        del a
        return (b + 1).sum()  # b and b + 1 live: 8 MiB again

    peak = bench.measure_peak_profiler(allocate)
    assert 8 << 20 <= peak < 9 << 20


def test_rollout_cache_phase_runs_and_reports(tiny_checkpoint, tmp_path):
    """The cache phase on the tiny model: speed of every setting next to the exact rollout, and fidelity on a
    checkpoint (here the untrained tiny one, with a held-out prompt list beside it). Nothing is timed-asserted."""
    import json
    import shutil

    from justgrpo_bench import cache

    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, checkpoint)
    (checkpoint / "held_out.json").write_text(
        json.dumps({"held_out": [["12=", "1,2"], ["93=", "3,9"]], "max_completion_length": 8})
    )
    argv = ["--model", "tiny", "--batch_size", "2", "--prompt_length", "8", "--gen_length", "16", "--window", "8"]
    argv += ["--offsets", "0", "8", "--refresh", "2", "4", "--fidelity_checkpoint", str(checkpoint)]
    threads = torch.get_num_threads()
    try:
        report = cache.run(argv + ["--json", str(tmp_path / "cache.json")])
    finally:
        torch.set_num_threads(threads)
    assert set(report["speed"]) == {"exact"} | {
        f"{kind}/r={r}" for kind in ("prefix/recompute", "dual/recompute", "dual/append") for r in (2, 4)
    }
    assert report["speed"]["exact"]["speedup"] == 1.0 and report["memory"]["cache_bytes"] > 0
    for result in report["fidelity"].values():
        assert result["tokens"] > 0 and result["kl"] >= 0.0
    assert "| dual/append/r=4 |" in cache.format_table(report)


def test_rollout_cache_fidelity_is_zero_for_the_exact_rollout_and_positive_for_a_stale_cache(tiny_checkpoint):
    """The fidelity measure pairs each slot's cached distribution with the exact one on the same prefix: with every
    step a refresh (r = 1) they are the same distributions (KL 0, every ratio 1); with r = 4 on an untrained model
    the cache is stale and both show it. A row misaligned between the sampler's forwards and the exact ones (rows
    leave the batch at their stop token) would break the first assertion."""
    from justgrpo_bench import cache
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from justgrpo_trl.cached_decoding import RolloutCache
    from justgrpo_trl.models import get_spec, resolve_special_tokens

    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    tokens = resolve_special_tokens(get_spec(model), tokenizer, model.config)
    prompts = ["12=", "9381=", "5=", "77="]
    exact = cache.fidelity(model, tokenizer, tokens, prompts, 12, RolloutCache("dual", 1), seed=3)
    stale = cache.fidelity(model, tokenizer, tokens, prompts, 12, RolloutCache("dual", 4), seed=3)
    assert exact["tokens"] > len(prompts) and exact["kl"] < 1e-10 and exact["kl_max"] < 1e-9 and exact["kl_se"] < 1e-9
    assert abs(exact["ratio_p01"] - 1) < 1e-5 and abs(exact["ratio_p99"] - 1) < 1e-5
    assert stale["kl"] > 1e-6 and stale["ratio_std"] > 1e-4


def test_cache_vs_exact_report_groups_runs_by_setting(tmp_path, capsys):
    """`cache_vs_exact.py report`: runs grouped by setting (exact first), held-out mean and sample sd over seeds, the
    ratio metrics only for cached settings, and the plot written."""
    import cache_vs_exact

    def run(setting, seed, match, ratio):
        after = {"position_match": match, "sampled_position_match": match + 0.05, "exact_match": 0.0}
        metrics = {key: [ratio, ratio] for key in cache_vs_exact.RATIO_METRICS}
        if setting == "exact":
            metrics = {key: [None, None] for key in cache_vs_exact.RATIO_METRICS}
        result = {"setting": setting, "seed": seed, "after": after, "reward_per_step": [0.5, 0.6], "rl_seconds": 10.0,
                  "ratio_metrics_per_step": metrics}  # fmt: skip
        (tmp_path / f"rl-{setting}-seed{seed}.json").write_text(json.dumps(result))

    run("dual-r4", 1, 0.5, 1.0)
    run("dual-r4", 2, 0.7, 1.0)
    run("exact", 1, 0.4, None)
    run("exact", 2, 0.6, None)
    (tmp_path / "sft.json").write_text(json.dumps({"position_match": 0.3, "exact_match": 0.0}))
    cache_vs_exact.cmd_report(SimpleNamespace(output_dir=str(tmp_path)))
    out = capsys.readouterr().out
    exact_at, cached_at = out.index("exact: seeds [1, 2]"), out.index("dual-r4: seeds [1, 2]")
    assert exact_at < cached_at
    sd = (2 * 0.1**2) ** 0.5  # sample sd of two values 0.2 apart
    assert f"position_match after RL: 0.500 +- {sd:.3f}" in out[exact_at:cached_at]
    assert f"position_match after RL: 0.600 +- {sd:.3f}" in out[cached_at:]
    assert "importance_sampling_ratio" not in out[exact_at:cached_at]
    assert "importance_sampling_ratio" in out[cached_at:]
    assert (tmp_path / "cache_vs_exact.png").stat().st_size > 0


def test_math_grading_benchmark_keeps_every_honest_reward():
    """`bench_math_grading.py` on a small batch: its verdicts are known by construction, none is lost or forged."""
    import bench_math_grading

    completions, golds, expected, kinds = bench_math_grading.build_batch(40, never=2, symbolic_fraction=0.5)
    assert kinds[:2] == ["never", "never"] and len(completions) == len(golds) == len(expected) == 40
    report = bench_math_grading.run(40, never=2, symbolic_fraction=0.5, timeout=0.5)
    assert report["never"]["answers"] == 2 and report["symbolic"]["answers"] == 19
    assert report["symbolic"]["honest"] == 10 and report["integer"]["honest"] == 10
    assert report["lost"] == 0 and report["forged"] == 0, report
