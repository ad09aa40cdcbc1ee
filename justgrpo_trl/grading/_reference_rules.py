"""The rules of the JustGRPO paper's grader (a Qwen-Math-style `extract_answer` + `math_equal`), written afresh.

This module is standalone (standard library at import time, sympy and latex2sympy2_extended only inside
`symbolic_equal`): the grading fork server loads it by path to run the symbolic step in a child process, and
`justgrpo_trl.grading.reference` imports it for everything else. It reproduces the reference's behaviour,
including where this project's grader disagrees on purpose (see docs/math_grading.md):

* extraction: a minerva-style "final answer is $...$. I hope" span, else the last "boxed" (an unclosed box runs to
  the end of the text), else everything after the last "he answer is" / "final answer is", else the last number;
* normalization drops a trailing `\\text{...}`, the reference's list of unit and noun words (transcribed with its
  source; single letters such as "a", "s", "t" included, each as a whole word, read as regular expressions), the
  substring "and", percent signs, degrees, `x=` prefixes, spaces;
* numbers: equal within a relative 1e-4, and the prediction may also be the gold ×100 or ÷100;
* intervals and tuples: bracket kinds are ignored when the prediction is bracketed one way and the gold not the
  other way round, and all `{}()` are removed before a string comparison;
* then element-wise lists and matrices, equations, and sympy (`simplify(a - b) == 0`, numeric 1e-4).

Deliberate differences from the reference code: sympy's `parse_expr` (which evaluates Python) only sees strings of
arithmetic characters; number words ("five") are not converted (the reference uses the `word2number` package); the
antlr-based `sympy.parsing.latex.parse_latex` is not tried (it needs an antlr runtime that conflicts with
math-verify's), latex2sympy2_extended stands in for latex2sympy2.
"""

import math
import re

__all__ = ["extract_answer", "math_equal", "NeedsSymbolic", "strip_answer", "symbolic_equal"]

_REL_TOL = 1e-4

# The unit and noun words the reference strips (mostly from MathQA), transcribed as data, in the reference's order
# (it matters: each is removed in turn), duplicates included, from REFERENCE_UNIT_SOURCE. Each is matched as a whole
# word and, as in the reference, as a regular expression, not a literal: the "." of "a ." matches any character.
# Note the single letters: "5 m" -> "5", but also "x + a" -> "x +". Every word also counts in its "-s" plural.
REFERENCE_UNIT_SOURCE = ("LeapLabTHU/JustGRPO", "eebe50e71f5b84ec6b3824cb502664577989db1b", "utils/parser.py")
REFERENCE_UNIT_TEXTS = [
    "east", "degree", "mph", "kmph", "ft", "m sqaure", " m east", "sq m", "deg", "mile", "q .", "monkey", "prime",
    "ratio", "profit of rs", "rd", "o", "gm", "p . m", "lb", "tile", "per", "dm", "lt", "gain", "ab", "way", "west",
    "a .", "b .", "c .", "d .", "e .", "f .", "g .", "h .", "t", "a", "h", "no change", "men", "soldier", "pie",
    "bc", "excess", "st", "inches", "noon", "percent", "by", "gal", "kmh", "c", "acre", "rise", "a . m", "th",
    "π r 2", "sq", "mark", "l", "toy", "coin", "sq . m", "gallon", "° f", "profit", "minw", "yr", "women", "feet",
    "am", "pm", "hr", "cu cm", "square", "v â € ™", "are", "rupee", "rounds", "cubic", "cc", "mtr", "s", "ohm",
    "number", "kmph", "day", "hour", "minute", "min", "second", "man", "woman", "sec", "cube", "mt", "sq inch",
    "mp", "∏ cm ³", "hectare", "more", "sec", "unit", "cu . m", "cm 2", "rs .", "rs", "kg", "g", "month", "km", "m",
    "cm", "mm", "apple", "liter", "loss", "yard", "pure", "year", "increase", "decrease", "d", "less", "Surface",
    "litre", "pi sq m", "s .", "metre", "meter", "inch",
]  # fmt: skip
UNIT_TEXTS = [*REFERENCE_UNIT_TEXTS, *(unit + "s" for unit in REFERENCE_UNIT_TEXTS)]


