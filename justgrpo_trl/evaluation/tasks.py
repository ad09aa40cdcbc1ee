"""Benchmarks as lists of `Problem`s: where they load from, how their prompts read, and how they are graded.

Named tasks load from the hub (`datasets.load_dataset`) or from a local `.jsonl`/`.json` file with the same columns;
any other local `.jsonl` is read with the layout its columns reveal. Grading goes through `justgrpo_trl.rewards`
(math answer equivalence, or the code sandbox), so evaluation and training judge answers the same way.
"""

from __future__ import annotations

import ast
import builtins
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..grading.code import extract_code
from ..grading.math import extract_answer
from ..grading.reference import reference_extract_answer, reference_gold, reference_math_equal_batch
from ..rewards import CODE_TEST_COLUMNS, gold_math_answer, make_code_reward, make_math_reward

__all__ = ["TASKS", "GradeResult", "Grader", "Problem", "TaskSpec", "load_problems", "resolve_task"]

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
MATH_COLUMNS = ("answer", "solution")
CODE_COLUMNS = CODE_TEST_COLUMNS  # what `code_reward` reads, stdin/stdout `inputs`/`outputs` included


@dataclass(frozen=True)
class Problem:
    """One benchmark item: the user message to send, and the columns its grader needs."""

    problem_id: str
    prompt: str
    columns: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskSpec:
    """A benchmark: its data source, prompt format and grading kind."""

    name: str
    kind: str  # "math" or "code"
    format_prompt: Callable[[dict[str, Any]], str]
    hub_path: str | None = None
    hub_config: str | None = None
    split: str = "test"
    id_column: str | None = None


# --------------------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------------------


def _first(row: dict[str, Any], *names: str) -> Any:
    for name in names:
        if row.get(name) not in (None, ""):
            return row[name]
    raise KeyError(f"The row has none of the columns {names}; it has {sorted(row)}.")


def gsm8k_prompt(row: dict[str, Any]) -> str:
    """The bare question, as in the JustGRPO / LLaDA evaluation (the chat template does the rest)."""
    return str(_first(row, "question", "problem", "prompt")).strip()


def math_prompt(row: dict[str, Any]) -> str:
    return f"{str(_first(row, 'problem', 'question', 'prompt')).strip()}\n{MATH_INSTRUCTION}"


def humaneval_prompt(row: dict[str, Any]) -> str:
    """Names the function and shows its signature and docstring in a fenced block (the grader prepends that block
    when a completion is only the function body)."""
    return (
        "You are an expert Python programmer. Complete the implementation of the function "
        f"`{row['entry_point']}` below, and answer with the whole function in a Python markdown code block.\n\n"
        f"```python\n{str(row['prompt']).rstrip()}\n```\n"
    )


def _mbpp_function_name(row: dict[str, Any]) -> str:
    """The function the tests call: a `def` of the reference solution that the first test names, else the first
    call in the first test that is not a builtin."""
    first_test = str(row["test_list"][0])
    for name in re.findall(r"^def\s+(\w+)\s*\(", str(row.get("code") or ""), re.MULTILINE):
        if re.search(rf"\b{re.escape(name)}\s*\(", first_test):
            return name
    try:
        calls = [n.func.id for n in ast.walk(ast.parse(first_test.strip())) if isinstance(n, ast.Call)]
        calls = [c for c in calls if isinstance(c, str)]
    except (SyntaxError, AttributeError):
        calls = re.findall(r"(\w+)\s*\(", first_test)
    names = [c for c in calls if not hasattr(builtins, c)]
    return (names or calls or ["solution"])[0]


def mbpp_prompt(row: dict[str, Any]) -> str:
    tests = "\n".join(str(t) for t in row["test_list"])
    text = str(_first(row, "text", "prompt")).strip()
    return (
        f"You are an expert Python programmer. Here is your task: {text}\n"
        f"Write a function named `{_mbpp_function_name(row)}`. Your code should pass these tests:\n\n{tests}\n\n"
        "Answer with the code in a Python markdown code block."
    )


def plain_prompt(row: dict[str, Any]) -> str:
    return str(_first(row, "prompt", "question", "problem", "text")).strip()


TASKS: dict[str, TaskSpec] = {
    "gsm8k": TaskSpec("gsm8k", "math", gsm8k_prompt, "openai/gsm8k", "main", "test"),
    "math500": TaskSpec("math500", "math", math_prompt, "HuggingFaceH4/MATH-500", None, "test", "unique_id"),
    "humaneval": TaskSpec("humaneval", "code", humaneval_prompt, "openai/openai_humaneval", None, "test", "task_id"),
    "mbpp": TaskSpec("mbpp", "code", mbpp_prompt, "google-research-datasets/mbpp", "full", "test", "task_id"),
}


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------


