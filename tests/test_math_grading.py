"""Answer extraction and `math_equal`: a table of hand-written completions plus targeted unit tests."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from justgrpo_trl.grading.math import (
    extract_answer,
    extract_boxed,
    extract_gsm8k_gold,
    extract_last_number,
    extract_math_gold,
    math_equal,
    normalize_answer,
)

# (completion, gold, expected): the completion goes through `extract_answer`, then `math_equal` against gold.
GRADING_TABLE = [
    # thousands separators, currency and units
    ("She earns 1,234 dollars per week.", "1234", True),
    (r"The total is \boxed{1,000,000}.", "1000000", True),
    (r"So it costs \boxed{\$18}.", "18", True),
    ("It costs $5.00 in total.", "5", True),
    (r"The answer is \boxed{5 \text{ cm}}", "5", True),
    (r"\boxed{12\text{ dollars}}", "12", True),
    ("The answer is 18 dollars.", "18", True),
    (r"\boxed{\$1,234.50}", "1234.5", True),
    (r"\boxed{15 \text{ cm}^2}", "15", True),
    # percentages
    (r"The probability is \boxed{50\%}", "0.5", True),
    (r"The discount is \boxed{50\%}", "50", True),
    (r"\boxed{0.25}", r"25\%", True),
    (r"\boxed{25}", "0.25", False),  # no percent sign on either side: 25 is not 0.25
    # fractions and decimals
    (r"\boxed{0.5}", r"\frac{1}{2}", True),
    (r"\boxed{\dfrac{1}{2}}", "1/2", True),
    (r"\boxed{\frac12}", "0.5", True),
    (r"\boxed{-\frac{3}{4}}", "-0.75", True),
    (r"\boxed{\frac{14}{3}}", "4.6667", True),
    (r"\boxed{\frac{1}{3}}", "0.33", False),
    # boxes: nested braces, \fbox, last box wins, truncated box
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}", True),
    (r"First \boxed{3}, then correcting myself: \boxed{4}", "4", True),
    (r"First \boxed{3}, then correcting myself: \boxed{4}", "3", False),
    (r"\fbox{12}", "12", True),
    (r"\boxed{{{5}}}", "5", True),
    # an unclosed or empty last box is a malformed answer: no fallback to the last number (see `extract_answer`)
    (r"I think \boxed{7} is wrong; the result is \boxed{8", "8", False),
    (r"So she has 12 apples. \boxed{}", "12", False),
    # "the answer is" and the last number
    ("Adding them up, the answer is -7.", "-7", True),
    ("The final answer is: **42**", "42", True),
    ("The answer is 12, because 3 + 9 = 12. Let me double-check with 5 apples.", "12", True),
    ("I got 12 and then 15", "12", False),  # the last number wins, not the first
    ("Ten minus three: 10-3=7", "7", True),
    ("The temperature dropped to -5 degrees", "-5", True),
    ("We have 3 boxes of 4, so 12 in all", "12", True),
    ("No number here at all.", "3", False),
    # symbolic equivalence
    (r"\boxed{\sqrt{8}}", r"2\sqrt{2}", True),
    (r"\boxed{x^2+2x+1}", "(x+1)^2", True),
    (r"\boxed{2\pi}", "6.283185", True),
    (r"\boxed{2\pi}", "6.2832", False),  # math-verify rounds floats to 6 decimals (docs/math_grading.md)
    (r"\boxed{\frac{\pi}{2}}", r"\frac{2\pi}{4}", True),
    (r"\boxed{\sqrt{2}}", r"\sqrt{3}", False),
    (r"\boxed{x^2-1}", "(x-1)(x+1)", True),
    # assignments, intervals, tuples, sets, degrees, text
    (r"\boxed{x=5}", "5", True),
    (r"\boxed{y = 2x + 3}", "2x+3", True),
    (r"\boxed{k \in [2, 5)}", "[2,5)", True),
    (r"\boxed{(1, 2]}", "(1,2]", True),
    (r"\boxed{(1, 2)}", "[1,2]", False),
    (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"(3,\frac{\pi}{2})", True),
    (r"\boxed{(2, 3)}", "(3, 2)", False),  # tuples are ordered
    (r"\boxed{2, 3}", "3, 2", True),  # a bare list of solutions is not
    (r"\boxed{\{1,2\}}", r"\{2,1\}", True),
    (r"\boxed{(-\infty, 3)}", r"(-\infty,3)", True),
    (r"\boxed{90^\circ}", "90", True),
    (r"\boxed{\text{(C)}}", r"\text{(C)}", True),
    (r"\boxed{\text{Yes}}", "yes", True),
    (r"\boxed{\text{No}}", "yes", False),
    # close but wrong
    (r"\boxed{1234}", "1243", False),
    (r"\boxed{-5}", "5", False),
    (r"\boxed{1.01}", "1", False),
    (r"\boxed{3.14}", r"\pi", False),
    (r"\boxed{100}", "1000", False),
]


@pytest.mark.parametrize(("completion", "gold", "expected"), GRADING_TABLE)
def test_grading_table(completion, gold, expected):
    assert math_equal(extract_answer(completion), gold) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so \boxed{\frac{a}{\{b\}}} done", r"\frac{a}{\{b\}}"),
        (r"\boxed{1} and \fbox{2}", "2"),
        (r"\boxed 5 apples", "5"),
        (r"\boxed{unclosed", None),
        (r"\boxed{}", ""),
        ("nothing boxed", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,234 apples and 5 pears cost 2,500.75", "2500.75"),
        ("from page 3-5", "5"),
        ("it fell to -4", "-4"),
        ("half is 1/2", "1/2"),
        ("no digits", None),
        (r"a rise of 25\%.", r"25\%"),
    ],
)
def test_extract_last_number(text, expected):
    assert extract_last_number(text) == expected


def test_extraction_order_box_before_phrase_before_last_number():
    assert extract_answer(r"The answer is 3. Then \boxed{4} and 5") == "4"
    assert extract_answer(r"The answer is 3. Then \boxed{4") is None  # a malformed last box: no fallback
    assert extract_answer(r"The answer is 3. Then \boxed{ }") is None
    assert extract_answer("The answer is 3. Then 5") == "3"
    assert extract_answer("Then 5") == "5"


def test_gold_extraction():
    assert extract_gsm8k_gold("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 1,234") == "1234"
    assert extract_math_gold(r"Thus $x = \boxed{\frac{1}{2}}$.") == r"\frac{1}{2}"
    assert extract_math_gold("no box") is None


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        (r"\boxed{5 \text{ cm}}", "5"),
        (r"\$1,234", "1234"),
        (r"x = \dfrac{1}{2}", r"\frac{1}{2}"),
        (r"30^{\circ}", "30"),
        (r"\left( 1, 2 \right)", "( 1, 2 )"),
        (r"50\%", "50%"),
        ("2x", "2x"),  # a variable is not a unit
        (r"10,\!080", "10080"),  # MATH's gold thousands separator, so that integers compare exactly in-process
        (r"\$32,\!348", "32348"),
        (r"1,000 \text{ dollars}", "1000"),
        (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"),
    ],
)
def test_normalize_answer(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_none_and_empty_never_match():
    assert not math_equal(None, "5")
    assert not math_equal("5", None)
    assert not math_equal("", "")


def test_numbers_are_accepted():
    assert math_equal(5, "5.0")
    assert math_equal("0.1", 0.1)


def test_pathological_expression_times_out_instead_of_hanging():
    start = time.monotonic()
    assert not math_equal(r"2^{2^{2^{2^{2^{2}}}}}", "3", timeout=1.0)
    # The symbolic worker's start-up is not charged to the timeout; the computation itself is cut at 1 s.
    assert time.monotonic() - start < 30
    # The killed worker is replaced: symbolic checks keep working.
    assert math_equal(r"\sqrt{8}", r"2\sqrt{2}")


def test_symbolic_check_works_from_worker_threads():
    """Reward functions may run outside the main thread, where `signal.alarm` timeouts do not work."""
    pairs = [(r"\sqrt{8}", r"2\sqrt{2}", True), (r"\sqrt{2}", r"\sqrt{3}", False)] * 4
    assert threading.current_thread() is threading.main_thread()
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda p: math_equal(p[0], p[1]), pairs))
    assert results == [expected for _, _, expected in pairs]


# --------------------------------------------------------------------------------------------------------------
# Tricky pairs (prediction, gold): no false positive, every listed equivalence recognised
# --------------------------------------------------------------------------------------------------------------

NEVER_EQUAL = [
    # distinct integers are never equal: no relative tolerance on integers
    ("12346", "12345"),
    ("100001", "100000"),
    ("1234567890123456789012345678901", "1234567890123456789012345678900"),
    ("10,001", "10000"),
    ("1000000.5", "1000000"),
    # an integer literal compares exactly, also against a non-terminating fraction or a near-integer expression
    ("333300", r"\frac{1000000}{3}"),
    ("333333", r"\frac{1000000}{3}"),
    ("1", r"1.0000001 \cdot 1"),
    ("333333", r"\frac{999999.000001}{3}"),
    ("2", r"\sqrt{4.0000001}"),
    ("1000000", r"999999.9999999 + 0"),
    # infinities
    (r"\infty", "3"),
    ("4", r"\infty"),
    (r"(0,\infty)", "(0,5)"),
    (r"-\infty", r"\infty"),
    ("1e400", "1e500"),
    # sets, tuples and intervals
    ("(1,2)", r"\{1,2\}"),
    ("(1,2)", "[1,2]"),
    ("(2,3)", "(3,2)"),
    ("(1,2,3)", "(1,2)"),
    # signs
    ("-5", "5"),
    (r"-\frac{1}{2}", r"\frac{1}{2}"),
    ("-(x+1)", "x+1"),
    # words and near misses
    ("yes", "sey"),
    (r"\text{(B)}", "C"),
    ("0.33", r"\frac{1}{3}"),
    (r"\sqrt{12}", r"\sqrt{13}"),
    # matrices: a row break `\\ ` is structure, not a space (read as a space, `1 -1` would be `0 0`)
    (r"\begin{pmatrix} 1 \\ -1 \end{pmatrix}", r"\begin{pmatrix} 0 \\ 0 \end{pmatrix}"),
    (r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", r"\begin{pmatrix} 1 & 3 \\ 2 & 4 \end{pmatrix}"),
]

EQUAL = [
    (r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", r"\begin{pmatrix}1&2\\3&4\end{pmatrix}"),  # `\\ ` rows
    (r"\begin{pmatrix} \frac{1}{2} \\ -3 \end{pmatrix}", r"\begin{pmatrix} 1/2 \\ -3 \end{pmatrix}"),
    (r"4\pi \text{ square units}", r"4\pi"),
    (r"4\pi \text{ cm}^2", r"4\pi"),
    (r"1,000 \text{ dollars}", "1000"),
    ("1,000 dollars", "1000"),
    ("10080", r"10,\!080"),
    ("32348", r"\$32,\!348"),
    (r"\sqrt{13}", r"\sqrt13"),
    (r"\frac{9}{19}", r"\frac9{19}"),
    (r"\frac{270}{7}", r"\frac{270}7\text{ degrees}"),
    ("C", r"\text{(C)}"),
    ("1+2i", "1+2j"),
    (r"25\%", "0.25"),
    (r"\frac{14}{3}", "4.6667"),
    ("333333.3", r"\frac{1000000}{3}"),  # the tolerance holds for a decimal (beside the integer rule above)
    ("1e3", "1000"),
    (r"(-\infty, 3]", r"(-\infty,3]"),
]


@pytest.mark.parametrize(("prediction", "gold"), NEVER_EQUAL)
def test_no_false_positive(prediction, gold):
    assert not math_equal(prediction, gold)
    assert not math_equal(gold, prediction)


@pytest.mark.parametrize(("prediction", "gold"), EQUAL)
def test_equivalence_recognised(prediction, gold):
    assert math_equal(prediction, gold)


def test_boxed_units_and_percent_in_completions():
    assert math_equal(extract_answer(r"The area is \boxed{4\pi \text{ cm}^2}."), r"4\pi")
    assert math_equal(extract_answer(r"It grew by 12.5\%."), r"12.5\%")


# Where this grader and math-verify (run on the same strings, each as a `\boxed{}`) disagree, and who is right.
# (prediction, gold, ours, math-verify's, why ours is what it is). Also in docs/math_grading.md.
MATH_VERIFY_DISAGREEMENTS = [
    ("(1,2)", r"\{1,2\}", False, True, "ours: an interval/tuple is not a set"),
    (r"\sqrt13", r"\sqrt{13}", True, False, "ours: MATH's gold writes sqrt(13) so; math-verify reads TeX's sqrt(1)3"),
    ("1+2j", "1+2i", True, False, "ours: j is the imaginary unit when it is the only letter"),
    ("yes", "sey", False, True, "ours: math-verify reads both words as the product y*e*s"),
    ("4.6667", r"\frac{14}{3}", True, False, "by choice: 1e-4 for a decimal against a non-terminating fraction"),
]


@pytest.mark.parametrize(("prediction", "gold", "ours", "theirs", "why"), MATH_VERIFY_DISAGREEMENTS)
def test_listed_disagreements_with_math_verify(prediction, gold, ours, theirs, why):
    from math_verify import parse, verify

    assert math_equal(prediction, gold) is ours
    raw = verify(parse("\\boxed{" + gold + "}"), parse("\\boxed{" + prediction + "}"))
    assert raw is theirs, why


# --------------------------------------------------------------------------------------------------------------
# A box that is not one answer
# --------------------------------------------------------------------------------------------------------------

# (completion, gold): each box names several candidates, and without the one-answer rule the grader credits it for
# the gold given here (`test_several_candidates_are_credited_without_the_one_answer_rule`); none may earn a reward.
NOT_ONE_ANSWER = [
    (r"\boxed{3 = 4}", "4"),
    (r"\boxed{x = 3 = 4 = 5}", "5"),
    (r"\boxed{\frac{1}{2} = 0.5 = 3}", "3"),
    (r"\boxed{7 = 3 + 4}", "7"),
    (r"\boxed{3 \lor 4 \lor 5}", "5"),
    (r"\boxed{3 \vee 4}", "4"),
    (r"\boxed{x=3 \lor x=4}", "4"),
    (r"\boxed{\begin{cases} 3 \\ 4 \\ 5 \end{cases}}", "5"),
    (r"\boxed{3 \text{ or four}}", "3"),
    (r"\boxed{3 \text{ or } 4}", "(3, 4)"),
    (r"\boxed{x = 3 \text{ or } x = 4}", "(3, 4)"),
    (r"\boxed{x = 3, y = 4 = 5}", "(3, 5)"),
]

# (completion, gold): the positive controls, one answer in the same shapes, each rewarded.
ONE_ANSWER = [
    (r"\boxed{x = 3}", "3"),
    (r"\boxed{y > 2}", r"y > 2"),
    (r"\boxed{-2 < x < 3}", r"-2 < x < 3"),
    (r"\boxed{0 \le x \le 1}", r"0 \le x \le 1"),
    (r"\boxed{x = 3, y = 4}", "(3, 4)"),
    (r"\boxed{4}", "4"),
    (r"\boxed{3 \text{ or } 4}", r"3 \text{ or } 4"),  # a gold that is itself not one answer compares as usual
]


@pytest.mark.parametrize(("completion", "gold"), NOT_ONE_ANSWER)
def test_a_box_of_several_candidates_earns_nothing(completion, gold):
    from justgrpo_trl.grading.math import is_single_answer
    from justgrpo_trl.rewards import math_reward

    assert not is_single_answer(extract_answer(completion))
    assert not math_equal(extract_answer(completion), gold)
    assert math_reward(None, [completion], answer=[gold]) == [-1.0]


@pytest.mark.parametrize(("completion", "gold"), ONE_ANSWER)
def test_one_answer_in_the_same_shapes_is_rewarded(completion, gold):
    from justgrpo_trl.rewards import math_reward

    assert math_equal(extract_answer(completion), gold)
    assert math_reward(None, [completion], answer=[gold]) == [1.0]


@pytest.mark.parametrize(("completion", "gold"), NOT_ONE_ANSWER)
def test_several_candidates_are_credited_without_the_one_answer_rule(monkeypatch, completion, gold):
    """The attacks' positive control: with the rule disabled, the same grader credits each candidate list."""
    import justgrpo_trl.grading.math as grading

    monkeypatch.setattr(grading, "is_single_answer", lambda answer: True)
    assert math_equal(extract_answer(completion), gold)


