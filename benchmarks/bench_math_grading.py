"""Math-grading under load: one `math_reward` call on a large mixed batch, and how many honest rewards it keeps.

A benchmark, not a test: it prints wall time and verdict counts (and writes them as JSON with `--output`). The
batch mixes, in a fixed order that puts the hardest answers first:

- `never`: answers whose symbolic comparison never finishes (`(100!)!`, `10^{10^{10}}`, ...), which must get the
  lowest reward;
- `symbolic`: MATH-like answers only math-verify can decide (`\\sqrt{18}` vs `3\\sqrt{2}`, a factored polynomial,
  `\\frac{3\\pi}{6}` vs `\\frac{\\pi}{2}`), half equal to their gold and half not;
- `integer`: GSM8K-like integers, decided in-process, half equal.

Every verdict is known by construction, so a fast grader that drops honest rewards cannot look good: the report
counts the honest answers that lost their reward ("lost") and the wrong answers that were rewarded ("forged").

To compare with an earlier grader, run the same script with that version first on the path:

    python benchmarks/bench_math_grading.py --output new.json
    git worktree add /tmp/old 0068bd4 && PYTHONPATH=/tmp/old python benchmarks/bench_math_grading.py --output old.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

NEVER_FINISHING = [r"10^{10^{10}}", "(100!)!", r"9^{9^{9^{9}}}", "(99!)!", r"2^{2^{2^{2^{2^{2}}}}}", r"(10^{10})!"]


def _symbolic(k: int, equal: bool) -> tuple[str, str]:
    """A (completion, gold) pair that only a symbolic comparison decides; `equal` says whether it should pass."""
    off = 0 if equal else 1
    kind = k % 3
    if kind == 0:
        return rf"So \boxed{{\sqrt{{{2 * k * k + off}}}}}", rf"{k}\sqrt{{2}}"
    if kind == 1:
        return rf"Factoring, \boxed{{x^2-{k * k + off}}}", f"(x-{k})(x+{k})"
    return rf"The angle is \boxed{{\frac{{{k}\pi}}{{{2 * k + off}}}}}", r"\frac{\pi}{2}"


def build_batch(n: int, never: int, symbolic_fraction: float) -> tuple[list[str], list[str], list[bool], list[str]]:
    """Completions, golds, expected verdicts and kinds for a batch of `n` (the never-finishing ones first)."""
    completions, golds, expected, kinds = [], [], [], []
    for i in range(never):
        completions.append(rf"\boxed{{{NEVER_FINISHING[i % len(NEVER_FINISHING)]}}}")
        golds.append(str(i + 3))
        expected.append(False)
        kinds.append("never")
    n_symbolic = round((n - never) * symbolic_fraction)
    for i in range(n_symbolic):
        completion, gold = _symbolic(2 + i // 2, equal=i % 2 == 0)
        completions.append(completion)
        golds.append(gold)
        expected.append(i % 2 == 0)
        kinds.append("symbolic")
    for i in range(n - never - n_symbolic):
        value = 17 * i + 5
        completions.append(f"She pays {value} dollars in all. The answer is {value + (i % 2)}.")
        golds.append(f"The total is {value}.\n#### {value}")
        expected.append(i % 2 == 0)
        kinds.append("integer")
    return completions, golds, expected, kinds


def run(n: int, never: int, symbolic_fraction: float, timeout: float) -> dict:
    from justgrpo_trl.rewards import make_math_reward

    reward = make_math_reward(1.0, 0.0, timeout=timeout)
    reward(None, [r"\boxed{\sqrt{8}}"], answer=[r"2\sqrt{2}"])  # start the fork server outside the timed call
    completions, golds, expected, kinds = build_batch(n, never, symbolic_fraction)
    start = time.perf_counter()
    rewards = reward(None, completions, answer=golds)
    seconds = time.perf_counter() - start
    report = {"n": n, "timeout": timeout, "seconds": round(seconds, 2)}
    for kind in ("never", "symbolic", "integer"):
        rows = [i for i, k in enumerate(kinds) if k == kind]
        report[kind] = {
            "answers": len(rows),
            "honest": sum(expected[i] for i in rows),
            "lost": sum(expected[i] and rewards[i] != 1.0 for i in rows),
            "forged": sum(not expected[i] and rewards[i] == 1.0 for i in rows),
        }
    report["lost"] = sum(report[k]["lost"] for k in ("never", "symbolic", "integer"))
    report["forged"] = sum(report[k]["forged"] for k in ("never", "symbolic", "integer"))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1024, help="answers in the one `math_reward` call")
    parser.add_argument("--never", type=int, default=16, help="never-finishing answers among them (placed first)")
    parser.add_argument("--symbolic_fraction", type=float, default=0.35, help="share of the rest that is symbolic")
    parser.add_argument("--timeout", type=float, default=5.0, help="the reward's timeout (math_reward's default)")
    parser.add_argument("--output", type=Path, help="write the report as JSON")
    args = parser.parse_args()
    report = run(args.n, args.never, args.symbolic_fraction, args.timeout)
    print(f"{report['n']} answers in one math_reward call (timeout {report['timeout']:g}): {report['seconds']:.2f} s")
    for kind in ("never", "symbolic", "integer"):
        row = report[kind]
        print(
            f"  {kind:>8}: {row['answers']:5d} answers, {row['honest']:4d} honest, {row['lost']:3d} lost, "
            f"{row['forged']:3d} forged"
        )
    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