class NeedsSymbolic(Exception):
    """Raised by a `symbolic` callback that defers the sympy step (the caller then runs it in a child process)."""


# --------------------------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------------------------


def _box_content(after: str) -> str:
    """What the reference reads after the word "boxed": a brace group (to the end of the text if never closed),
    else everything up to the next `$`."""
    if not after:
        return ""
    if after[0] != "{":
        return after.split("$")[0].strip()
    depth, content = 1, []
    for char in after[1:]:
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                break
        content.append(char)
    return "".join(content)


def extract_answer(text: str) -> str:
    """The reference's final answer of a completion (already normalized with `strip_answer`)."""
    if "final answer is $" in text and "$. I hope" in text:
        answer = text.split("final answer is $", 1)[1].split("$. I hope", 1)[0].strip()
    elif "boxed" in text:
        answer = _box_content(text.split("boxed")[-1])
    elif "he answer is" in text:
        answer = text.split("he answer is")[-1].strip()
    elif "final answer is" in text:
        answer = text.split("final answer is")[-1].strip()
    else:
        numbers = re.findall(r"-?\d*\.?\d+", text.replace(",", ""))
        answer = numbers[-1] if numbers else ""
    answer = re.sub(r"\n\s*", "", answer)
    if answer.startswith(":"):
        answer = answer[1:]
    if answer.endswith("."):
        answer = answer[:-1]
    if answer.endswith("/"):
        answer = answer[:-1]
    return strip_answer(answer)


# --------------------------------------------------------------------------------------------------------------
# Normalization
# --------------------------------------------------------------------------------------------------------------


def _braced_fracs(s: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, `\\frac1{72}` -> `\\frac{1}{72}` (one character per brace-less argument)."""
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if part.startswith("{"):
            out += part
        elif len(part) < 2:
            return s
        elif part[1] == "{":
            out += "{" + part[0] + "}" + part[1:]
        else:
            out += "{" + part[0] + "}{" + part[1] + "}" + part[2:]
    return out


def _slash_to_frac(s: str) -> str:
    """`3/4` (two integers) -> `\\frac{3}{4}`."""
    halves = s.split("/")
    if len(halves) == 2 and re.fullmatch(r"-?\d+", halves[0]) and re.fullmatch(r"-?\d+", halves[1]):
        if s == f"{int(halves[0])}/{int(halves[1])}":
            return f"\\frac{{{int(halves[0])}}}{{{int(halves[1])}}}"
    return s


def strip_answer(s: str) -> str:
    """The reference's normalization of an answer string (see the module docstring)."""
    s = str(s).strip().replace("\n", "").rstrip(".")
    s = s.replace("\\!", "")
    s = re.sub(r"\\begin\{array\}\{.*?\}", r"\\begin{pmatrix}", s)
    s = re.sub(r"\\end\{array\}", r"\\end{pmatrix}", s).replace("bmatrix", "pmatrix")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\neq", "\\ne").replace("\\leq", "\\le").replace("\\geq", "\\ge")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\{", "{").replace("\\}", "}")
    without_text = re.sub(r"\\text\{.*?\}$", "", s).strip()
    if without_text and without_text != s:
        s = without_text
    for _ in range(2):
        for unit in UNIT_TEXTS:
            stripped = re.sub(r"(^|\W)" + unit + r"($|\W)", r"\1\2", s)  # unescaped, as the reference
            if stripped:
                s = stripped
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "").replace("$", "").replace("\\(", "").replace("\\)", "")
    s = re.sub(r"\\text\{(.*?)\}", r"\1", s)
    for prefix in ("x=", "y=", "z=", "x\\in", "y\\in", "z\\in", "x\\to", "y\\to", "z\\to"):
        s = s.replace(prefix, "")
    s = s.replace("\\emptyset", "{}").replace("(-\\infty,\\infty)", "\\mathbb{R}")
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    s = s.replace("infinity", "\\infty")
    if "\\infty" not in s:
        s = s.replace("inf", "\\infty")
    s = s.replace("+\\inity", "\\infty")
    s = s.replace("and", "").replace("\\mathbf", "")
    s = re.sub(r"\\mbox{.*?}", "", s)
    if "j" in s and "i" not in s:
        s = s.replace("j", "i")
    s = re.sub(r"(\d+)\.0*([^\d])", r"\1\2", s)
    s = re.sub(r"(\d+)\.0*$", r"\1", s)
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        s = sides[1]
    s = re.sub(r"\\sqrt(\w+)", r"\\sqrt{\1}", s)
    s = s.replace(" ", "")
    return _slash_to_frac(_braced_fracs(s))