def test_is_single_answer_reads_commands_not_letters():
    from justgrpo_trl.grading.math import is_single_answer

    # `\left`, `\infty`, `\neg`, `\int` and "for" hold the letters of `\le`, `\in`, `\ne` and "or" but are no sign
    for answer in [r"\left(1, 2\right)", r"(3, \infty)", r"\neg p", r"\int_0^1 x\,dx", r"\text{for all } x"]:
        assert is_single_answer(answer), answer
    for answer in [r"x \in [1, 2] \in S", r"3 \ne 4", r"3 \OR 4", r"\pi \approx 3.14", "5 > 3"]:
        assert not is_single_answer(answer), answer


def test_an_interval_around_one_variable_is_one_answer():
    from justgrpo_trl.grading.math import is_single_answer

    for answer in [r"-2 < x < 3", r"0 \le x \le 1", r"5 \geq t_1 > 2", r"\frac{1}{2} <= y < 4"]:
        assert is_single_answer(answer), answer
    # two signs that are not one interval: opposite directions, an equality, or no single variable between them
    for answer in [r"1 < x > 2", r"x = 3 < 4", r"1 < 2 < 3", r"1 < x + y < 3"]:
        assert not is_single_answer(answer), answer


# --------------------------------------------------------------------------------------------------------------
# Each answer its own time budget
# --------------------------------------------------------------------------------------------------------------

