"""TRL-signature reward functions on plain and conversational completions of GSM8K, MATH and code rows."""

import inspect
import time

import pytest

from justgrpo_trl.rewards import (
    FORMAT_BONUS,
    boxed_format_reward,
    code_format_reward,
    code_reward,
    completion_text,
    gold_math_answer,
    make_code_reward,
    make_math_reward,
    math_reward,
)


def _chat(text):
    return [{"role": "assistant", "content": text}]


def test_completion_text_plain_and_conversational():
    assert completion_text("plain") == "plain"
    assert completion_text(_chat("chat")) == "chat"
    multi_part = [{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert completion_text(multi_part) == "ab"
    with_tool = [
        {"role": "assistant", "content": "call"},
        {"role": "tool", "content": "tool output 99"},
        {"role": "assistant", "content": "final"},
    ]
    assert completion_text(with_tool) == "call\nfinal"


def test_math_reward_gsm8k_rows():
    gold = ["Janet has 3 + 4 = <<3+4=7>>7 ducks.\n#### 1,234", "... #### 72"]
    completions = ["So the answer is 1,234.", "She sold 48 + 24 = 72 clips. \\boxed{71}"]
    assert math_reward(prompts=["q1", "q2"], completions=completions, answer=gold) == [1.0, -1.0]


def test_math_reward_math_rows_from_solution_and_from_answer():
    solution = [r"Thus $x = \boxed{\frac{1}{2}}$.", r"The area is $\boxed{2\sqrt{2}}$."]
    completions = [_chat(r"... so $x = \boxed{0.5}$"), _chat(r"Area: \boxed{\sqrt{8}}")]
    assert math_reward(prompts=[None, None], completions=completions, solution=solution) == [1.0, 1.0]
    assert math_reward(prompts=None, completions=completions, answer=[r"\frac{1}{2}", "3"]) == [1.0, -1.0]


def test_math_reward_prefers_answer_column_and_skips_rows_without_gold():
    completions = [r"\boxed{5}", r"\boxed{5}", r"\boxed{5}"]
    rewards = math_reward(
        prompts=None,
        completions=completions,
        answer=["5", None, None],
        solution=[r"\boxed{6}", r"\boxed{5}", None],
    )
    assert rewards == [1.0, 1.0, None]
    assert math_reward(prompts=None, completions=completions) == [None, None, None]


def test_math_reward_ignores_unrelated_trainer_kwargs():
    rewards = math_reward(
        prompts=["q"],
        completions=["\\boxed{3}"],
        answer=["3"],
        completion_ids=[[1, 2]],
        trainer_state=None,
        log_extra=None,
    )
    assert rewards == [1.0]


def test_gold_math_answer():
    assert gold_math_answer(answer="reasoning\n#### 1,000") == "1000"
    assert gold_math_answer(answer=r"\boxed{7}") == "7"
    assert gold_math_answer(answer=12) == "12"
    assert gold_math_answer(solution=r"so \boxed{\frac{1}{3}}.") == r"\frac{1}{3}"
    assert gold_math_answer(solution=r"\frac{1}{3}") == r"\frac{1}{3}"
    assert gold_math_answer() is None


def test_make_math_reward_values_and_names():
    binary = make_math_reward(correct=1.0, incorrect=0.0)
    assert binary.__name__ == "math_reward_1_0"
    assert binary(prompts=None, completions=[r"\boxed{2}", r"\boxed{3}"], answer=["2", "2"]) == [1.0, 0.0]
    assert make_math_reward().__name__ == math_reward.__name__ == "math_reward"
    assert make_math_reward(name="acc").__name__ == "acc"
    assert list(inspect.signature(binary).parameters)[:2] == ["prompts", "completions"]


HUMANEVAL_PROMPT = 'def add(a, b):\n    """Return the sum of a and b."""\n'
HUMANEVAL_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"


def test_code_reward_humaneval_rows():
    completions = [
        "    return a + b\n",  # body only: the prompt is prepended
        "```python\ndef add(a, b):\n    return a + b\n```",  # full function in a fence
        "    return a - b\n",  # wrong
        "```python\ndef add(a, b):\n    import sys\n    sys.exit(0)\n```",  # exits before the tests
    ]
    rewards = code_reward(
        prompts=[HUMANEVAL_PROMPT] * 4,
        completions=completions,
        test=[HUMANEVAL_TEST] * 4,
        entry_point=["add"] * 4,
    )
    assert rewards == [1.0, 1.0, 0.0, 0.0]


def test_code_reward_humaneval_conversational_prompt_takes_its_code_from_the_code_prefix_column():
    """A conversational prompt's messages are never trusted code (an earlier turn may be a model's): the prompt's
    code comes from a `code_prefix` column; without one a body-only completion has no stub to continue."""
    prompt = [{"role": "user", "content": f"Complete this function:\n```python\n{HUMANEVAL_PROMPT}```"}]
    columns = {"test": [HUMANEVAL_TEST] * 2, "entry_point": ["add"] * 2}
    body, whole = _chat("    return a + b\n"), _chat("```python\ndef add(a, b):\n    return a + b\n```")
    assert code_reward(prompts=[prompt] * 2, completions=[body, whole], **columns) == [0.0, 1.0]
    prefix = [HUMANEVAL_PROMPT] * 2
    assert code_reward(prompts=[prompt] * 2, completions=[body, whole], code_prefix=prefix, **columns) == [1.0, 1.0]


def test_code_reward_mbpp_rows_with_setup_code():
    completions = [
        _chat("```python\ndef double(x):\n    return scale(x, 2)\n```"),
        _chat("```python\ndef double(x):\n    return x + 2\n```"),
    ]
    rewards = code_reward(
        prompts=[[{"role": "user", "content": "Write double."}]] * 2,
        completions=completions,
        test_list=[["assert double(2) == 4", "assert double(5) == 10"]] * 2,
        test_setup_code=["def scale(x, k):\n    return x * k"] * 2,
    )
    assert rewards == [1.0, 0.0]


def test_code_reward_acecode_rows_and_rows_without_tests():
    completions = ["```python\ndef square(x):\n    return x * x\n```"] * 2
    rewards = code_reward(prompts=["p", "p"], completions=completions, test_cases=[["assert square(3) == 9"], None])
    assert rewards == [1.0, None]
    assert code_reward(prompts=["p"], completions=["x = 1"]) == [None]


def test_code_reward_runs_in_parallel():
    sleepy = "```python\nimport time\ntime.sleep(0.5)\ndef one():\n    return 1\n```"
    reward = make_code_reward(num_workers=4, timeout=3)
    start = time.monotonic()
    rewards = reward(prompts=["p"] * 4, completions=[sleepy] * 4, test_cases=[["assert one() == 1"]] * 4)
    assert rewards == [1.0] * 4
    assert time.monotonic() - start < 1.8  # 4 x 0.5 s one after another would take over 2 s


def test_make_code_reward_values_limits_and_names():
    reward = make_code_reward(correct=1.0, incorrect=-1.0, timeout=1.0)
    assert reward.__name__ == "code_reward_1_-1"
    assert make_code_reward().__name__ == code_reward.__name__ == "code_reward"
    rewards = reward(
        prompts=["p", "p"],
        completions=["```python\nwhile True:\n    pass\n```", "```python\nx = 1\n```"],
        test_cases=[["assert True"], ["assert x == 1"]],
    )
    assert rewards == [-1.0, 1.0]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (r"The answer is \boxed{42}.", FORMAT_BONUS),
        (_chat(r"\boxed{\frac{1}{2}}"), FORMAT_BONUS),
        ("The answer is 42.", 0.0),
        (r"\boxed{}", 0.0),
        (r"\boxed{42", 0.0),
    ],
)
def test_boxed_format_reward(completion, expected):
    assert boxed_format_reward(prompts=None, completions=[completion]) == [expected]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("```python\ndef f():\n    return 1\n```", FORMAT_BONUS),
        (_chat("Sure:\n```py\nx = [1, 2]\n```"), FORMAT_BONUS),
        ("```python\ndef f(:\n```", 0.0),  # does not parse
        ("```python\ndef f():\n    return 1\n", 0.0),  # fence never closed
        ("def f():\n    return 1\n", 0.0),  # no fence
    ],
)
def test_code_format_reward(completion, expected):
    assert code_format_reward(prompts=None, completions=[completion]) == [expected]


def test_format_bonus_is_small():
    assert 0 < FORMAT_BONUS < 0.5