# --------------------------------------------------------------------------------------------------------------
# Equality
# --------------------------------------------------------------------------------------------------------------


def _as_float(s: str) -> float | None:
    s = str(s).replace(",", "")
    try:
        return float(s)
    except ValueError:
        pass
    if s.endswith("%"):
        s = s[:-1].rstrip("\\")
        try:
            return float(s) / 100
        except ValueError:
            pass
    return None


def _choice(pred: str) -> str:
    pred = pred.strip("\n").rstrip(".").rstrip("/").strip(" ").lstrip(":")
    letters = re.findall(r"\b(A|B|C|D|E)\b", pred.upper())
    return (letters[-1] if letters else pred.strip().strip(".")).rstrip(".").rstrip("/")


def _numbers_equal(pred: str, gold: str) -> bool:
    p, g = _as_float(pred), _as_float(gold)
    if p is None or g is None:
        return False
    for reading in (g / 100, g, g * 100):
        try:
            if math.isclose(reading, p, rel_tol=_REL_TOL):
                return True
        except (OverflowError, ValueError):
            continue
    return False


def _brackets(s: str, opening: str, closing: str) -> bool:
    return s.startswith(opening) and s.endswith(closing)


def _is_list(s: str) -> bool:
    return re.match(r"(\(|\[).+(\)|\])", s) is not None


def _is_matrix(s: str) -> bool:
    return s.startswith(("\\begin{pmatrix}", "\\begin{bmatrix}")) and s.endswith(("\\end{pmatrix}", "\\end{bmatrix}"))


def _set_braces_to_pmatrix(s: str) -> str:
    groups = re.findall(r"\{.*,.*\}", s.strip())
    return ", ".join("\\begin{pmatrix}" + g.strip("{}").replace(",", "\\") + "\\end{pmatrix}" for g in groups)


