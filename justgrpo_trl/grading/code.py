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

__all__ = ["build_test_program", "extract_code"]

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
