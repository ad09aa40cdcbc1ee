"""The judge: runs a job's trusted test code against a candidate that lives in another, isolated process.

A judge worker is a long-lived process (`python -I .../grading/_judge.py`, which imports only its sibling
modules, not the package) that reads jobs from its stdin
and writes verdicts to its stdout, one framed JSON message each (see `_wire`). For each job it starts a fresh
candidate process (`_sandbox_runner.py`, confined as `isolation` describes), sends it only the candidate's code,
then runs the tests *here*: every function of the candidate that the tests call is replaced by a `Proxy` that sends
the arguments as plain values and decodes the reply into plain values. Comparisons therefore happen in this process,
on builtin values, and the verdict is "the tests ran to their end without an exception" as seen from here. The
candidate process never holds a pass token, the tests or the expected values.
"""

from __future__ import annotations

import ast
import builtins
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

if __package__:
    from . import _wire as wire
    from .isolation import Isolation, candidate_launch, seccomp_program
else:  # started as a script: import the sibling modules alone, not the package (which loads torch)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _wire as wire
    from isolation import Isolation, candidate_launch, seccomp_program

MAX_STDERR_BYTES = 4096


class CandidateFailure(BaseException):
    """The candidate process died, timed out or sent something that is not a plain value.

    A `BaseException`, so that a test's `except Exception:` cannot swallow it; and the job remembers it anyway.
    """


def _builtin_exception(name: Any) -> type[BaseException]:
    """The builtin exception class named `name` (a candidate's `raise ValueError` reaches the tests as one)."""
    cls = getattr(builtins, name, None) if type(name) is str else None
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls
    return RuntimeError


@dataclass
class _Channel:
    requests: int
    replies: int
    deadline: float
    failure: str | None = None

    def receive(self) -> dict[str, Any]:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0 or not select.select([self.replies], [], [], remaining)[0]:
            self.fail("timeout")
        try:
            return wire.read_frame(self.replies)
        except wire.WireError as error:
            self.fail(f"candidate process gone or malformed reply ({error})")

    def fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        raise CandidateFailure(reason)


class Proxy:
    """Stands for one function of the candidate inside the tests: a call crosses to the candidate process."""

    def __init__(self, channel: _Channel, name: str):
        self._channel, self.__name__ = channel, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        channel = self._channel
        if channel.failure is not None:
            raise CandidateFailure(channel.failure)
        try:
            request = {"call": self.__name__, "args": wire.encode(list(args)), "kwargs": wire.encode(kwargs)}
        except wire.NotPlain as error:
            raise TypeError(f"the tests pass a value that cannot cross to the sandbox: {error}") from None
        try:
            wire.write_frame(channel.requests, request)
        except OSError:
            channel.fail("candidate process gone")
        reply = channel.receive()
        if "value" in reply:
            try:
                return wire.decode(reply["value"])
            except wire.WireError as error:
                channel.fail(f"malformed value ({error})")
        if "raise" in reply:
            raise _builtin_exception(reply["raise"])(str(reply.get("message", "")))
        channel.fail("malformed reply")

    def __repr__(self) -> str:
        return f"<sandboxed function {self.__name__}>"


def _loaded_names(source: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}


