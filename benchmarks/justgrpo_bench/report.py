"""The printed report of a run."""

from __future__ import annotations

import math


def _fmt(value: float | None, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f} MiB"


def format_report(report: dict) -> str:
    cfg, res, ratios = report["config"], report["results"], report["ratios"]
    lines = [
        f"model={cfg['model']} params={cfg['params']['total'] / 1e6:.1f}M (trunk {cfg['params']['trunk'] / 1e6:.1f}M)"
        f" device={cfg['device_name']} dtype={cfg['dtype']} autocast={cfg['autocast']} threads={cfg['threads']}",
        f"B={cfg['batch_size']} P={cfg['prompt_length']} L={cfg['gen_length']} used fraction="
        f"{cfg['used_fraction']:.2f} valid tokens={cfg['valid_tokens']} fast selected={cfg['fast_selected']}"
        f" repeats={cfg['repeats']} (medians) clock={cfg['clock']} memory={cfg['memory_method']}"
        f" baseline={cfg['baseline']}",
        "",
        f"{'phase':<28} {'wall s':>8} {'cpu s':>8} {'tok/s':>9} {'fwd calls':>9} {'canvases':>8} {'peak mem':>11} "
        f"{'TFLOP/s':>8} {'MFU':>6} {'speedup':>8} {'(wall)':>7} {'mem ratio':>9}",
    ]
    for name, r in res.items():
        ratio = ratios.get(name, {})
        lines.append(
            f"{name:<28} {_fmt(r['wall_s'], '.3f'):>8} {_fmt(r['cpu_s'], '.3f'):>8} "
            f"{_fmt(r['tokens_per_s'], '.1f'):>9} {r['calls']:>9} {r['canvases']:>8} "
            f"{_mib(r['peak_memory_bytes']):>11} {_fmt(r['achieved_tflops'], '.3f'):>8} {_fmt(r['mfu'], '.1%'):>6} "
            f"{_fmt(ratio.get('speedup'), '.2f'):>8} {_fmt(ratio.get('speedup_wall'), '.2f'):>7} "
            f"{_fmt(ratio.get('memory'), '.2f'):>9}"
        )
    lines += ["", "exactness (fp32 on CPU should be ~1e-6):"]
    lines += [f"  {k}: {v:.2e}" for k, v in report["checks"].items()]
    lines += ["", "targets:"]
    for k, v in report["targets"].items():
        verdict = {True: "met", False: "MISSED", None: "n/a"}[v["met"]]
        lines.append(f"  {k}: {_fmt(v['value'], '.2f')} (target {v['target']}) {verdict}")
    return "\n".join(lines)
