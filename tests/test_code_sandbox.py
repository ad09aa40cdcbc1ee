"""The sandbox for model-generated code: hostile programs fail, and the calling process is unharmed."""

import os
import resource
import signal
import textwrap
import time
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
