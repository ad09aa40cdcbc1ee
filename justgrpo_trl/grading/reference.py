"""Reference-compatible math grading: the JustGRPO paper's grader rules, to compare with published numbers.

The paper reports accuracies from a Qwen-Math-style `extract_answer` + `math_equal` (rules in
`justgrpo_trl.grading._reference_rules`). They differ from this project's grader in both directions
(docs/math_grading.md), e.g. the reference accepts `50` for a gold `0.5` (×100 / ÷100), strips unit words
including single letters, takes everything after "the answer is", ignores bracket kinds in intervals, and keeps
the relative 1e-4 tolerance on integers (`12346` == `12345`). Use it to report like-for-like numbers, never as a
training reward.

Cheap checks run in-process; the sympy step runs in the grading fork server (`justgrpo_trl.grading.symbolic`),
each comparison with its own budget, like the project's grader.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import _reference_rules as rules
from .symbolic import compare_batch

__all__ = ["reference_extract_answer", "reference_gold", "reference_math_equal", "reference_math_equal_batch"]


def reference_extract_answer(text: str) -> str:
    """The reference's final answer of a completion, normalized ("" when there is none)."""
    return rules.extract_answer(text)


def reference_gold(gold: str) -> str:
    """A gold answer normalized as the reference normalizes its ground truth."""
    return rules.strip_answer(gold)


def _defer(pred: str, gold: str) -> bool:
    raise rules.NeedsSymbolic


def reference_math_equal_batch(
    pairs: Sequence[tuple[str | None, str | None]], *, timeout: float = 5.0, max_workers: int | None = None
) -> list[bool]:
    """The reference's verdict on (normalized prediction, normalized gold) pairs; `timeout` is the seconds each
    sympy comparison may run."""
    verdicts = [False] * len(pairs)
    requests, where = [], []
    for i, (pred, gold) in enumerate(pairs):
        if pred is None or gold is None:
            continue
        try:
            verdicts[i] = bool(rules.math_equal(pred, gold, _defer))
        except rules.NeedsSymbolic:
            requests.append(("reference", pred, gold))
            where.append(i)
    for i, verdict in zip(where, compare_batch(requests, timeout=timeout, max_workers=max_workers)):
        verdicts[i] = bool(verdict)
    return verdicts


def reference_math_equal(completion: str, gold: str, *, timeout: float = 5.0) -> bool:
    """Whether the reference grader credits `completion` (the whole text) against the raw `gold` answer."""
    pairs = [(reference_extract_answer(completion), reference_gold(gold))]
    return reference_math_equal_batch(pairs, timeout=timeout)[0]
