"""Answer extraction and answer equivalence for math word problems (GSM8K, MATH).

Extraction follows the order used by the d1 / JustGRPO evaluation scripts: the last `\\boxed{...}` (or
`\\fbox{...}`), then "the answer is X", then the last number in the text. A last box that is empty or never closed
(`\\boxed{`, `\\boxed{}`) means the completion has no answer: we do not fall back to a number from the reasoning
(see `extract_answer`).

Equivalence (`math_equal`, `math_equal_batch`) normalizes both answers (this module), decides what is cheap and
exact in-process (identical strings, plain numbers, words), and hands everything else to math-verify, which runs
in processes forked by `justgrpo_trl.grading.symbolic`, each with its own wall-clock budget. The tolerances:

* integers (and any two exactly written numbers: `0.5`, `1/2`, `\\frac{1}{2}`, `1e400`) compare exactly, as
  rationals: `12346 != 12345`, and 31-digit integers off by one differ;
* a decimal written with a decimal point against a fraction whose decimal expansion does not terminate (`4.6667`
  vs `\\frac{14}{3}`) is accepted within a relative 1e-4 (a model cannot write 14/3 as a finite decimal); an
  integer literal never is (`333300 != \\frac{1000000}{3}`);
* a `%` on one side lets it also be read as a fraction (`50%` equals `0.5` and `50`);
* everything else is math-verify's `verify` with its defaults: floats are rounded to 6 decimals, so `0.333333`
  equals `\\frac{1}{3}` but `0.3333` does not, and `3.14` is not `\\pi`.

A prediction that is not one answer is not equal to a gold that is one (`is_single_answer`): a relation with a
number on its left (`3 = 4`), two or more relation signs in one item (`x = 3 = 4 = 5`; an interval `a < x < b`
is one answer), a disjunction (`3 \\lor 4`, `3 \\vee 4`, `3 \\text{ or } 4`) or a `cases` environment. `x = 3`
is the answer 3, and `x = 3, y = 4` the pair (3, 4).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction

from .symbolic import compare_batch

__all__ = [
    "extract_answer",
    "extract_boxed",
    "extract_gsm8k_gold",
    "extract_last_number",
    "extract_math_gold",
    "is_single_answer",
    "math_equal",
    "math_equal_batch",
    "normalize_answer",
]

_BOXED_COMMANDS = ("\\boxed", "\\fbox")

# A number as written in prose: optional sign, optional thousands separators, optional decimals, optional "/b"
# fraction and an optional percent sign. The sign is validated in `extract_last_number` (a "-" right after a word
# or a digit is a minus or a dash, not a sign).
_NUMBER_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+(?:\.\d+)?)?(?:\\?%)?|-?\.\d+(?:\\?%)?")
_ANSWER_IS_RE = re.compile(r"answer\s*(?:is|:)\s*:?", re.IGNORECASE)
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)|\n")
_THOUSANDS_RE = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?%?$")
_THOUSANDS_ANYWHERE_RE = re.compile(r"(?<![\d.])(\d{1,3}(?:,\d{3})+)(?![\d,])")
_PLAIN_NUMBER_RE = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE]([-+]?\d+))?$")
_SLASH_FRACTION_RE = re.compile(r"^([-+]?)\(?(\d+(?:\.\d+)?)\)?/\(?(\d+(?:\.\d+)?)\)?$")
_LATEX_FRACTION_RE = re.compile(r"^([-+]?)\\frac(?:\{([^{}]+)\}\{([^{}]+)\}|(\d)(\d))$")
_TEXT_COMMAND_RE = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mathit|mbox|operatorname)\s*\{([^{}]*)\}")
_ASSIGNMENT_RE = re.compile(r"^[a-zA-Z](?:_\{?\w+\}?)?\s*(?:=|\\in|\\approx|≈)\s*(.+)$", re.DOTALL)
_UNIT_SUFFIX_RE = re.compile(
    r"^(?P<value>[-+]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?:/\d+)?%?|[-+]?\\frac\{\d+\}\{\d+\})"
    r"(?:\s+(?P<words>[a-zA-Z][a-zA-Z.\s]*(?:\^\{?\d\}?)?)"
    r"|(?P<unit>cm|mm|km|kg|mg|ml|mph|kph|ft|yd|lbs?|oz|hrs?|mins?|secs?|sq\s*ft)(?:\^\{?\d\}?)?)$"
)
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|°|\\degree")
# `\\` (a row break) is matched first so that its second backslash is never read as the start of `\ ` (a space).
_LATEX_SPACING_RE = re.compile(r"\\\\|\\left\b|\\right\b|\\[,;:> ]|\\q?quad\b|~")
# A trailing `\text{...}` of words after something else is a unit ("4\pi \text{ square units}", "5\text{ cm}^2").
_TRAILING_TEXT_UNIT_RE = re.compile(
    r"^(?P<value>.*\S)\s*\\(?:text|textrm|mathrm|mbox)\s*\{\s*[a-zA-Z][a-zA-Z.\s]*\}\s*(?:\^\s*\{?\s*[23]\s*\}?)?$",
    re.DOTALL,
)
# Brace-less arguments, as MATH's own gold answers write them: `\sqrt13`, `\frac9{19}`, `\frac{270}7`, `\frac12`.
_SQRT_DIGITS_RE = re.compile(r"\\sqrt\s*(\d+)")
_FRAC_TWO_DIGITS_RE = re.compile(r"\\frac\s*(\d)\s*(\d)")
_FRAC_DIGIT_FIRST_RE = re.compile(r"\\frac\s*(\d)\s*\{")
_FRAC_DIGIT_SECOND_RE = re.compile(r"\\frac\s*\{([^{}]*)\}\s*(\d)")
_CHOICE_RE = re.compile(r"^\(\s*([A-Ea-e])\s*\)$")
# `a+bj` (engineering notation) is `a+bi` when `j` is the only letter.
_J_COMPLEX_RE = re.compile(r"^[\d\s.+\-*/()j]*\dj[\d\s.+\-*/()]*$|^[\d\s.+\-*/()]*[+\-]\s*j$")
_BIG_DELIMITERS_RE = re.compile(r"\\(?:big|Big|bigg|Bigg)[lr]?\b")

# What makes a box more than one answer (`is_single_answer`): a disjunction, `cases`, or relation signs.
_DISJUNCTION_RE = re.compile(
    r"\\(?:lor|vee)(?![a-zA-Z])|\\begin\s*\{\s*cases\s*\}|(?<![a-zA-Z])or(?![a-zA-Z])", re.IGNORECASE
)
_RELATION_RE = re.compile(
    r"(?P<less><=|<|≤|\\(?:leqslant|leq|le|lt)(?![a-zA-Z]))"
    r"|(?P<greater>>=|>|≥|\\(?:geqslant|geq|ge|gt)(?![a-zA-Z]))"
    r"|!=|=|≠|≈|\\(?:neq|ne|approx|in)(?![a-zA-Z])"
)
# A side made of numbers only: digits, arithmetic, brackets, `\frac`, `\sqrt`, `\pi`, `\cdot`, `\times`.
_NUMERIC_SIDE_RE = re.compile(r"(?:[\d\s.,+\-*/^(){}!]|\\(?:d?frac|sqrt|pi|cdot|times|left|right)(?![a-zA-Z]))+")
_VARIABLE_RE = re.compile(r"[a-zA-Z](?:_\{?\w+\}?)?")
_INTEGER_LITERAL_RE = re.compile(r"[-+]?\d+%?")

# Relative tolerance of a decimal against a fraction whose decimal expansion does not terminate (`4.6667` vs 14/3).
_REL_TOL = 1e-4
# A plain number with a larger exponent is left to math-verify (under its deadline): `1e999999999` as an exact
# rational would take gigabytes.
_MAX_EXPONENT = 1000
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


def _last_box_is_malformed(text: str) -> bool:
    """Whether the last `\\boxed` / `\\fbox` of `text` opens a group that is empty or never closed."""
    start = max(text.rfind(command) for command in _BOXED_COMMANDS)
    if start < 0:
        return False
    command = next(c for c in _BOXED_COMMANDS if text.startswith(c, start))
    rest = text[start + len(command) :].lstrip(" ")
    if not rest.startswith("{"):
        return False
    group = _balanced_group(rest, 0)
    return group is None or not group[0].strip()


def extract_answer(text: str) -> str | None:
    """The final answer of a completion, in the reference order: last box, "the answer is X", last number.

    A last box that is empty or never closed (`\\boxed{`, typically a completion cut at the length limit, or
    `\\boxed{}`) gives `None`: the model opened its answer slot and did not fill it, and falling back to the last
    number would credit a number of the reasoning it never committed to (on LLaDA-8B-Instruct's GSM8K generations
    that fallback credited about 1.2 points that a strict reading does not). The reference-compatible grader
    (`justgrpo_trl.grading.reference`) keeps the reference behaviour instead: an unclosed box's content runs to
    the end of the text.
    """
    if _last_box_is_malformed(text):
        return None
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

    Thousands separators of a lone number are removed (also MATH's `10,\\!080`) and `\\%` becomes `%` (kept, so
    that percentages can be compared numerically); brace-less `\\sqrt13` / `\\frac9{19}` get their braces, a
    trailing unit (`\\text{ cm}^2`, "dollars") is dropped, `\\text{(C)}` becomes `C` and `1+2j` becomes `1+2i`.
    The result is meant for comparison, not display.
    """
    s = answer.strip()
    s = _unwrap_boxed(s)
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"\\[()\[\]]", "", s)  # \( \) \[ \] display delimiters
    s = s.replace("\\!", "").replace("{,}", ",")  # `10,\!080`, `10{,}080`: a thousands separator
    s = s.strip().rstrip(".").strip()
    while True:  # trailing unit words after a value: `4\pi \text{ square units}`, `\frac{270}7\text{ degrees}`
        unit = _TRAILING_TEXT_UNIT_RE.match(s)
        if unit is None:
            break
        s = unit.group("value")
    s = _unwrap_text_commands(s)
    s = _LATEX_SPACING_RE.sub(lambda m: m.group(0) if m.group(0) == "\\\\" else " ", s)
    s = _BIG_DELIMITERS_RE.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\displaystyle", "")
    s = _SQRT_DIGITS_RE.sub(r"\\sqrt{\1}", s)
    s = _FRAC_TWO_DIGITS_RE.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_DIGIT_FIRST_RE.sub(r"\\frac{\1}{", s)
    s = _FRAC_DIGIT_SECOND_RE.sub(r"\\frac{\1}{\2}", s)
    s = s.replace("\\%", "%").replace("\\cdot", "*").replace("\\times", "*").replace("\u2212", "-")
    s = _DEGREE_RE.sub("", s)
    s = _unwrap_braces(re.sub(r"\s+", " ", s).strip().rstrip(".").strip())
    assignment = _ASSIGNMENT_RE.match(s)
    if assignment:
        s = assignment.group(1).strip()
    for currency in ("USD", "US$", "Rs.", "\u20ac", "\u00a3", "\u00a5"):
        s = s.replace(currency, "")
    s = _strip_units(s.strip())
    if _THOUSANDS_RE.match(s):
        s = s.replace(",", "")
    choice = _CHOICE_RE.match(s)
    if choice:  # `\text{(C)}` is the choice `C`
        s = choice.group(1).upper()
    if "i" not in s and _J_COMPLEX_RE.match(s):
        s = s.replace("j", "i")
    return s.strip()


