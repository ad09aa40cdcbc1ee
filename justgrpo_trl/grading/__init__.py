"""Graders that turn a completion into a verdict: math answer equivalence and sandboxed execution of code.

Nothing here knows about models or trainers; `justgrpo_trl.rewards` wraps these into TRL reward functions.
"""

from .code import build_test_program, extract_code
from .math import (
    extract_answer,
    extract_boxed,
    extract_gsm8k_gold,
    extract_last_number,
    extract_math_gold,
    math_equal,
    math_equal_batch,
    normalize_answer,
)
from .symbolic import symbolic_equal

__all__ = [
    "build_test_program",
    "extract_answer",
    "extract_boxed",
    "extract_code",
    "extract_gsm8k_gold",
    "extract_last_number",
    "extract_math_gold",
    "math_equal",
    "math_equal_batch",
    "normalize_answer",
    "symbolic_equal",
]