NEVER_FINISHING = [r"10^{10^{10}}", "(100!)!", r"9^{9^{9^{9}}}", "(99!)!", r"2^{2^{2^{2^{2^{2}}}}}", r"(10^{10})!"]


def _honest_symbolic_pairs(n: int) -> list[tuple[str, str]]:
    """`n` distinct true equivalences that only math-verify can decide (none is settled in-process)."""
    pairs = []
    for k in range(2, 2 + n):
        pairs.append((rf"\sqrt{{{2 * k * k}}}", rf"{k}\sqrt{{2}}") if k % 2 else (f"x^2-{k * k}", f"(x-{k})(x+{k})"))
    return pairs


def test_never_finishing_answers_placed_first_take_no_honest_reward():
    from justgrpo_trl.grading.math import _decide, math_equal_batch
    from justgrpo_trl.grading.symbolic import batch_budget

    timeout, workers = 0.5, 2
    adversarial = [(NEVER_FINISHING[i % len(NEVER_FINISHING)], str(i)) for i in range(64)]
    honest = _honest_symbolic_pairs(64)
    assert all(not isinstance(_decide(*pair), bool) for pair in adversarial + honest)  # all reach math-verify
    math_equal_batch(honest[:1], max_workers=workers)  # start the fork server outside the timed call
    start = time.monotonic()
    verdicts = math_equal_batch(adversarial + honest, timeout=timeout, max_workers=workers)
    elapsed = time.monotonic() - start
    assert verdicts[:64] == [False] * 64
    assert verdicts[64:] == [True] * 64, verdicts[64:].count(False)
    # The adversarial answers really ran to their budget (else this test proves nothing) and the batch met its
    # own deadline.
    assert elapsed >= 0.8 * 64 * timeout / workers, elapsed
    assert elapsed <= batch_budget(128, timeout, workers), elapsed