# --------------------------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------------------------


def _parse_number(s: str) -> tuple[Fraction, bool] | None:
    """`s` as an exact rational and whether it was a percentage; `None` if `s` is not a plain number or a simple
    fraction (`1/2`, `\\frac{1}{2}`), or has an exponent beyond `_MAX_EXPONENT`."""
    percent = s.endswith("%")
    s = s.rstrip("%").strip().replace(" ", "")
    try:
        match = _PLAIN_NUMBER_RE.match(s)
        if match:
            if match.group(1) is not None and abs(int(match.group(1))) > _MAX_EXPONENT:
                return None
            return Fraction(s), percent
        match = _SLASH_FRACTION_RE.match(s)
        if match:
            sign, numerator, denominator = match.groups()
            value = Fraction(numerator) / Fraction(denominator)
            return (-value if sign == "-" else value), percent
        match = _LATEX_FRACTION_RE.match(s)
        if match:
            sign = match.group(1)
            numerator, denominator = match.group(2) or match.group(4), match.group(3) or match.group(5)
            if _PLAIN_NUMBER_RE.match(numerator) and _PLAIN_NUMBER_RE.match(denominator):
                value = Fraction(numerator) / Fraction(denominator)
                return (-value if sign == "-" else value), percent
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return None


def _terminates(value: Fraction) -> bool:
    """Whether `value` has a finite decimal expansion (its reduced denominator has no prime but 2 and 5)."""
    denominator = value.denominator
    for prime in (2, 5):
        while denominator % prime == 0:
            denominator //= prime
    return denominator == 1


