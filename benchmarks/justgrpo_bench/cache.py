"""Rollout cache phase: speed and fidelity of cached AR rollouts (`cached_decoding`) against the exact one, same run.

* **Speed** (random model of `--model` shape, `--batch_size` rows, prompt `--prompt_length`, canvas `--gen_length`):
  rollout tokens per second of the exact rollout (`decoding.ar_decode`) and of each cache setting, timed on
  `--window` decoding steps starting at each of `--offsets` (a window at offset k decodes slots k, k+1, ... of a canvas
  whose first k slots are already written: the same forwards as steps k.. of a full rollout), summed over the windows.
  A full rollout at the 50m shape costs minutes of CPU per setting; the windows sample its beginning, middle and end
  (the prefix cache's span shrinks as the rollout advances, the dual cache's does not). Each window starts with a
  refresh and is a multiple of every r measured, so the refresh fraction is exact. `--clock cpu` (default) counts
  the process' CPU time on `--threads` threads, which other jobs on a shared host do not inflate.
* **Memory**: the bytes the cache holds (every layer's keys and values of the whole canvas, `LLaDAKVCache.nbytes`),
  next to the weights'.
* **Fidelity** (`--fidelity_checkpoint`, a trained model): rollouts of its held-out prompts at temperature 1 with
  each setting, keeping the cached sampler's distribution q at every slot; every slot is then scored exactly on the
  same prefix (the canvas `[prompt | c_<j | MASK]`, one forward per slot), which gives the policy's distribution p.
  Reported: the per-token KL(q || p) = sum_v q(v) log(q(v) / p(v)) over the vocabulary, averaged over the sampled
  tokens (with its standard error, prompts being the independent units, its 99th percentile and maximum, its mean
  over the quarter of tokens with the highest sampler entropy, the ones JustGRPO-Fast scores, and the one-sample
  estimate `r - 1 - log r` as a cross-check), and the spread of the importance ratio r = p / q of the sampled tokens
  (mean, std, 1st/99th percentile, fraction above TRL's default cap 3).
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import torch

from justgrpo_trl.cached_decoding import RolloutCache, cached_ar_decode, cached_model
from justgrpo_trl.decoding import ar_decode, build_canvas, left_pad, logprobs_and_entropy, scaled_logits

from .models import MODEL_SHAPES, build_model


class _WindowDone(Exception):
    """Raised by `_Budget` once the window's forwards are done."""


class _ObservedModel:
    """The model as `ar_decode` uses it (`parameters`, the forward, `forward_cached`), with a hook before every
    forward, exact or cached, and one on its slot logits `[A, V]` after it."""

    def __init__(self, model):
        self.model = model

    def parameters(self):
        return self.model.parameters()

    def before_forward(self) -> None:
        pass

    def after_forward(self, slot_logits: torch.Tensor) -> None:
        pass

    def __call__(self, *args, **kwargs):
        self.before_forward()
        out = self.model(*args, **kwargs)
        self.after_forward(out.logits[:, 0])
        return out

    def forward_cached(self, *args, **kwargs):
        self.before_forward()
        logits, kv = self.model.forward_cached(*args, **kwargs)
        self.after_forward(logits[:, 0])
        return logits, kv


class _Budget(_ObservedModel):
    """The model, stopping the rollout (by raising `_WindowDone`) after `steps` forwards."""

    def __init__(self, model, steps: int):
        super().__init__(model)
        self.left = steps

    def before_forward(self) -> None:
        if self.left == 0:
            raise _WindowDone
        self.left -= 1


class _SlotLogits(_ObservedModel):
    """The model, keeping the slot logits of every forward (in call order: one per decoding step)."""

    def __init__(self, model):
        super().__init__(model)
        self.steps: list[torch.Tensor] = []

    def after_forward(self, slot_logits: torch.Tensor) -> None:
        self.steps.append(slot_logits.float())


def _clock(kind: str) -> float:
    return time.process_time() if kind == "cpu" else time.perf_counter()


