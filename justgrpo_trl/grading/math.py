"""Answer extraction and answer equivalence for math word problems (GSM8K, MATH).

Extraction follows the order used by the d1 / JustGRPO evaluation scripts: the last `\\boxed{...}` (or `\\fbox{...}`),
then "the answer is X", then the last number in the text. Equivalence (`math_equal`) first tries cheap string and
numeric comparisons in-process, then structural comparison of tuples and intervals, and only then asks sympy, which
runs in a separate worker process under a timeout (see `justgrpo_trl.grading.symbolic`) so that a pathological
expression cannot hang the caller.
"""

from __future__ import annotations

import math
import re
import time
from fractions import Fraction

from .symbolic import symbolic_equal

__all__ = [
    "extract_answer",
    "extract_boxed",
    "extract_gsm8k_gold",
    "extract_last_number",
    "extract_math_gold",
    "math_equal",
    "normalize_answer",
]

_BOXED_COMMANDS = ("\\boxed", "\\fbox")

# A number as written in prose: optional sign, optional thousands separators, optional decimals, optional "/b"
# fraction and an optional percent sign. The sign is validated in `extract_last_number` (a "-" right after a word
# or a digit is a minus or a dash, not a sign).
_NUMBER_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+(?:\.\d+)?)?%?|-?\.\d+%?")
_ANSWER_IS_RE = re.compile(r"answer\s*(?:is|:)\s*:?", re.IGNORECASE)
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)|\n")
_THOUSANDS_RE = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?%?$")
_PLAIN_NUMBER_RE = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?$")
_SLASH_FRACTION_RE = re.compile(r"^([-+]?)\(?(\d+(?:\.\d+)?)\)?/\(?(\d+(?:\.\d+)?)\)?$")
_LATEX_FRACTION_RE = re.compile(r"^([-+]?)\\frac(?:\{([^{}]+)\}\{([^{}]+)\}|(\d)(\d))$")
_TEXT_COMMAND_RE = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mathit|mbox|operatorname)\s*\{([^{}]*)\}")
_ASSIGNMENT_RE = re.compile(r"^[a-zA-Z](?:_\{?\w+\}?)?\s*(?:=|\\in|\\approx|≈)\s*(.+)$", re.DOTALL)
_UNIT_SUFFIX_RE = re.compile(
    r"^(?P<value>[-+]?(?:\d+(?:\.\d+)?|\.\d+)(?:/\d+)?%?|[-+]?\\frac\{\d+\}\{\d+\})"
    r"(?:\s+(?P<words>[a-zA-Z][a-zA-Z.\s]*(?:\^\{?\d\}?)?)"
    r"|(?P<unit>cm|mm|km|kg|mg|ml|mph|kph|ft|yd|lbs?|oz|hrs?|mins?|secs?|sq\s*ft)(?:\^\{?\d\}?)?)$"
)
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|°|\\degree")
_LATEX_SPACING_RE = re.compile(r"\\left\b|\\right\b|\\[,;:!> ]|\\q?quad\b|~")
_BIG_DELIMITERS_RE = re.compile(r"\\(?:big|Big|bigg|Bigg)[lr]?\b")

# Relative tolerance of numeric comparisons, as in the reference evaluation scripts.
_REL_TOL = 1e-4
# Above this length an answer is not worth a symbolic comparison: it is almost surely not a final answer.
_MAX_SYMBOLIC_CHARS = 400


# --------------------------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------------------------


def _balanced_group(text: str, start: int) -> tuple[str, int] | None:
    """Content of the `{...}` group opening at `text[start]` and the index after it, braces balanced.

    Escaped braces (`\\{`, `\\}`) are content, not grouping. Returns `None` when the group is never closed (e.g. a
    completion truncated mid-answer).
    """
    depth = 0
    i = start
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
        i += 1
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` or `\\fbox{...}` in `text`, with balanced (nested) braces.

    Also accepts the brace-less form `\\boxed 5`. Returns `None` when there is no box or the last one is not closed.
    """
    start = max(text.rfind(command) for command in _BOXED_COMMANDS)
    if start < 0:
        return None
    command = next(c for c in _BOXED_COMMANDS if text.startswith(c, start))
    i = start + len(command)
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] == "{":
        group = _balanced_group(text, i)
        return None if group is None else group[0].strip()
    if i > start + len(command):  # "\boxed 5": the token after the space
        token = re.match(r"[^\s$]+", text[i:])
        return token.group(0) if token else None
    return None


def extract_last_number(text: str) -> str | None:
    """The last number written in `text`, thousands separators removed (e.g. "... so 1,234 apples." -> "1234").

    A "-" counts as a sign only when it does not follow a word character or a closing bracket ("10-3" is a
    subtraction, "pages 3-5" a range).
    """
    last = None
    for match in _NUMBER_RE.finditer(text):
        last = match
    if last is None:
        return None
    number = last.group(0)
    if number.startswith("-") and last.start() > 0 and re.match(r"[\w)\]}]", text[last.start() - 1]):
        number = number[1:]
    return number.replace(",", "")


def _answer_after_phrase(text: str) -> str | None:
    """What follows the last "the answer is" / "answer:" in `text`, up to the end of that sentence."""
    last = None
    for match in _ANSWER_IS_RE.finditer(text):
        last = match
    if last is None:
        return None
    rest = text[last.end() :]
    end = _SENTENCE_END_RE.search(rest)
    candidate = (rest[: end.start()] if end else rest).strip().strip("*").strip()
    if not candidate:
        return None
    if len(candidate.split()) > 4 and "\\" not in candidate:
        # A phrase such as "that she has 12 apples left": keep only its first number.
        match = _NUMBER_RE.search(candidate)
        return match.group(0).replace(",", "") if match else None
    return candidate


def extract_answer(text: str) -> str | None:
    """The final answer of a completion, in the reference order: last box, "the answer is X", last number."""
    for extractor in (extract_boxed, _answer_after_phrase, extract_last_number):
        answer = extractor(text)
        if answer:
            return answer
    return None


def extract_gsm8k_gold(answer: str) -> str:
    """The gold answer of a GSM8K `answer` field: what follows the last `####`, without thousands separators."""
    return answer.rsplit("####", 1)[-1].strip().replace(",", "")


