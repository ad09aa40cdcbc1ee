"""The GPU checks of one lent device, as one script: bf16 numerics, 8B throughput and MFU, a ZeRO-3 training step.

    python benchmarks/gpu_check.py                 # on the GPU machine (under 8 minutes on one H100/H200)
    python benchmarks/gpu_check.py --tiny          # the same three parts with tiny shapes on CPU (a smoke run)

1. **bf16 against fp32 log-probs.** A randomly initialised LLaDA (1B-shaped on GPU) samples AR rollouts in fp32;
   the exact AR-order scorer (`estimators.scoring.score_canvases`) scores them with fp32 weights and with bf16
   weights. Printed: max and mean |log p_bf16 - log p_fp32| and the fp32 sampler-vs-scorer gap.
2. **Throughput and MFU of an 8B-shaped LLaDA** (random weights, bf16) at the recipe's lengths (prompt 128, L 256),
   through the benchmark package (`justgrpo_bench`): rollout and scoring tokens/s and MFU, against the naive
   per-position baseline in the same run.
3. **One training step of a 1B-shaped model through the ZeRO-3 code path**: `accelerate launch` with
   `accelerate_configs/zero3.yaml` on one process, running `tests/engine_train_script.py` (chunked backward through
   the DeepSpeed engine). Skipped, saying so, when DeepSpeed cannot be imported.

Nothing here is a test: the numbers are printed (and written with `--json`) for a person to read.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from justgrpo_bench.models import build_model  # noqa: E402
from justgrpo_bench.run import run as run_benchmark  # noqa: E402

from justgrpo_trl.collators import ARScoringCanvases  # noqa: E402
from justgrpo_trl.decoding import ar_decode, left_pad  # noqa: E402
from justgrpo_trl.estimators.scoring import score_canvases  # noqa: E402


def bf16_parity(shape: str, device: str, batch: int, prompt_length: int, gen_length: int) -> dict:
    model, tokens = build_model(shape, torch.device(device), torch.float32)
    generator = torch.Generator(device="cpu").manual_seed(0)
    vocab = model.config.vocab_size
    ordinary = [t for t in range(vocab) if t not in (tokens.mask_id, *tokens.stop_ids, tokens.pad_id)]
    prompts = [[ordinary[int(i)] for i in torch.randint(len(ordinary), (prompt_length,), generator=generator)]]
    prompts = prompts * batch
    torch.manual_seed(0)
    rollout = ar_decode(model, prompts, gen_length=gen_length, temperature=1.0, **tokens.decode_kwargs())
    prompt_ids, prompt_mask = left_pad(prompts, tokens.pad_id, device=device)
    completion_ids, completion_mask = left_pad([c[::-1] for c in rollout.completion_ids], tokens.pad_id, device)
    completion_ids, completion_mask = completion_ids.flip(1), completion_mask.flip(1)  # right-padded

    def score(weights_dtype: torch.dtype) -> torch.Tensor:
        canvases = ARScoringCanvases(
            prompt_ids,
            prompt_mask,
            completion_ids,
            completion_mask,
            gen_length=gen_length,
            mask_id=tokens.mask_id,
            chunk_size=16,
            logit_shift=tokens.logit_shift,
        )
        with torch.no_grad():
            return score_canvases(model.to(weights_dtype), canvases, mask_id=tokens.mask_id)[0]

    fp32, bf16 = score(torch.float32), score(torch.bfloat16)
    mask = completion_mask.bool()
    sampled = torch.zeros_like(fp32)
    for row, values in enumerate(rollout.logprobs):
        sampled[row, : len(values)] = torch.tensor(values, device=sampled.device)
    gap = (bf16 - fp32).abs()[mask]
    return {
        "shape": shape,
        "scored_tokens": int(mask.sum()),
        "bf16_vs_fp32_max_abs": gap.max().item(),
        "bf16_vs_fp32_mean_abs": gap.mean().item(),
        "fp32_scorer_vs_sampler_max_abs": (fp32 - sampled).abs()[mask].max().item(),
    }


def zero3_step(shape: str, device: str, workdir: Path) -> dict:
    try:
        import deepspeed  # noqa: F401
    except Exception as error:  # noqa: BLE001  (any import failure means: skip and say why)
        return {"skipped": f"DeepSpeed cannot be imported here ({type(error).__name__}: {error})"}
    model, _ = build_model(shape, torch.device("cpu"), torch.float32)
    from justgrpo_trl.models.tiny import build_tokenizer

    checkpoint = workdir / f"{shape}-random"
    model.save_pretrained(checkpoint)
    build_tokenizer().save_pretrained(checkpoint)
    del model
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    command += [str(ROOT / "accelerate_configs" / "zero3.yaml"), "--num_processes", "1", "--mixed_precision", "no"]
    command += [str(ROOT / "tests" / "engine_train_script.py"), str(checkpoint), str(workdir / "zero3")]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=420, env={**os.environ})
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        return {"failed": result.stderr[-3000:], "seconds": seconds}
    saved = torch.load(workdir / "zero3" / "rank0.pt", weights_only=False)
    return {"seconds": seconds, "engine": saved.get("engine"), "chunked_backward_blocker": saved.get("blocker")}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="Tiny shapes on CPU: checks that the script works.")
    parser.add_argument("--json", default=None, help="Also write the results here.")
    args = parser.parse_args(argv)
    device = "cpu" if args.tiny else "cuda"
    report: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
    started = time.perf_counter()

    print("[1/3] bf16 against fp32 log-probs", flush=True)
    sizes = (
        dict(batch=4, prompt_length=8, gen_length=16) if args.tiny else dict(batch=8, prompt_length=128, gen_length=64)
    )
    report["bf16_parity"] = bf16_parity("tiny" if args.tiny else "1b", device, **sizes)
    print(json.dumps(report["bf16_parity"], indent=2), flush=True)

    print("[2/3] throughput and MFU", flush=True)
    bench = ["--model", "tiny" if args.tiny else "8b", "--device", device, "--repeats", "1", "--warmup", "0"]
    if args.tiny:
        bench += ["--batch_size", "4", "--prompt_length", "8", "--gen_length", "16", "--chunk_size", "8"]
        bench += ["--threads", "1", "--memory", "off"]
    else:
        bench += ["--batch_size", "8", "--prompt_length", "128", "--gen_length", "256", "--chunk_size", "8"]
        bench += ["--dtype", "bfloat16", "--no-checkpointed"]
    throughput = run_benchmark(bench)
    report["throughput"] = {"results": throughput["results"], "ratios": throughput["ratios"]}

    print("[3/3] one training step through ZeRO-3", flush=True)
    with tempfile.TemporaryDirectory() as workdir:
        report["zero3_step"] = zero3_step("tiny" if args.tiny else "1b", device, Path(workdir))
    print(json.dumps(report["zero3_step"], indent=2)[:4000], flush=True)

    report["total_seconds"] = time.perf_counter() - started
    print(f"done in {report['total_seconds']:.0f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    main()