def time_rollout(model, prompts: torch.Tensor, tokens, args, cache: RolloutCache | None) -> tuple[float, int]:
    """CPU (or wall) seconds and tokens of the windows, one rollout per offset."""
    generator = torch.Generator().manual_seed(args.seed)
    total_time, total_tokens = 0.0, 0
    for offset in args.offsets:
        decoded = prompts[:, torch.randint(prompts.size(1), (offset,), generator=generator)]
        rows = torch.cat([prompts, decoded], dim=1).tolist()
        budget = _Budget(model, args.window)
        start = _clock(args.clock)
        try:
            rollout(cache)(
                budget,
                rows,
                gen_length=args.gen_length - offset,
                temperature=1.0,
                generator=torch.Generator().manual_seed(args.seed),
                **tokens.decode_kwargs(),
            )
        except _WindowDone:
            pass
        total_time += _clock(args.clock) - start
        total_tokens += prompts.size(0) * args.window
    return total_time, total_tokens


def rollout(cache: RolloutCache | None):
    """The exact AR sampler (`cache` None) or the cached one with this cache."""
    return ar_decode if cache is None else partial(cached_ar_decode, cache=cache)


def _log_distribution(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """The sampler's log-distribution at temperature 1 (`ar_decode`'s: fp32, the mask token excluded)."""
    return logprobs_and_entropy(scaled_logits(logits, mask_id, 1.0))[0]


@torch.no_grad()
def exact_slot_logps(model, prompts: list[list[int]], completions: list[list[int]], gen_length: int, tokens):
    """The exact AR-order log-distribution of every slot of the given completions, one forward per slot on
    `[prompt | c_<j | MASK x (L - j)]` (teacher forcing): a list over steps of `[rows still decoding, V]`."""
    ids, mask = left_pad(prompts, tokens.pad_id)
    canvas, attention_mask = build_canvas(ids, mask, gen_length, tokens.mask_id)
    width = ids.size(1)
    out = []
    for step in range(max(map(len, completions))):
        rows = [i for i, c in enumerate(completions) if len(c) > step]
        position = torch.full((len(rows), 1), width + step)
        logits = model(input_ids=canvas[rows], attention_mask=attention_mask[rows], logits_to_keep=position).logits
        out.append(_log_distribution(logits[:, 0], tokens.mask_id))
        for row in rows:
            canvas[row, width + step] = completions[row][step]
    return out


def fidelity(model, tokenizer, tokens, prompts: list[str], gen_length: int, cache: RolloutCache, seed: int) -> dict:
    """Per-token KL(q || p) of the cached sampler q from the exact policy p and the spread of r = p / q over the tokens
    of cached rollouts (module docstring). Rows leave the batch at their stop token, in order, so the rows of step j's
    forward are the completions longer than j."""
    prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
    recorder = _SlotLogits(model)
    output = rollout(cache)(
        recorder,
        prompt_ids,
        gen_length=gen_length,
        temperature=1.0,
        generator=torch.Generator().manual_seed(seed),
        **tokens.decode_kwargs(),
    )
    completions = output.completion_ids
    exact = exact_slot_logps(model, prompt_ids, completions, gen_length, tokens)
    kls, entropies, log_ratios, row_of = [], [], [], []
    for step, (p, slot_logits) in enumerate(zip(exact, recorder.steps)):
        rows = [i for i, c in enumerate(completions) if len(c) > step]
        row_of.append(torch.tensor(rows))
        q = _log_distribution(slot_logits, tokens.mask_id)
        kls.append((q.exp() * (q - p).masked_fill(q == float("-inf"), 0.0)).sum(-1).double())
        entropies.append(-(q.exp() * q.masked_fill(q == float("-inf"), 0.0)).sum(-1).double())
        drawn = torch.tensor([completions[i][step] for i in rows])[:, None]
        recorded = torch.tensor([output.logprobs[i][step] for i in rows])
        if not torch.allclose(q.gather(-1, drawn)[:, 0], recorded, atol=1e-5):
            raise RuntimeError(f"Step {step}: the recorded slot logits are not the ones the sampler drew from.")
        log_ratios.append((p.gather(-1, drawn) - q.gather(-1, drawn))[:, 0].double())
    kl, log_ratio, token_rows, entropy = torch.cat(kls), torch.cat(log_ratios), torch.cat(row_of), torch.cat(entropies)
    top_quarter = entropy >= entropy.quantile(0.75)  # the tokens JustGRPO-Fast (quantile 0.25) would score
    ratio = log_ratio.exp()
    # Standard error of the mean KL with prompts as the independent units (a prompt's tokens are correlated):
    # the cluster (ratio-estimator) formula over per-prompt KL sums s_i and token counts t_i.
    sums = torch.zeros(len(prompts), dtype=torch.float64).index_add_(0, token_rows, kl)
    counts = torch.zeros(len(prompts), dtype=torch.float64).index_add_(0, token_rows, torch.ones_like(kl))
    n = len(prompts)
    kl_se = float(((sums - kl.mean() * counts).pow(2).sum() * n / max(1, n - 1)).sqrt() / counts.sum())
    return {
        "tokens": int(ratio.numel()),
        "mean_tokens_per_completion": ratio.numel() / len(prompts),
        "kl": float(kl.mean()),
        "kl_se": kl_se,
        "kl_p99": float(kl.quantile(0.99)),
        "kl_max": float(kl.max()),
        "kl_top_entropy_quarter": float(kl[top_quarter].mean()),
        "kl_sampled": float((ratio - 1 - log_ratio).mean()),  # the unbiased one-sample estimate, as a cross-check
        "ratio_mean": float(ratio.mean()),
        "ratio_std": float(ratio.std()),
        "ratio_p01": float(ratio.quantile(0.01)),
        "ratio_p99": float(ratio.quantile(0.99)),
        "outside_caps": float((ratio > 3.0).double().mean()),
    }


def settings(args) -> list[tuple[str, RolloutCache | None]]:
    """The exact rollout, then every (kind:update, r) asked for."""
    out: list[tuple[str, RolloutCache | None]] = [] if args.no_exact else [("exact", None)]
    for spec in args.caches:
        kind, update, *rest = spec.split(":")
        lookahead = int(rest[0]) if rest else 0
        name = f"{kind}/{update}" + (f"/lookahead={lookahead}" if lookahead else "")
        for r in args.refresh:
            out.append((f"{name}/r={r}", RolloutCache(kind, r, update, lookahead)))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODEL_SHAPES), default="50m")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--prompt_length", type=int, default=128)
    parser.add_argument("--gen_length", type=int, default=256)
    parser.add_argument("--window", type=int, default=16, help="Steps timed per window (a multiple of every r).")
    parser.add_argument("--offsets", type=int, nargs="+", default=[0, 120, 240], help="Window start slots.")
    parser.add_argument("--refresh", type=int, nargs="+", default=[4, 8, 16], help="r values.")
    parser.add_argument(
        "--caches",
        nargs="*",
        default=["prefix:recompute", "dual:recompute", "dual:append"],
        help="kind:update[:lookahead] list.",
    )
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip_speed", action="store_true", help="Fidelity only.")
    parser.add_argument("--no_exact", action="store_true", help="Leave the exact rollout out (runs split in parts).")
    parser.add_argument("--fidelity_checkpoint", default=None, help="A trained checkpoint (with held_out.json).")
    parser.add_argument("--fidelity_prompts", type=int, default=64)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    for r in args.refresh:
        if args.window % r:
            raise SystemExit(f"--window ({args.window}) must be a multiple of every --refresh value ({r}).")
    if max(args.offsets) + args.window > args.gen_length:
        raise SystemExit("--offsets + --window must fit in --gen_length.")
    return args