def extract_math_gold(solution: str) -> str | None:
    """The gold answer of a MATH `solution` field: the content of its last `\\boxed{}`."""
    return extract_boxed(solution)


# --------------------------------------------------------------------------------------------------------------
# Normalization
# --------------------------------------------------------------------------------------------------------------


def _unwrap_boxed(s: str) -> str:
    boxed = extract_boxed(s)
    if boxed is not None and any(s.startswith(command) for command in _BOXED_COMMANDS):
        return boxed
    return s


def _unwrap_text_commands(s: str) -> str:
    """`\\text{cm}` -> ` cm `: keeps the words (units are stripped later) and drops the markup."""
    previous = None
    while previous != s:
        previous, s = s, _TEXT_COMMAND_RE.sub(lambda m: f" {m.group(1).strip()} ", s)
    return s


def _unwrap_braces(s: str) -> str:
    """`{{5}}` -> `5`: drop braces that enclose the whole answer."""
    while s.startswith("{"):
        group = _balanced_group(s, 0)
        if group is None or group[1] != len(s):
            break
        s = group[0].strip()
    return s


def _strip_units(s: str) -> str:
    """`5 dollars` / `12cm` / `\\frac{1}{2} cup` -> the number alone; anything that is not number+unit is kept."""
    match = _UNIT_SUFFIX_RE.match(s)
    return match.group("value") if match else s


def normalize_answer(answer: str) -> str:
    """Canonical string form of an answer: no box, `$`, `\\text{}`, spacing macros, degrees, units or assignment.

    Thousands separators of a lone number are removed and `\\%` becomes `%` (kept, so that percentages can be
    compared numerically). The result is meant for comparison, not display.
    """
    s = answer.strip()
    s = _unwrap_boxed(s)
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"\\[()\[\]]", "", s)  # \( \) \[ \] display delimiters
    s = _unwrap_text_commands(s)
    s = _LATEX_SPACING_RE.sub(" ", s)
    s = _BIG_DELIMITERS_RE.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\displaystyle", "")
    s = s.replace("\\%", "%").replace("\\cdot", "*").replace("\\times", "*").replace("−", "-")
    s = _DEGREE_RE.sub("", s)
    s = _unwrap_braces(re.sub(r"\s+", " ", s).strip().rstrip(".").strip())
    assignment = _ASSIGNMENT_RE.match(s)
    if assignment:
        s = assignment.group(1).strip()
    for currency in ("USD", "US$", "Rs.", "€", "£", "¥"):
        s = s.replace(currency, "")
    s = _strip_units(s.strip())
    if _THOUSANDS_RE.match(s):
        s = s.replace(",", "")
    return s.strip()


# --------------------------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------------------------


def _parse_number(s: str) -> tuple[float, bool] | None:
    """`s` as a number and whether it was a percentage; `None` if `s` is not a plain number or simple fraction."""
    percent = s.endswith("%")
    s = s.rstrip("%").strip().replace(" ", "")
    try:
        if _PLAIN_NUMBER_RE.match(s):
            return float(s), percent
        match = _SLASH_FRACTION_RE.match(s)
        if match:
            sign, numerator, denominator = match.groups()
            value = Fraction(numerator) / Fraction(denominator)
            return float(-value if sign == "-" else value), percent
        match = _LATEX_FRACTION_RE.match(s)
        if match:
            sign = match.group(1)
            numerator, denominator = match.group(2) or match.group(4), match.group(3) or match.group(5)
            if _PLAIN_NUMBER_RE.match(numerator) and _PLAIN_NUMBER_RE.match(denominator):
                value = Fraction(numerator) / Fraction(denominator)
                return float(-value if sign == "-" else value), percent
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return None


