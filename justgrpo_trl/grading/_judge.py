"""The judge: runs a job's trusted test code against a candidate that lives in another, isolated process.

A judge worker is a long-lived process (`python -I .../grading/_judge.py`, which imports only its sibling
modules, not the package) that reads jobs from its stdin and writes verdicts to its stdout (see `_wire`). It keeps
a warm fork server (`_sandbox_runner.py`, confined as `isolation` describes) that gives each job a fresh candidate
process, sends that process only the candidate's code,
then runs the tests *here*: every function of the candidate that the tests call is replaced by a `Proxy` that sends
the arguments as plain values and decodes the reply into plain values. Comparisons therefore happen in this process,
on builtin values, and the verdict is "the tests ran to their end without an exception" as seen from here. The
candidate process never holds a pass token, the tests or the expected values.
"""

from __future__ import annotations

import ast
import builtins
import marshal
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

if __package__:
    from . import _wire as wire
    from .isolation import Isolation, candidate_launch, sandbox_as_nobody, seccomp_program, stage_paths
else:  # started as a script: import the sibling modules alone, not the package (which loads torch)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _wire as wire
    from isolation import Isolation, candidate_launch, sandbox_as_nobody, seccomp_program, stage_paths

MAX_STDERR_BYTES = 4096
MAX_REASON_CHARS = 500  # a verdict's reason quotes the candidate (an exception's message): never at length
MAX_TASKS = 32  # processes and threads of one job (with namespaces counted for that job alone)
WORKDIR_BYTES, WORKDIR_INODES = 64 * 1024 * 1024, 4096  # a job's own tmpfs (with namespaces)


class CandidateFailure(BaseException):
    """The candidate process died, timed out or sent something that is not a plain value.

    A `BaseException`, so that a test's `except Exception:` cannot swallow it; and the job remembers it anyway.
    """


def _decoded(channel: _Channel, data: Any) -> Any:
    try:
        return wire.decode(data)
    except wire.WireError as error:
        channel.fail(f"malformed value ({error})")


def _text(data: Any) -> str:
    """A string the candidate sent (an exception's name or message), or "" if it is not one."""
    try:
        value = wire.decode(data)
    except wire.WireError:
        return ""
    return value if type(value) is str else ""


def _names(channel: _Channel, data: Any) -> list[str]:
    value = _decoded(channel, data)
    return [name for name in value if type(name) is str] if type(value) is list else []


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
            return wire.read_json(self.replies)
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
            wire.write_trusted(channel.requests, {"call": self.__name__, "args": args, "kwargs": kwargs})
        except wire.NotPlain as error:
            raise TypeError(f"the tests pass a value that cannot cross to the sandbox: {error}") from None
        except OSError:
            channel.fail("candidate process gone")
        reply = channel.receive()
        if "value" in reply:
            return _decoded(channel, reply["value"])
        if "raise" in reply:
            raise _builtin_exception(_text(reply["raise"]))(_text(reply.get("message")))
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
    wire.write_trusted(channel.requests, {"get": name})
    reply = channel.receive()
    if "value" not in reply:
        raise NameError(f"the candidate's {name} is not a plain value")
    return _decoded(channel, reply["value"])


def _run_tests(job: dict[str, Any], channel: _Channel, candidate_names: list[str], values: list[str]) -> None:
    """Run the trusted setup and tests here, with the candidate's functions replaced by proxies."""
    if job.get("io_cases") is not None:
        for stdin, expected in job["io_cases"]:
            wire.write_trusted(channel.requests, {"stdin": str(stdin)})
            reply = channel.receive()
            output = _decoded(channel, reply["value"]) if "value" in reply else None
            if type(output) is not str:
                raise AssertionError(f"the program failed: {_text(reply.get('raise'))}")
            if _normalise_output(output) != _normalise_output(str(expected)):
                raise AssertionError("wrong output")
        return
    namespace: dict[str, Any] = {"__name__": "__judge__", "__builtins__": builtins}
    exec(compile(job.get("setup") or "", "<setup>", "exec"), namespace)
    entry_point = job.get("entry_point")
    loaded = {name for name in _loaded_names(job["tests"]) if name not in namespace}
    # A builtin name stays the builtin: a candidate's own `abs` or `isinstance` must not stand in for the one the
    # tests call around the function under test...
    wanted = {name for name in loaded if not hasattr(builtins, name)}
    if entry_point:
        if entry_point not in candidate_names:
            raise NameError(f"the candidate does not define {entry_point}")
        wanted.add(entry_point)
    functions = wanted & set(candidate_names)
    if not functions:
        # ...unless the function under test has a builtin's name (an MBPP task to write `pow`): when the tests call
        # none of the candidate's other functions, the builtin-named ones it defines are what they test.
        functions = loaded & set(candidate_names)
    for name in functions:
        namespace[name] = Proxy(channel, name)
    fetched = sorted(wanted & set(values) - set(candidate_names))  # plain-value globals the tests read
    for name in fetched:
        namespace[name] = _fetch(channel, name)
    if not functions and not fetched:
        raise NameError("the tests use nothing the candidate defines")  # a verdict that cannot depend on it
    exec(compile(job["tests"], "<tests>", "exec"), namespace)