def _is_local_file(path: str | None) -> bool:
    return path is not None and Path(path).suffix in {".jsonl", ".json"} and Path(path).is_file()


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a `.jsonl` file (one object per line) or a `.json` file (a list of objects)."""
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix == ".json":
        rows = json.loads(text)
        return rows if isinstance(rows, list) else rows["data"]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def infer_task(rows: Sequence[dict[str, Any]], name: str) -> TaskSpec:
    """The layout of a local file, from its columns: HumanEval, MBPP, GSM8K, MATH, or generic math/code."""
    columns = set(rows[0]) if rows else set()
    if {"test", "entry_point", "prompt"} <= columns:
        return TaskSpec(name, "code", humaneval_prompt, id_column="task_id")
    if "test_list" in columns:
        return TaskSpec(name, "code", mbpp_prompt, id_column="task_id")
    if columns & {"test", "test_cases", "inputs"}:
        return TaskSpec(name, "code", plain_prompt, id_column="task_id")
    if "question" in columns and "answer" in columns:
        return TaskSpec(name, "math", gsm8k_prompt, id_column="id")
    if "problem" in columns:
        return TaskSpec(name, "math", math_prompt, id_column="unique_id")
    if columns & set(MATH_COLUMNS):
        return TaskSpec(name, "math", plain_prompt, id_column="id")
    raise ValueError(
        f"Cannot tell how to grade {name}: its rows need math gold (`answer` or `solution`) or code tests "
        f"({', '.join(CODE_COLUMNS)}); they have {sorted(columns)}."
    )


def resolve_task(task: str, dataset: str | None = None, task_format: str = "auto") -> tuple[TaskSpec, str | None]:
    """The `TaskSpec` for `--task` (a name or a local file) and the local file to read, if any."""
    if task in TASKS:
        spec = TASKS[task]
        return spec, dataset if _is_local_file(dataset) else None
    if not _is_local_file(task):
        raise ValueError(f"--task must be one of {sorted(TASKS)} or an existing .jsonl/.json file, got {task!r}.")
    if task_format in TASKS:
        return TASKS[task_format], task
    if task_format != "auto":
        raise ValueError(f"--task_format must be 'auto' or one of {sorted(TASKS)}, got {task_format!r}.")
    return infer_task(read_rows(task)[:1], Path(task).stem), task


def load_rows(
    spec: TaskSpec, local_file: str | None, dataset: str | None, dataset_config: str | None, split: str | None
) -> list[dict[str, Any]]:
    """The raw rows: from the local file, else from the hub (`dataset` overrides the task's hub id)."""
    if local_file is not None:
        return read_rows(local_file)
    from datasets import load_dataset

    path = dataset or spec.hub_path
    config = dataset_config if dataset_config is not None else (spec.hub_config if dataset is None else None)
    return list(load_dataset(path, config, split=split or spec.split))


def load_problems(
    task: str,
    *,
    dataset: str | None = None,
    dataset_config: str | None = None,
    split: str | None = None,
    task_format: str = "auto",
    prompt_template: str | None = None,
    limit: int | None = None,
) -> tuple[TaskSpec, list[Problem]]:
    """Load a benchmark as `Problem`s, in dataset order (the first `limit` only, if given).

    `prompt_template` replaces the task's prompt format: a `str.format` template over the row's columns, e.g.
    `"{question}\\nAnswer with a number."`.
    """
    spec, local_file = resolve_task(task, dataset, task_format)
    rows = load_rows(spec, local_file, dataset, dataset_config, split)
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise ValueError(f"Task {task!r} has no rows.")
    grading = MATH_COLUMNS if spec.kind == "math" else CODE_COLUMNS
    problems = []
    for index, row in enumerate(rows):
        prompt = prompt_template.format(**row) if prompt_template else spec.format_prompt(row)
        problem_id = row.get(spec.id_column) if spec.id_column else None
        problems.append(
            Problem(
                problem_id=str(problem_id if problem_id is not None else index),
                prompt=prompt,
                columns={name: row.get(name) for name in grading if row.get(name) is not None},
            )
        )
    return spec, problems


# --------------------------------------------------------------------------------------------------------------
# Grading
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GradeResult:
    """The verdict on one completion: `correct`, what was extracted from it, and the gold answer (math only).

    For math, `reference_correct` is the verdict of the reference-compatible grader (the JustGRPO paper's rules,
    `justgrpo_trl.grading.reference`), so that accuracies can be compared with published numbers like for like;
    it is `None` for code."""

    correct: bool
    prediction: str | None
    gold: str | None
    gradable: bool = True
    reference_correct: bool | None = None


class Grader:
    """Grades completions with the project's TRL reward functions: `math_equal` on the extracted final answer (and,
    beside it, the reference-compatible grader), or the row's tests run in the code sandbox (in parallel)."""

    def __init__(self, kind: str, math_timeout: float = 5.0, code_timeout: float = 10.0, workers: int | None = None):
        if kind not in ("math", "code"):
            raise ValueError(f"Unknown task kind {kind!r}.")
        self.kind = kind
        self.math_timeout = math_timeout
        if kind == "math":
            self.reward = make_math_reward(1.0, 0.0, timeout=math_timeout, name="eval_math")
        else:
            self.reward = make_code_reward(1.0, 0.0, timeout=code_timeout, num_workers=workers, name="eval_code")

    def __call__(self, problems: Sequence[Problem], completions: Sequence[str]) -> list[GradeResult]:
        names = MATH_COLUMNS if self.kind == "math" else CODE_COLUMNS
        columns = {name: [p.columns.get(name) for p in problems] for name in names}
        scores = self.reward(prompts=[p.prompt for p in problems], completions=list(completions), **columns)
        reference: list[bool | None] = [None] * len(problems)
        if self.kind == "math":
            golds = [gold_math_answer(p.columns.get("answer"), p.columns.get("solution")) for p in problems]
            pairs = [
                (reference_extract_answer(completion), reference_gold(gold) if gold is not None else None)
                for completion, gold in zip(completions, golds)
            ]
            reference = list(reference_math_equal_batch(pairs, timeout=self.math_timeout))
        results = []
        for i, (completion, score) in enumerate(zip(completions, scores)):
            if self.kind == "math":
                gold, prediction = golds[i], extract_answer(completion)
            else:
                gold, prediction = None, extract_code(completion)
            results.append(
                GradeResult(
                    bool(score and score > 0),
                    prediction,
                    gold,
                    gradable=score is not None,
                    reference_correct=reference[i] if score is not None else None,
                )
            )
        return results
