"""Prototype (not in the package): run LLaDA's last block only at the rows whose logits are kept.

With per-row `logits_to_keep` (one scored position per canvas in JustGRPO's rollout and scoring), every block but
the last must run at every position (its keys and values feed the next block), but the last block only needs keys
and values at every position and its query, attention output, MLP and the final norm at the kept rows. This script
checks that the pruned forward gives the same logits and gradients as `LLaDAModelLM.forward`, and times forward and
forward+backward of one scoring chunk both ways, interleaved, medians of the process CPU time (1 thread).

    python benchmarks/prototype_last_block.py --model 50m --chunk_size 8 --seq 48
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_justgrpo import MODEL_SHAPES, build_model  # noqa: E402

from justgrpo_trl.models.modeling_llada import LLaDAModelLM, apply_rotary, rotary_cos_sin  # noqa: E402


def pruned_logits(model: LLaDAModelLM, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Logits `[B, K, V]` at per-row `positions [B, K]`, with the last block computed at those rows only.

    No attention mask (unpadded canvases, as in the benchmark); a padded batch would pass the key-padding mask to
    both the full blocks and the pruned one unchanged.
    """
    trunk, config = model.model.transformer, model.config
    hidden = trunk.wte(input_ids)
    batch, seq, _ = hidden.shape
    cos, sin = rotary_cos_sin(
        torch.arange(seq, device=hidden.device).expand(batch, seq), config.head_dim, config.rope_theta, hidden.device
    )
    for block in trunk.blocks[:-1]:
        hidden = block(hidden, None, (cos, sin))
    block, rows, kept = trunk.blocks[-1], torch.arange(batch, device=hidden.device)[:, None], positions.size(1)
    normed = block.attn_norm(hidden)
    q = block.q_proj(normed[rows, positions]).view(batch, kept, block.n_heads, block.head_dim).transpose(1, 2)
    k = block.k_proj(normed).view(batch, seq, block.n_kv_heads, block.head_dim).transpose(1, 2)
    v = block.v_proj(normed).view(batch, seq, block.n_kv_heads, block.head_dim).transpose(1, 2)
    q, k = apply_rotary(q, cos[rows, positions], sin[rows, positions]), apply_rotary(k, cos, sin)
    attn = F.scaled_dot_product_attention(q, k, v, enable_gqa=block.n_kv_heads != block.n_heads)
    out = hidden[rows, positions] + block.attn_out(attn.transpose(1, 2).reshape(batch, kept, -1))
    normed = block.ff_norm(out)
    out = out + block.ff_out(F.silu(block.ff_proj(normed)) * block.up_proj(normed))
    bias = None if config.weight_tying else trunk.ff_out.bias
    return F.linear(trunk.ln_f(out), model.output_head_weight(), bias)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODEL_SHAPES), default="50m")
    parser.add_argument("--chunk_size", type=int, default=8)
    parser.add_argument("--seq", type=int, default=48, help="Canvas length P + L.")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model, _ = build_model(args.model, torch.device("cpu"), torch.float32)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(6, 300, (args.chunk_size, args.seq), generator=generator)
    positions = torch.randint(args.seq // 3, args.seq, (args.chunk_size, 1), generator=generator)

    def full() -> torch.Tensor:
        return model(input_ids=ids, logits_to_keep=positions).logits

    def pruned() -> torch.Tensor:
        return pruned_logits(model, ids, positions)

    grads = []
    for fn in (full, pruned):
        model.zero_grad(set_to_none=True)
        fn().logsumexp(-1).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    with torch.no_grad():
        logits_diff = float((full() - pruned()).abs().max())
    report = {
        "logits_max_abs_diff": logits_diff,
        "grad_rel_err": float((grads[0] - grads[1]).norm() / grads[0].norm()),
    }
    for mode in ("forward", "forward+backward"):
        times: dict[str, list[float]] = {"full": [], "pruned": []}
        for _ in range(args.repeats):
            for name, fn in (("full", full), ("pruned", pruned)):
                with torch.set_grad_enabled(mode != "forward"):
                    start = time.process_time()
                    out = fn()
                    if mode != "forward":
                        out.sum().backward()
                    times[name].append(time.process_time() - start)
        full_s, pruned_s = statistics.median(times["full"]), statistics.median(times["pruned"])
        report[mode] = {"full_s": full_s, "pruned_s": pruned_s, "speedup": full_s / pruned_s}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