_alarm_rang = False


def _alarm(signum: int, frame: Any) -> None:
    global _alarm_rang
    _alarm_rang = True  # remembered: test code that swallows the exception still fails the job
    raise CandidateFailure("timeout")


class _Server:
    """The candidates' fork server of this judge (`_sandbox_runner.py`, confined as `isolation` says), kept warm
    across jobs. One job at a time: `start` hands it the job's code, confinement and pipes; `finish` makes it kill
    everything the job started and confirm."""

    def __init__(self, isolation: Isolation, host_root: str | None):
        self.isolation = isolation
        self.root = None  # the host directory of the jobs: without namespaces only
        if not isolation.namespaces and host_root is not None:
            self.root = os.path.join(host_root, "jobs")
            os.makedirs(self.root, exist_ok=True)
        self.jobs = 0
        self.workdir: str | None = None
        self.sent: bool | None = False  # the current job: not sent, sent, or broken off while sending
        self.control, theirs = socket.socketpair()
        self.process: subprocess.Popen | None = None
        launch = None
        try:
            staged = _staged(host_root) if sandbox_as_nobody(isolation) else None
            self.launch = launch = candidate_launch(isolation, theirs.fileno(), self.root, staged)
            if self.root is not None and launch.user is not None:
                os.chown(self.root, launch.user, launch.user)
            self.process = subprocess.Popen(
                self.launch.argv,
                executable=self.launch.executable,
                user=self.launch.user,
                group=self.launch.user,
                extra_groups=[] if self.launch.user is not None else None,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": self.launch.workdir},
                cwd=self.root or "/",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(), *self.launch.fds),
                start_new_session=True,
            )
        except BaseException:
            self.close()
            raise
        finally:
            theirs.close()
            for fd in launch.fds if launch is not None else ():
                os.close(fd)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, job: dict[str, Any], timeout: float, stderr: Any) -> tuple[int, int]:
        """Send one job; returns the judge's ends of its pipes (requests, replies)."""
        self.jobs += 1
        inner = self.launch.workdir  # with namespaces: the job's own tmpfs
        if self.root is not None:
            name = f"job{self.jobs}-{os.urandom(6).hex()}"  # unguessable: a job cannot prepare the next one's
            self.workdir = workdir = os.path.join(self.root, name)
            os.mkdir(workdir)
            if self.launch.user is not None:
                os.chown(workdir, self.launch.user, self.launch.user)
            inner = f"{self.launch.workdir}/{name}"
        memory_mb = int(job.get("memory_mb", 1024))
        landlock = None
        if self.launch.landlock is not None:
            landlock = {"read_paths": self.launch.landlock["read_paths"], "write_paths": [inner, "/dev/null"]}
        message = {
            "limits": {
                "memory_bytes": memory_mb * 1024 * 1024 if memory_mb else None,
                "cpu_seconds": int(timeout) + 1,
                "file_bytes": 16 * 1024 * 1024,
                "open_files": 256,
                "processes": MAX_TASKS,
            },
            "job_namespaces": self.isolation.namespaces,
            "own_user": self.isolation.unprivileged,
            "workdir_bytes": WORKDIR_BYTES,
            "workdir_inodes": WORKDIR_INODES,
            "landlock": landlock,
            "seccomp": seccomp_program() if self.isolation.seccomp else None,
            "workdir": inner,
            "code": str(job["code"]),
            "io": job.get("io_cases") is not None,
        }
        body = marshal.dumps(message)
        self.sent = False
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        try:
            theirs = [request_read, reply_write, stderr.fileno()]
            self.sent = None  # from here on, a failure leaves the server mid-message: it must be replaced
            socket.send_fds(self.control, [len(body).to_bytes(4, "big")], theirs)
            self.control.sendall(body)
            self.sent = True
        except BaseException:
            for fd in (request_write, reply_read):
                os.close(fd)
            raise
        finally:
            os.close(request_read)
            os.close(reply_write)
        return request_write, reply_read

    def finish(self, timeout: float = 5.0) -> bool:
        """End the current job: every process it started is killed, then its directory is removed. False if the
        server did not confirm the killing."""
        try:
            if self.sent is None:
                return False
            if not self.sent:
                return True  # the job never reached the server
            self.control.sendall(b"e")
            self.control.settimeout(timeout)
            return self.control.recv(1) == b"c"
        except OSError:
            return False
        finally:
            self.sent = False
            self.control.settimeout(None)
            self.workdir = None
            if self.root is not None:
                _empty(self.root)  # the job's directory, and anything it left beside it

    def close(self) -> None:
        """Kill the server and its sandbox (bubblewrap's PID namespace takes every process with it)."""
        self.control.close()
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.process.wait()
        if self.root is not None:
            _empty(self.root)


_staged_paths: dict[str, str] | None = None