def _normalise_output(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def _fetch(channel: _Channel, name: str) -> Any:
    """The candidate's global `name` as a plain value, or `NameError` if it is not one."""
    wire.write_frame(channel.requests, {"get": name})
    reply = channel.receive()
    if "value" not in reply:
        raise NameError(f"the candidate's {name} is not a plain value")
    try:
        return wire.decode(reply["value"])
    except wire.WireError as error:
        channel.fail(f"malformed value ({error})")


def _run_tests(job: dict[str, Any], channel: _Channel, candidate_names: list[str], values: list[str]) -> None:
    """Run the trusted setup and tests here, with the candidate's functions replaced by proxies."""
    if job.get("io_cases") is not None:
        for stdin, expected in job["io_cases"]:
            wire.write_frame(channel.requests, {"stdin": str(stdin)})
            reply = channel.receive()
            if "value" not in reply or type(reply["value"]) is not str:
                raise AssertionError(f"the program failed: {reply.get('raise')}")
            if _normalise_output(reply["value"]) != _normalise_output(str(expected)):
                raise AssertionError("wrong output")
        return
    namespace: dict[str, Any] = {"__name__": "__judge__", "__builtins__": builtins}
    exec(compile(job.get("setup") or "", "<setup>", "exec"), namespace)
    entry_point = job.get("entry_point")
    wanted = {name for name in _loaded_names(job["tests"]) if name not in namespace}
    if entry_point:
        if entry_point not in candidate_names:
            raise NameError(f"the candidate does not define {entry_point}")
        wanted.add(entry_point)
    for name in wanted & set(candidate_names):
        namespace[name] = Proxy(channel, name)
    for name in sorted(wanted & set(values) - set(candidate_names)):  # plain-value globals the tests read
        namespace[name] = _fetch(channel, name)
    exec(compile(job["tests"], "<tests>", "exec"), namespace)


def _alarm(signum: int, frame: Any) -> None:
    raise CandidateFailure("timeout")


def run_job(job: dict[str, Any], isolation: Isolation) -> dict[str, Any]:
    """Grade one job (see `executor.CodeJob.to_dict`); returns `{"passed": bool, "reason": str, "stderr": str}`,
    `stderr` being the start of the candidate process's standard error (tracebacks)."""
    with tempfile.TemporaryFile() as stderr:
        verdict = _run_job(job, isolation, stderr)
        verdict["stderr"] = _stderr_head(stderr)
    return verdict


def _stderr_head(file: Any) -> str:
    try:
        file.seek(0)
        return file.read(MAX_STDERR_BYTES).decode("utf-8", errors="replace")
    except (OSError, ValueError):
        return ""


def _run_job(job: dict[str, Any], isolation: Isolation, stderr: Any) -> dict[str, Any]:
    timeout = float(job.get("timeout", 5.0))
    deadline = time.monotonic() + timeout
    workdir = tempfile.mkdtemp(prefix="justgrpo-sandbox-")
    request_read, request_write = os.pipe()
    reply_read, reply_write = os.pipe()
    channel = _Channel(request_write, reply_read, deadline)
    process = None
    try:
        launch = candidate_launch(isolation, workdir, (request_read, reply_write))
        if launch.user is not None:
            os.chown(workdir, launch.user, launch.user)
        process = subprocess.Popen(
            launch.argv,
            user=launch.user,
            group=launch.user,
            extra_groups=[] if launch.user is not None else None,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": launch.workdir, "TMPDIR": launch.workdir},
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            pass_fds=(request_read, reply_write),
            start_new_session=True,
        )
        os.close(request_read)
        os.close(reply_write)
        request_read = reply_write = -1
        memory_mb = int(job.get("memory_mb", 1024))
        limits = {
            "memory_bytes": memory_mb * 1024 * 1024 if memory_mb else None,
            "cpu_seconds": int(timeout) + 1,
            "file_bytes": 16 * 1024 * 1024,
            "open_files": 256,
            "processes": None,
        }
        setup = {
            "limits": limits,
            "landlock": launch.landlock,
            "seccomp": seccomp_program().hex() if isolation.seccomp else None,
            "workdir": launch.workdir,
        }
        wire.write_frame(request_write, setup)
        wire.write_frame(request_write, {"code": job["code"], "io": job.get("io_cases") is not None})
        signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, max(timeout, 0.01))
        try:
            ready = channel.receive()
            if not ready.get("ok"):
                return {"passed": False, "reason": f"the code failed to load: {ready.get('raise')}"}
            names = ready.get("names")
            names = [n for n in names if type(n) is str] if type(names) is list else []
            values = ready.get("values")
            values = [n for n in values if type(n) is str] if type(values) is list else []
            _run_tests(job, channel, names, values)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if channel.failure is not None:
            return {"passed": False, "reason": channel.failure}
        return {"passed": True, "reason": "passed"}
    except CandidateFailure as failure:
        return {"passed": False, "reason": channel.failure or str(failure)}
    except Exception as error:  # noqa: BLE001  (a failing test, or a test the candidate made fail)
        return {"passed": False, "reason": f"{type(error).__name__}: {str(error)[:200]}"}
    finally:
        for fd in (request_read, reply_write, request_write, reply_read):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        if process is not None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    """Serve jobs: stdin carries `{"job": ..., "isolation": {...}}` frames, the verdicts go to the original stdout."""
    replies = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # print() in test code must not corrupt the verdict stream
    os.close(devnull)
    sys.stdout = open(1, "w", closefd=False)
    while True:
        try:
            message = wire.read_frame(0)
        except wire.WireError:
            return
        isolation = Isolation(**message["isolation"])
        verdict = run_job(message["job"], isolation)
        wire.write_frame(replies, verdict)


if __name__ == "__main__":
    main()