def _numbers_equal(pred: tuple[Fraction, bool], gold: tuple[Fraction, bool], *, exact: bool = False) -> bool:
    """Exact equality of rationals (so distinct integers always differ); a side written with `%` may also be read
    as a fraction (50% == 0.5 == 50); unless `exact` (either side is an integer literal), a decimal may
    approximate a non-terminating fraction within `_REL_TOL`."""

    def readings(value: Fraction, percent: bool) -> tuple[Fraction, ...]:
        return (value, value / 100) if percent else (value,)

    for p in readings(*pred):
        for g in readings(*gold):
            if p == g:
                return True
            if exact or _terminates(p) == _terminates(g):
                continue
            if abs(p - g) <= _REL_TOL * max(abs(p), abs(g)):
                return True
    return False


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


def _brackets(s: str) -> str | None:
    """The bracket kinds of a sequence answer: `(]` for `(a, b]`, `\\{\\}` for a set, `""` for a bare `a, b`;
    `None` if `s` is not a sequence of two or more items."""
    brackets, inner = "", s
    for opening in ("\\{", "(", "["):
        closing = next((c for c in ("\\}", ")", "]") if s.endswith(c)), None)
        if s.startswith(opening) and closing is not None and len(s) > len(opening) + len(closing):
            brackets, inner = opening + closing, s[len(opening) : -len(closing)]
            break
    items = _split_top_level(inner)
    if items is None or len(items) < 2 or not all(items):
        return None
    return brackets