def run(argv: list[str] | None = None) -> dict:
    """Run the phase, print a table, and return (and optionally write) the results."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    report: dict = {"args": vars(args), "speed": {}, "fidelity": {}}
    if not args.skip_speed:
        model, tokens = build_model(args.model, torch.device("cpu"), torch.float32, seed=args.seed)
        cached_model(model)  # fails early on a model without forward_cached
        generator = torch.Generator().manual_seed(args.seed)
        reserved = {tokens.mask_id, tokens.pad_id, *tokens.stop_ids, 0}
        pool = torch.tensor([t for t in range(model.config.vocab_size) if t not in reserved])
        prompts = pool[torch.randint(pool.numel(), (args.batch_size, args.prompt_length), generator=generator)]
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        config = model.config
        seq = args.prompt_length + args.gen_length
        cache_bytes = 2 * config.n_layers * args.batch_size * seq * config.d_model * 4  # fp32 keys and values
        report["memory"] = {"weights_bytes": weights, "cache_bytes": cache_bytes}
        with torch.no_grad():
            for name, cache in settings(args):
                seconds, count = time_rollout(model, prompts, tokens, args, cache)
                report["speed"][name] = {"seconds": seconds, "tokens": count, "tokens_per_s": count / seconds}
                print(f"[speed] {name:26s} {count / seconds:8.2f} tokens/s ({args.clock} time {seconds:.1f}s)")
        base = report["speed"].get("exact", {}).get("tokens_per_s")
        for entry in report["speed"].values():
            entry["speedup"] = entry["tokens_per_s"] / base if base else float("nan")
    if args.fidelity_checkpoint:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from justgrpo_trl.models import get_spec, resolve_special_tokens

        path = Path(args.fidelity_checkpoint)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
        tokens = resolve_special_tokens(get_spec(model), tokenizer, model.config)
        meta = json.loads((path / "held_out.json").read_text())
        prompts = [p for p, _ in meta["held_out"][: args.fidelity_prompts]]
        gen_length = meta["max_completion_length"]
        with torch.no_grad():
            for name, cache in [entry for entry in settings(args) if entry[1] is not None]:
                result = fidelity(model, tokenizer, tokens, prompts, gen_length, cache, args.seed)
                report["fidelity"][name] = result
                print(
                    f"[fidelity] {name:26s} KL {result['kl']:.5f} +- {result['kl_se']:.5f} "
                    f"(p99 {result['kl_p99']:.4f})  "
                    f"ratio mean {result['ratio_mean']:.3f} std "
                    f"{result['ratio_std']:.3f} p01 {result['ratio_p01']:.3f} p99 {result['ratio_p99']:.3f} "
                    f">3: {result['outside_caps']:.4f}  ({result['mean_tokens_per_completion']:.1f} tokens/row)"
                )
    print(format_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


def format_table(report: dict) -> str:
    """Markdown table: speed (tokens/s, speedup) and fidelity (KL, ratio spread) per setting."""
    lines = [
        "| setting | tokens/s | speedup | mean KL(q‖p) ± s.e. | ratio std | ratio p01–p99 | ratio > 3 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys([*report["speed"], *report["fidelity"]]):
        speed, fid = report["speed"].get(name), report["fidelity"].get(name)
        cells = [name]
        cells += [f"{speed['tokens_per_s']:.2f}", f"{speed['speedup']:.2f}×"] if speed else ["–", "–"]
        if fid:
            spread = f"{fid['ratio_p01']:.2f}–{fid['ratio_p99']:.2f}"
            cells += [f"{fid['kl']:.4f} ± {fid['kl_se']:.4f}", f"{fid['ratio_std']:.3f}", spread]
            cells += [f"{fid['outside_caps']:.4f}"]
        else:
            cells += ["–"] * 4
        lines.append("| " + " | ".join(cells) + " |")
    if "memory" in report:
        memory = report["memory"]
        lines.append(
            f"\nCache memory: {memory['cache_bytes'] / 2**20:.1f} MiB (fp32 keys and values of every layer, whole "
            f"canvas) next to {memory['weights_bytes'] / 2**20:.1f} MiB of weights."
        )
    return "\n".join(lines)