def test_an_answer_queued_behind_slow_ones_gets_its_whole_budget():
    """One worker, three never-finishing answers first: the honest one starts at 3 x timeout, past any batch-wide
    deadline of one timeout, and is still decided."""
    from justgrpo_trl.grading.math import math_equal_batch

    pairs = [(answer, "3") for answer in NEVER_FINISHING[:3]] + [(r"\sqrt{8}", r"2\sqrt{2}")]
    assert math_equal_batch(pairs, timeout=0.5, max_workers=1) == [False, False, False, True]


def test_batch_budget_scales_with_the_batch_and_the_workers():
    from justgrpo_trl.grading.symbolic import batch_budget

    assert batch_budget(128, 0.5, 2) > 64 * 0.5
    assert batch_budget(128, 0.5, 4) < batch_budget(128, 0.5, 2)
    assert batch_budget(1, 5.0, 2) >= 5.0


def test_math_reward_rewards_honest_answers_next_to_never_finishing_ones():
    from justgrpo_trl.rewards import make_math_reward

    reward = make_math_reward(1.0, 0.0, timeout=0.5)
    completions = [rf"\boxed{{{answer}}}" for answer in NEVER_FINISHING] + [r"\boxed{\sqrt{8}}", r"\boxed{x^2-1}"]
    golds = ["3"] * len(NEVER_FINISHING) + [r"2\sqrt{2}", "(x-1)(x+1)"]
    completions, golds = [*completions, "so 12"], [*golds, "#### 12"]
    assert reward(None, completions, answer=golds) == [0.0] * len(NEVER_FINISHING) + [1.0] * 3


