"""Run a whole untrusted Python program in a guarded subprocess and say whether it ran to completion.

Not what `code_reward` uses: rewards are decided by `justgrpo_trl.grading.executor` (tests in a judge process,
the candidate in an OS-isolated process; see the README's "Code sandbox"). This helper runs program and tests in
one process, so a program can forge its own success; keep it for running code whose result nobody rewards.

Layers, from the outside in:

- a separate `python -I` process (no user site, no `PYTHON*` variables, no current directory on `sys.path`) in its
  own session and process group, with a scrubbed environment (no tokens, no proxies) and a fresh temporary working
  directory that is deleted afterwards;
- a hard wall-clock timeout, after which, and also after a normal exit, the whole process group is killed with
  `SIGKILL` (stray children included);
- resource limits: address space (memory), CPU seconds, file size (which also caps captured output, written to
  files rather than buffered in memory), processes, and no core dumps;
- a throwaway supervisor (`_sandbox_harness.py`) as the untrusted code's parent, so that `os.kill(os.getppid(), 9)`
  cannot reach the caller, and whose exit status is the verdict: the program passes only if it ran to its end,
  so `sys.exit(0)` or `os._exit(0)` before the asserts is a failure;
- a guard inside the untrusted process (HumanEval `reliability_guard` style, plus an audit hook that cannot be
  removed) that disables killing, forking and exec, and confines deleting, renaming, truncating and writing files
  to the working directory. The OS limits alone do not stop root: RLIMIT_NPROC does not bind root, and root may
  write anywhere.

This is defence in depth for honest-but-buggy model output (infinite loops, fork or memory bombs, `rm -rf`), not a
security boundary against a determined attacker: for that, run the trainer inside a container or VM.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SandboxResult", "run_untrusted"]

_HARNESS = Path(__file__).with_name("_sandbox_harness.py")


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one sandboxed run.

    Attributes:
        passed: The program ran to its end without an exception and within the limits.
        returncode: The supervisor's exit status: 0 if passed; otherwise the program's exit code, 128+N if it died
            of signal N, 1 if it exited 0 before its end; negative (`-9`) if the supervisor itself was killed, e.g.
            on timeout.
        stdout: The first `max_output_bytes` of the program's standard output, decoded as UTF-8.
        stderr: The first `max_output_bytes` of its standard error (tracebacks land here).
        timed_out: The wall-clock timeout expired and the process group was killed.
    """

    passed: bool
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool


def _scrubbed_env(workdir: str) -> dict[str, str]:
    """The only environment the untrusted code sees: no credentials, and single-threaded math libraries."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": workdir,
        "TMPDIR": workdir,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _wait_for_exit(pid: int, timeout: float) -> bool:
    """Wait until process `pid` exits, without reaping it (its id must stay valid as the group id to kill).

    Returns `False` on timeout. Uses a pidfd where the platform has one, else polls `waitid(WNOWAIT)`.
    """
    if hasattr(os, "pidfd_open"):
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            fd = None
        if fd is not None:
            try:
                return bool(select.select([fd], [], [], max(timeout, 0.0))[0])
            finally:
                os.close(fd)
    deadline, delay = time.monotonic() + timeout, 0.001
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
                return True
        except ChildProcessError:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.02)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_capped(path: Path, limit: int) -> str:
    """At most `limit` bytes of the file, so that gigabytes of output never reach the caller's memory."""
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", errors="replace")
    except OSError:
        return ""


def run_untrusted(
    code: str,
    timeout: float = 3.0,
    memory_mb: int = 1024,
    *,
    max_output_bytes: int = 64 * 1024,
    max_file_bytes: int = 16 * 1024 * 1024,
    max_processes: int = 32,
    guard: bool = True,
    python: str | None = None,
) -> SandboxResult:
    """Run `code` (a whole program: solution followed by its tests) in the sandbox and report whether it passed.

    Thread-safe; many calls may run at once (each has its own process group and directory).

    Args:
        code: Python source to run. It passes if it runs to its end; a failing `assert` fails it.
        timeout: Wall-clock seconds before the whole process group is killed; also sets the CPU-time limit.
        memory_mb: Address-space limit (RLIMIT_AS) in MiB; 0 disables it.
        max_output_bytes: How much of stdout and of stderr is read back.
        max_file_bytes: Largest file the program may write (RLIMIT_FSIZE), its stdout and stderr included.
        max_processes: Additional processes/threads allowed (RLIMIT_NPROC; no effect when running as root).
        guard: Install the in-process guard (disable kill/fork/exec/delete...). Only tests turn it off, to check
            the OS-level layers on their own.
        python: Interpreter to use; defaults to the current one (so the same packages are importable).
    """
    root = Path(tempfile.mkdtemp(prefix="justgrpo-sandbox-"))
    try:
        workdir = root / "work"
        workdir.mkdir()
        config_path = root / "config.json"
        nonce = secrets.token_hex(16)
        config = {
            "code": code,
            "nonce": nonce,
            "guard": guard,
            "memory_bytes": memory_mb * 1024 * 1024,
            "cpu_seconds": math.ceil(timeout) + 1,
            "max_file_bytes": max_file_bytes,
            "max_processes": max_processes,
        }
        with open(os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            json.dump(config, f)
        stdout_path, stderr_path = root / "stdout", root / "stderr"
        with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
            process = subprocess.Popen(
                [python or sys.executable, "-I", str(_HARNESS), str(config_path)],
                cwd=workdir,
                env=_scrubbed_env(str(workdir)),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
                close_fds=True,
            )
        try:
            timed_out = not _wait_for_exit(process.pid, timeout)
        finally:
            _kill_group(process.pid)  # stray children too; the group id stays ours until the leader is reaped
            returncode = process.wait()
        return SandboxResult(
            passed=returncode == 0 and not timed_out,
            returncode=returncode,
            stdout=_read_capped(stdout_path, max_output_bytes),
            stderr=_read_capped(stderr_path, max_output_bytes),
            timed_out=timed_out,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
