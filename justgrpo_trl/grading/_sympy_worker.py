"""Symbolic-equivalence worker: a standalone script, run by `justgrpo_trl.grading.symbolic` in its own process.

Protocol (one JSON document per line): the worker prints `"ready"` once its imports are done, then answers each
request `[pred, gold, rel_tol]` read from stdin with `true` or `false`. It imports nothing from `justgrpo_trl`
(whose `__init__` pulls in model code) and exits when stdin closes or its parent process goes away. Anything the
parsers print goes to stderr so that stdout carries only answers.
"""

import json
import os
import re
import sys
import threading
import time

_SAFE_PLAIN_RE = re.compile(r"^[\w\s.+\-*/^(),]*$")
_PLAIN_NAMES = {"sqrt", "pi", "e", "sin", "cos", "tan", "log", "ln", "exp", "abs", "oo", "I"}
_MEMORY_LIMIT_BYTES = 2 * 1024**3


def _parse(text):
    """A sympy object for `text`: plain `sqrt(2)/2`-style input via sympy's parser when it is provably harmless
    (arithmetic characters and a few known function names only, since `parse_expr` evaluates Python), LaTeX
    otherwise."""
    from latex2sympy2_extended import latex2sympy
    from sympy.parsing.sympy_parser import (
        convert_xor,
        implicit_multiplication_application,
        parse_expr,
        standard_transformations,
    )

    names = set(re.findall(r"[A-Za-z_]\w*", text))
    plain = "\\" not in text and _SAFE_PLAIN_RE.match(text) and "__" not in text
    if plain and names <= _PLAIN_NAMES | {n for n in names if len(n) == 1} and ("(" in text or "**" in text):
        transformations = standard_transformations + (implicit_multiplication_application, convert_xor)
        return parse_expr(text.replace("ln(", "log("), transformations=transformations)
    return latex2sympy(text)


def _equal(pred, gold, rel_tol):
    import sympy

    a, b = _parse(pred), _parse(gold)
    if a == b:
        return True
    try:
        difference = sympy.simplify(a - b)
        if difference == 0 or getattr(difference, "is_zero_matrix", False):
            return True
    except Exception:
        pass
    try:
        x, y = complex(sympy.N(a)), complex(sympy.N(b))
    except (TypeError, ValueError):
        return False
    return abs(x - y) <= rel_tol * max(abs(x), abs(y)) + 1e-12


def _exit_when_orphaned(parent_pid):
    """Stop computing once the process that asked has died (it can no longer kill this one on timeout)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(0)


def main():
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (_MEMORY_LIMIT_BYTES, _MEMORY_LIMIT_BYTES))
    except (ImportError, ValueError, OSError):
        pass
    answers = sys.stdout
    sys.stdout = sys.stderr
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    import latex2sympy2_extended  # noqa: F401  (pay the import before announcing readiness)
    import sympy  # noqa: F401

    answers.write(json.dumps("ready") + "\n")
    answers.flush()
    for line in sys.stdin:
        try:
            pred, gold, rel_tol = json.loads(line)
            result = bool(_equal(pred, gold, rel_tol))
        except BaseException:  # noqa: B036  (any parser failure, MemoryError or RecursionError means "not equal")
            result = False
        answers.write(json.dumps(result) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