# --------------------------------------------------------------------------------------------------------------
# Reference-compatible grader (the JustGRPO paper's rules)
# --------------------------------------------------------------------------------------------------------------

# (completion, gold, project grader, reference-compatible grader): the documented differences.
REFERENCE_DIFFERENCES = [
    (r"\boxed{50}", "0.5", False, True),  # the reference also accepts x100 and /100 of the gold
    (r"\boxed{12346}", "12345", False, True),  # relative 1e-4 on integers
    (r"\boxed{(1,2)}", "[1,2]", False, True),  # bracket kinds ignored
    (r"\boxed{t + 5}", "5", False, True),  # the single letter "t" is stripped as a unit word
    ("The answer is 7. Check: 7 + 0 = 7", "7", True, False),  # the reference takes everything after "answer is"
    (r"The result is \boxed{8", "8", False, True),  # an unclosed box runs to the end of the text
    (r"\boxed{\sqrt{8}}", r"2\sqrt{2}", True, True),
    (r"\boxed{\infty}", "3", False, False),
    (r"\boxed{7}", "8", False, False),
]


@pytest.mark.parametrize(("completion", "gold", "ours", "reference"), REFERENCE_DIFFERENCES)
def test_reference_compatible_grader(completion, gold, ours, reference):
    from justgrpo_trl.grading.reference import reference_math_equal

    assert math_equal(extract_answer(completion), gold) is ours
    assert reference_math_equal(completion, gold) is reference