def _compact(s: str) -> str:
    return re.sub(r"\s+", "", s).lower()


def _for_math_verify(s: str) -> str:
    """A normalized answer back in LaTeX for math-verify (`%` -> `\\%`)."""
    return re.sub(r"(?<!\\)%", r"\\%", s)


def _is_one_relation(item: str) -> bool:
    """Whether one comma-separated item holds at most one answer: no relation sign, one sign with something other
    than a number on its left (`x = 3`, `y > 2`), or an interval around one variable (`-2 < x \\le 3`)."""
    signs = list(_RELATION_RE.finditer(item))
    if not signs:
        return True
    if len(signs) == 1:
        left = item[: signs[0].start()].strip()
        return not (_NUMERIC_SIDE_RE.fullmatch(left) and re.search(r"\d|\\pi", left))
    if len(signs) == 2:
        first, second = signs
        middle = item[first.end() : second.start()].strip()
        same_direction = (first["less"] and second["less"]) or (first["greater"] and second["greater"])
        return bool(same_direction and _VARIABLE_RE.fullmatch(middle))
    return False


def is_single_answer(answer: str) -> bool:
    """Whether a final answer states one answer, not several to choose from.

    Not one answer: a disjunction (`3 \\lor 4`, `3 \\vee 4`, `3 \\text{ or } 4`), a `cases` environment, a relation
    with a number on its left (`3 = 4`), or two or more relation signs in one comma-separated item
    (`x = 3 = 4 = 5`), except an interval around one variable (`-2 < x < 3`). One answer: `3`, `x = 3`, `y > 2`,
    the pair `x = 3, y = 4`, a set or an interval. A box around the answer is looked through.
    """
    s = _unwrap_boxed(answer.strip()).replace("\\$", "").replace("$", "")
    if _DISJUNCTION_RE.search(s):
        return False
    items = _split_top_level(s) or [s]
    return all(_is_one_relation(item) for item in items)


