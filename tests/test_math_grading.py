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
# One deadline per batch
# --------------------------------------------------------------------------------------------------------------


def test_adversarial_batch_costs_one_timeout_and_easy_answers_survive():
    from justgrpo_trl.grading.math import math_equal_batch

    adversarial = [r"10^{10^{10}}", "(100!)!", r"9^{9^{9^{9}}}", "(99!)!"] * 2
    easy = [(r"\sqrt{8}", r"2\sqrt{2}"), ("x^2-1", "(x-1)(x+1)"), (r"\frac{\pi}{2}", r"\frac{2\pi}{4}")]
    math_equal_batch([(r"\sqrt{8}", r"2\sqrt{2}")])  # start the fork server outside the timed call
    timeout = 2.0
    start = time.monotonic()
    verdicts = math_equal_batch([(a, "3") for a in adversarial] + easy, timeout=timeout)
    elapsed = time.monotonic() - start
    assert verdicts == [False] * len(adversarial) + [True] * len(easy)
    assert elapsed < timeout + 1.0, elapsed  # one deadline, not one per adversarial answer (8 x 2 s)


def test_math_reward_batch_rewards_easy_answers_next_to_adversarial_ones():
    from justgrpo_trl.rewards import make_math_reward

    reward = make_math_reward(1.0, 0.0, timeout=2.0)
    completions = [r"\boxed{(100!)!}"] * 6 + [r"\boxed{\sqrt{8}}", r"\boxed{x^2-1}", "so 12"]
    golds = ["3"] * 6 + [r"2\sqrt{2}", "(x-1)(x+1)", "#### 12"]
    reward(None, [r"\boxed{1}"], answer=["1"])
    start = time.monotonic()
    assert reward(None, completions, answer=golds) == [0.0] * 6 + [1.0] * 3
    assert time.monotonic() - start < 3.5


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
