"""Training tasks: where each data set lives, how its rows become prompts, and which rewards grade them.

A task turns raw rows (hub data set or a local jsonl/parquet file) into TRL's conversational format: a `prompt`
column of chat messages plus the columns its rewards read (`answer` for math, `test_cases`/`test_list`/`test` for
code). The math prompts are the evaluation harness' own, so training and evaluation see the same prompts.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset, load_dataset

from .evaluation.tasks import gsm8k_prompt, math_prompt
from .rewards import code_reward, math_reward

_FUNCTION_IN_ASSERT = re.compile(r"assert\s+(?:not\s+)?\(?\s*([A-Za-z_]\w*)\s*\(")


def _user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def format_gsm8k(row: dict[str, Any]) -> dict[str, Any]:
    """GSM8K: the question as the user turn (as in evaluation); gold stays in `answer` (`... #### 42`)."""
    return {"prompt": _user(gsm8k_prompt(row)), "answer": row["answer"]}


def format_math(row: dict[str, Any]) -> dict[str, Any]:
    """MATH: the problem and the boxed-answer instruction; gold from `answer`, else the `\\boxed{}` of `solution`."""
    gold = row.get("answer")
    if gold is None or not str(gold).strip():
        gold = row["solution"]
    return {"prompt": _user(math_prompt(row)), "answer": gold}


def function_name_from_tests(tests: list[str]) -> str | None:
    """The function the tests call, e.g. `assert add(1, 2) == 3` -> `add`."""
    for test in tests:
        match = _FUNCTION_IN_ASSERT.search(test)
        if match:
            return match.group(1)
    return None


def format_code(row: dict[str, Any]) -> dict[str, Any]:
    """AceCode-style rows (`question` + `test_cases`) or MBPP rows (`text` + `test_list`): the prompt names the
    function to write and asks for one fenced Python block."""
    tests = list(row.get("test_cases") or row.get("test_list") or [])
    question = (row.get("question") or row.get("text") or row.get("prompt") or "").strip()
    name = function_name_from_tests(tests)
    instruction = f"Write a Python function `{name}` that solves the task." if name else "Write a Python solution."
    content = f"{question}\n\n{instruction} Return the complete code in one ```python code block."
    return {"prompt": _user(content), "test_cases": tests}


@dataclass(frozen=True)
class TaskSpec:
    """A training task."""

    name: str = field(metadata={"help": "Task name used in recipes (`task: gsm8k`)."})
    dataset_name: str | None = field(metadata={"help": "Hub id of the default data set."})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub config name."})
    split: str = field(default="train", metadata={"help": "Default split."})
    formatter: Callable[[dict[str, Any]], dict[str, Any]] = field(default=format_gsm8k, metadata={"help": "Row map."})
    reward_funcs: tuple[Callable, ...] = field(default=(), metadata={"help": "Rewards with TRL's signature."})


TASKS: dict[str, TaskSpec] = {
    "gsm8k": TaskSpec("gsm8k", "openai/gsm8k", "main", "train", format_gsm8k, (math_reward,)),
    "math": TaskSpec("math", "ankner/math-500", None, "test", format_math, (math_reward,)),
    "code": TaskSpec("code", None, None, "train", format_code, (code_reward,)),
}


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}; choose one of {sorted(TASKS)}.")
    return TASKS[name]


def load_rows(path_or_name: str, config: str | None = None, split: str = "train") -> Dataset:
    """A local `.jsonl`/`.json`/`.parquet` file, or a hub data set by id."""
    suffix = path_or_name.rsplit(".", 1)[-1].lower() if "." in path_or_name else ""
    if suffix in ("jsonl", "json"):
        return load_dataset("json", data_files=path_or_name, split="train")
    if suffix == "parquet":
        return load_dataset("parquet", data_files=path_or_name, split="train")
    return load_dataset(path_or_name, config, split=split)


def load_task_dataset(
    task: str,
    dataset_path: str | None = None,
    split: str | None = None,
    max_samples: int | None = None,
    dataset_config: str | None = None,
) -> Dataset:
    """The task's data set in TRL's conversational format (`prompt` messages + grading columns)."""
    spec = get_task(task)
    source = dataset_path or spec.dataset_name
    if source is None:
        raise ValueError(
            f"Task {task!r} has no default hub data set: set `dataset_path` to a local jsonl/parquet file (for code, "
            "the AceCode-Hard jsonl with `question` and `test_cases` columns)."
        )
    rows = load_rows(source, dataset_config or spec.dataset_config, split or spec.split)
    if max_samples is not None:
        rows = rows.select(range(min(max_samples, len(rows))))
    return rows.map(spec.formatter, remove_columns=rows.column_names)