def _decide(pred: str, gold: str) -> bool | tuple[str, str]:
    """The verdict on two raw answers when it is cheap and exact, else the normalized pair for math-verify."""
    if not is_single_answer(pred) and is_single_answer(gold):
        return False  # several candidates (`3 = 4`, `3 \\lor 4`) are not the one answer asked for
    pred, gold = normalize_answer(pred), normalize_answer(gold)
    if not pred or not gold:
        return False
    if _compact(pred) == _compact(gold):
        return True
    pred_number, gold_number = _parse_number(pred), _parse_number(gold)
    if pred_number is not None and gold_number is not None:
        exact = any(_INTEGER_LITERAL_RE.fullmatch(side.replace(" ", "")) for side in (pred, gold))
        return _numbers_equal(pred_number, gold_number, exact=exact)
    if re.fullmatch(r"[a-zA-Z ]+", pred) and re.fullmatch(r"[a-zA-Z ]+", gold):
        return False  # two different words ("yes" / "no"): math-verify would read them as products of symbols
    pred_brackets, gold_brackets = _brackets(pred), _brackets(gold)
    if pred_brackets and gold_brackets and pred_brackets != gold_brackets:
        return False  # a set is not an interval or a tuple, `(a, b)` is not `[a, b]` (math-verify says otherwise)
    if len(pred) > _MAX_SYMBOLIC_CHARS or len(gold) > _MAX_SYMBOLIC_CHARS:
        return False
    return _for_math_verify(pred), _for_math_verify(gold)


def math_equal_batch(
    pairs: Sequence[tuple[str | float | None, str | float | None]],
    *,
    timeout: float = 5.0,
    max_workers: int | None = None,
) -> list[bool]:
    """`math_equal` for many (prediction, reference) pairs at once: cheap checks in-process, the rest in parallel
    (at most `max_workers` at once, default the CPU cores), each with `timeout` seconds from when a worker starts
    it.

    An answer that never finishes (`10^{10^{10}}`) costs its own `timeout` (on one of the workers), and the answers
    queued behind it still get their whole budget (see `justgrpo_trl.grading.symbolic`).
    """
    verdicts: list[bool] = [False] * len(pairs)
    requests, where = [], []
    for i, (prediction, reference) in enumerate(pairs):
        if prediction is None or reference is None:
            continue
        decided = _decide(str(prediction), str(reference))
        if isinstance(decided, bool):
            verdicts[i] = decided
        else:
            requests.append(("verify", *decided))
            where.append(i)
    for i, verdict in zip(where, compare_batch(requests, timeout=timeout, max_workers=max_workers)):
        verdicts[i] = bool(verdict)
    return verdicts


def math_equal(prediction: str | float | None, reference: str | float | None, *, timeout: float = 5.0) -> bool:
    """Whether a predicted final answer equals the reference answer.

    Handles thousands separators (`10,\\!080`), currency and units ("$5", "5 dollars", "1,000 dollars",
    `4\\pi \\text{ square units}`), percentages ("50%" == 0.5 == 50 when one side has `%`), fractions
    (`\\frac{1}{2}`, `\\frac9{19}`, `1/2`, 0.5), `\\text{}`, `\\text{(C)}` == `C`, degrees, `x = 5` vs `5`, `1+2j`
    vs `1+2i`, and, through math-verify, symbolic equivalence (`\\sqrt{8}` vs `2\\sqrt{2}`), intervals, tuples, sets
    and matrices. Distinct integers are never equal; the tolerances are listed in the module docstring.

    Args:
        prediction: The extracted answer of a completion (`None` never matches).
        reference: The gold answer.
        timeout: Seconds the math-verify step may run (in a child process, killed when it overruns, in which case
            the answer counts as not equal). The default is math-verify's own.
    """
    return math_equal_batch([(prediction, reference)], timeout=timeout)[0]