# (answer, the reference's `strip_string` of it): outputs measured by running the reference's own function
# (REFERENCE_UNIT_SOURCE) outside this repository. Each row depends on the unit list, its order or its regex reading.
REFERENCE_STRIPPED = [
    ("5 miles", "5"),  # "mile" is a reference word
    (r"\frac{1}{2} mile", r"\frac{1}{2}"),
    ("x=3 miles", "3"),
    ("12 a b", "12"),  # "a ." is a regex: its "." matches the "b"
    ("4 c x", "4"),  # likewise "c ."
    ("3 a.b", "30b"),
    ("7 p.m", "7p."),
    ("1 axb", "1axb"),  # whole words only
    ("x + a", "x+"),  # a single letter is a unit word
    ("4 per cent", "4cent"),
    ("8 soldiers", "8"),  # the "-s" plurals
]


@pytest.mark.parametrize(("answer", "stripped"), REFERENCE_STRIPPED)
def test_reference_normalization_strips_units_as_the_reference(answer, stripped):
    from justgrpo_trl.grading.reference import reference_gold

    assert reference_gold(answer) == stripped


def _reference_parser_source() -> str | None:
    """The reference's `utils/parser.py` at the transcribed commit, from a checkout or a bare mirror of the repository
    named by `JUSTGRPO_REFERENCE_REPO` (default: the workplace's mirror); `None` when neither is here."""
    import os
    import subprocess

    from justgrpo_trl.grading._reference_rules import REFERENCE_UNIT_SOURCE

    _, commit, path = REFERENCE_UNIT_SOURCE
    repo = os.environ.get("JUSTGRPO_REFERENCE_REPO", "/work/.mirror/LeapLabTHU+JustGRPO/repo")
    if not os.path.isdir(repo):
        return None
    shown = subprocess.run(["git", "-C", repo, "show", f"{commit}:{path}"], capture_output=True, text=True)
    return shown.stdout if shown.returncode == 0 else None


def test_reference_unit_words_are_the_reference_files_list():
    """Our transcription equals the `unit_texts` list of the reference's file, entry by entry and in order."""
    import ast

    from justgrpo_trl.grading._reference_rules import REFERENCE_UNIT_TEXTS, UNIT_TEXTS

    source = _reference_parser_source()
    if source is None:
        pytest.skip("the JustGRPO reference repository is not here (set JUSTGRPO_REFERENCE_REPO to a clone)")
    assignments = [
        node.value
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["unit_texts"]
    ]
    assert len(assignments) == 1
    reference = ast.literal_eval(assignments[0])
    assert REFERENCE_UNIT_TEXTS == reference
    assert 'unit_texts.extend([t + "s" for t in unit_texts])' in source  # the plurals, as ours
    assert UNIT_TEXTS == reference + [t + "s" for t in reference]


def _children(pid: int) -> list[int]:
    from pathlib import Path

    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/task"), reason="needs Linux /proc")
def test_overrunning_children_are_killed_and_a_dead_server_is_replaced():
    import os
    import signal

    from justgrpo_trl.grading import symbolic
    from justgrpo_trl.grading.math import math_equal_batch

    assert math_equal_batch([("(100!)!", "3"), (r"10^{10^{10}}", "3")], timeout=1.0, max_workers=2) == [False, False]
    server = symbolic._SERVERS[2]
    time.sleep(0.2)
    assert _children(server.process.pid) == []  # nothing left running after the deadline
    os.killpg(server.process.pid, signal.SIGKILL)  # the server dies (OOM killer, a stray kill)
    server.process.wait()
    assert math_equal_batch([(r"\sqrt{8}", r"2\sqrt{2}")], max_workers=2) == [True]
    assert symbolic._SERVERS[2] is not server