def math_equal(pred: str, gold: str, symbolic) -> bool:
    """The reference's `math_equal` on two normalized answers; `symbolic(a, b)` is its sympy step."""
    if pred is None or gold is None:
        return False
    pred, gold = str(pred), str(gold)
    if pred.strip().lower() == gold.strip().lower():
        return True
    if gold in ("A", "B", "C", "D", "E") and _choice(pred) == gold:
        return True
    if _numbers_equal(pred, gold):
        return True
    if not pred:
        return False
    pred, gold = pred.strip(), gold.strip()
    if "pmatrix" in pred and "pmatrix" not in gold:
        gold = _set_braces_to_pmatrix(gold)
    pred_bare, gold_bare = pred, gold
    if (_brackets(pred, "[", "]") and not _brackets(gold, "(", ")")) or (
        _brackets(pred, "(", ")") and not _brackets(gold, "[", "]")
    ):
        pred_bare, gold_bare = pred_bare.strip("[]()"), gold_bare.strip("[]()")
    for bracket in "{}()":
        pred_bare, gold_bare = pred_bare.replace(bracket, ""), gold_bare.replace(bracket, "")
    if pred_bare.lower() == gold_bare.lower():
        return True
    if _is_list(pred) and _is_list(gold):
        pred_items, gold_items = pred[1:-1].split(","), gold[1:-1].split(",")
        return len(pred_items) == len(gold_items) and all(
            math_equal(p, g, symbolic) for p, g in zip(pred_items, gold_items)
        )
    if _is_matrix(pred) and _is_matrix(gold):
        rows = [
            [r.strip() for r in m[len("\\begin{pmatrix}") : -len("\\end{pmatrix}")].split("\\\\") if r.strip()]
            for m in (pred, gold)
        ]
        if len(rows[0]) != len(rows[1]):
            return False
        for pred_row, gold_row in zip(*rows):
            pred_cells, gold_cells = pred_row.split("&"), gold_row.split("&")
            if len(pred_cells) != len(gold_cells) or not all(
                math_equal(p, g, symbolic) for p, g in zip(pred_cells, gold_cells)
            ):
                return False
        return True
    if pred.count("=") == 1 and gold.count("=") == 1:
        p_lhs, p_rhs = pred.split("=")
        g_lhs, g_rhs = gold.split("=")
        difference = f"{p_lhs.strip()} - ({p_rhs.strip()})"
        target = f"{g_lhs.strip()} - ({g_rhs.strip()})"
        return symbolic(difference, target) or symbolic(f"-({difference})", target)
    if pred.count("=") == 1 and len(pred.split("=")[0].strip()) <= 2 and "=" not in gold:
        return math_equal(pred.split("=")[1], gold, symbolic)
    if gold.count("=") == 1 and len(gold.split("=")[0].strip()) <= 2 and "=" not in pred:
        return math_equal(pred, gold.split("=")[1], symbolic)
    return bool(symbolic(pred, gold))


# --------------------------------------------------------------------------------------------------------------
# The sympy step (imports sympy lazily: run it in a child process)
# --------------------------------------------------------------------------------------------------------------

_SAFE_PLAIN_RE = re.compile(r"^[\w\s.+\-*/^(),]*$")
_PLAIN_NAMES = {"sqrt", "pi", "e", "sin", "cos", "tan", "log", "ln", "exp", "abs", "oo", "I"}


def _parse(text: str):
    from latex2sympy2_extended import latex2sympy
    from sympy.parsing.sympy_parser import (
        convert_xor,
        implicit_multiplication_application,
        parse_expr,
        standard_transformations,
    )

    for candidate in (text.replace("\\\\", "\\"), text):
        try:
            return latex2sympy(candidate)
        except Exception:
            pass
    names = set(re.findall(r"[A-Za-z_]\w*", text))
    single_letters = {n for n in names if len(n) == 1}
    if "\\" not in text and _SAFE_PLAIN_RE.match(text) and "__" not in text and names <= _PLAIN_NAMES | single_letters:
        try:
            transformations = standard_transformations + (implicit_multiplication_application, convert_xor)
            return parse_expr(text, transformations=transformations)
        except Exception:
            pass
    return text


def symbolic_equal(pred: str, gold: str) -> bool:
    """The reference's sympy step: same object, `simplify(a - b) == 0`, equal equations, numerically equal within a
    relative 1e-4, or matrices equal once every entry is rounded to 3 decimals."""
    import sympy

    a, b = _parse(pred), _parse(gold)
    checks = (
        lambda: str(a) == str(b) or a == b,
        lambda: a.equals(b) or sympy.simplify(a - b) == 0,
        lambda: abs(a.lhs - a.rhs).equals(abs(b.lhs - b.rhs)),
        lambda: math.isclose(float(sympy.N(a)), float(sympy.N(b)), rel_tol=_REL_TOL),
        lambda: a.shape == b.shape and a.applyfunc(lambda x: round(x, 3)).equals(b.applyfunc(lambda x: round(x, 3))),
    )
    for check in checks:
        try:
            if check():
                return True
        except Exception:
            pass
    return False