def _numbers_equal(pred: tuple[float, bool], gold: tuple[float, bool], rel_tol: float) -> bool:
    """Numeric equality; a side written with `%` may also be read as a fraction (50% == 0.5 == 50)."""

    def readings(value: float, percent: bool) -> tuple[float, ...]:
        return (value, value / 100) if percent else (value,)

    return any(math.isclose(p, g, rel_tol=rel_tol, abs_tol=1e-9) for p in readings(*pred) for g in readings(*gold))


def _split_top_level(s: str) -> list[str] | None:
    """Split `s` on commas that are not nested in brackets or braces; `None` if a bracket closes unopened."""
    items, depth, current = [], 0, []
    for char in s:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth < 0:
                return None
        if char == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    items.append("".join(current).strip())
    return items


def _as_sequence(s: str) -> tuple[str, list[str]] | None:
    """`(a, b]` -> ("(]", ["a", "b"]); a bare `a, b` has no brackets (""). `None` if `s` is not a sequence."""
    brackets, inner = "", s
    for opening in ("\\{", "(", "["):
        closing = next((c for c in ("\\}", ")", "]") if s.endswith(c)), None)
        if s.startswith(opening) and closing is not None and len(s) > len(opening) + len(closing):
            brackets, inner = opening + closing, s[len(opening) : -len(closing)]
            break
    items = _split_top_level(inner.replace("\\{", "").replace("\\}", "") if brackets == "\\{\\}" else inner)
    if items is None or len(items) < 2 or not all(items):
        return None
    return brackets, items


def _unordered_equal(pred_items: list[str], gold_items: list[str], deadline: float) -> bool:
    """Whether each gold element equals a distinct predicted element (lists of solutions, sets)."""
    remaining = list(pred_items)
    for gold in gold_items:
        match = next((pred for pred in remaining if _equal(pred, gold, deadline)), None)
        if match is None:
            return False
        remaining.remove(match)
    return True


def _sequences_equal(pred: tuple[str, list[str]], gold: tuple[str, list[str]], deadline: float) -> bool:
    """Tuples and intervals compare element-wise and their brackets must agree when both sides have them; sets
    (`\\{a, b\\}`) and bare lists of solutions (`a, b`) compare in any order."""
    (pred_brackets, pred_items), (gold_brackets, gold_items) = pred, gold
    if len(pred_items) != len(gold_items):
        return False
    if pred_brackets and gold_brackets and pred_brackets != gold_brackets:
        return False
    if {pred_brackets, gold_brackets} <= {"", "\\{\\}"}:
        return _unordered_equal(pred_items, gold_items, deadline)
    return all(_equal(p, g, deadline) for p, g in zip(pred_items, gold_items))


def _compact(s: str) -> str:
    return re.sub(r"\s+", "", s).lower()


def _equal(pred: str, gold: str, deadline: float) -> bool:
    """Equivalence of two answers, cheapest check first; the symbolic check gets the time left until `deadline`."""
    pred, gold = normalize_answer(pred), normalize_answer(gold)
    if not pred or not gold:
        return False
    if _compact(pred) == _compact(gold):
        return True
    pred_number, gold_number = _parse_number(pred), _parse_number(gold)
    if pred_number is not None and gold_number is not None:
        return _numbers_equal(pred_number, gold_number, _REL_TOL)
    pred_sequence, gold_sequence = _as_sequence(pred), _as_sequence(gold)
    if pred_sequence is not None or gold_sequence is not None:
        return (
            pred_sequence is not None
            and gold_sequence is not None
            and _sequences_equal(pred_sequence, gold_sequence, deadline)
        )
    if re.fullmatch(r"[a-zA-Z ]+", pred) and re.fullmatch(r"[a-zA-Z ]+", gold):
        return False  # two different words (e.g. "yes" / "no"): nothing for sympy to prove
    if len(pred) > _MAX_SYMBOLIC_CHARS or len(gold) > _MAX_SYMBOLIC_CHARS:
        return False
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False
    return symbolic_equal(pred.replace("%", "/100"), gold.replace("%", "/100"), timeout=remaining, rel_tol=_REL_TOL)


def math_equal(prediction: str | float | None, reference: str | float | None, *, timeout: float = 5.0) -> bool:
    """Whether a predicted final answer equals the reference answer.

    Handles thousands separators, currency and units ("$5", "5 dollars", "5 cm"), percentages ("50%" == 0.5 == 50
    when one side has `%`), fractions (`\\frac{1}{2}`, `\\dfrac`, `1/2`, 0.5), `\\text{}`, degrees, `x = 5` vs `5`,
    tuples and intervals element-wise (bracket kinds must agree), and symbolic equivalence (`\\sqrt{8}` vs
    `2\\sqrt{2}`) through sympy. Numbers are compared with a relative tolerance of 1e-4.

    Args:
        prediction: The extracted answer of a completion (`None` never matches).
        reference: The gold answer.
        timeout: Seconds allowed for the whole comparison; the symbolic step runs in a worker process that is
            killed when it exceeds the time left, in which case the answer counts as not equal.
    """
    if prediction is None or reference is None:
        return False
    return _equal(str(prediction), str(reference), time.monotonic() + timeout)