def _staged(host_root: str | None) -> dict[str, str]:
    """`isolation.stage_paths`, once per judge (its binds live as long as this process's mount namespace)."""
    global _staged_paths
    if _staged_paths is None:
        if host_root is None:
            raise OSError("a root judge needs a directory (--root) to make its paths reachable by nobody")
        os.makedirs(os.path.join(host_root, "stage"))  # never emptied here: it holds binds of the paths staged
        _staged_paths = stage_paths(os.path.join(host_root, "stage"))
    return _staged_paths


def _empty(root: str) -> None:
    """Remove everything under `root` (the executor removes `root` itself when this judge is gone)."""
    for entry in os.listdir(root):
        path = os.path.join(root, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)


_server: _Server | None = None
_host_root: str | None = None  # the executor's directory for this judge (see `executor._Worker`)


def _get_server(isolation: Isolation) -> _Server:
    global _server
    if _server is not None and (_server.isolation != isolation or not _server.alive):
        _server.close()
        _server = None
    if _server is None:
        if not isolation.namespaces and _host_root is None:
            raise OSError("without namespaces the judge needs a job directory (--root)")
        _server = _Server(isolation, _host_root)
    return _server


def prepare_server(isolation: Isolation) -> None:
    """Start the fork server now, if it is not running, so that the first job does not wait for it."""
    try:
        _get_server(isolation)
    except OSError:
        pass


def run_job(job: dict[str, Any], isolation: Isolation) -> dict[str, Any]:
    """Grade one job (see `executor.CodeJob.to_dict`); returns `{"passed": bool, "reason": str, "stderr": str}`,
    `stderr` being the start of the candidate's standard error (tracebacks)."""
    global _server
    with tempfile.TemporaryFile() as stderr:
        try:
            server = _get_server(isolation)
            verdict = _run_job(job, server, stderr)
        except OSError as error:
            verdict = {"passed": False, "reason": f"could not start the sandbox: {error}"}
            server = None
        if server is not None and not server.finish():
            server.close()  # it did not confirm the clean-up: start afresh
            _server = None
        verdict["reason"] = verdict["reason"][:MAX_REASON_CHARS]
        verdict["stderr"] = _stderr_head(stderr)
    return verdict


def _stderr_head(file: Any) -> str:
    try:
        file.seek(0)
        return file.read(MAX_STDERR_BYTES).decode("utf-8", errors="replace")
    except (OSError, ValueError):
        return ""


def _run_job(job: dict[str, Any], server: _Server, stderr: Any) -> dict[str, Any]:
    global _alarm_rang
    _alarm_rang = False
    timeout = float(job.get("timeout", 5.0))
    channel = _Channel(-1, -1, time.monotonic() + timeout)
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, max(timeout, 0.01))
    try:
        try:
            channel.requests, channel.replies = server.start(job, timeout, stderr)
            ready = channel.receive()
            if ready.get("ok") is not True:
                return {"passed": False, "reason": f"the code failed to load: {_text(ready.get('raise'))}"}
            names = _names(channel, ready.get("names"))
            values = _names(channel, ready.get("values"))
            _run_tests(job, channel, names, values)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if channel.failure is not None or _alarm_rang:
            return {"passed": False, "reason": channel.failure or "timeout"}
        return {"passed": True, "reason": "passed"}
    except CandidateFailure as failure:
        return {"passed": False, "reason": channel.failure or str(failure)}
    except OSError as error:
        return {"passed": False, "reason": f"candidate process gone ({error})"}
    except Exception as error:  # noqa: BLE001  (a failing test, or a test the candidate made fail)
        return {"passed": False, "reason": f"{type(error).__name__}: {str(error)[:200]}"}
    finally:
        for fd in (channel.requests, channel.replies):
            if fd >= 0:
                os.close(fd)


def _limit_self(memory_mb: int) -> None:
    """This judge's own limits: address space (soft, so that a job's candidate may still ask for more) and no core
    dumps. A value from the candidate that would take more raises `MemoryError` in the tests: that job fails."""
    import resource

    if memory_mb > 0:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        soft = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def main() -> None:
    """Serve jobs: stdin carries `{"job": ..., "isolation": {...}}` frames (marshal, from the trusted executor), the
    verdicts go to the original stdout. Arguments: `--root DIR`, the directory the executor created for this judge
    (its jobs' directories without namespaces; mount points of the paths a root judge stages for nobody), and
    `--memory-mb N`, this judge's address-space limit."""
    import argparse

    global _host_root
    parser = argparse.ArgumentParser()
    parser.add_argument("--root")
    parser.add_argument("--memory-mb", type=int, default=0)
    args = parser.parse_args()
    _host_root = args.root
    _limit_self(args.memory_mb)
    replies = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # print() in test code must not corrupt the verdict stream
    os.close(devnull)
    sys.stdout = open(1, "w", closefd=False)
    while True:
        try:
            message = wire.read_trusted(0)
        except (wire.WireError, EOFError, ValueError):
            return
        isolation = Isolation(**message["isolation"])
        verdict = run_job(message["job"], isolation)
        wire.write_trusted(replies, verdict)
        prepare_server(isolation)


if __name__ == "__main__":
    main()
