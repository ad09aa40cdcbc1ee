"""Code executors: what grades `CodeJob`s behind `code_reward`, and the interface a remote service implements.

An executor is any object with a method `run(jobs: Sequence[CodeJob]) -> list[Verdict]` (one verdict per job, in
order; see `CodeExecutor`). `LocalExecutor` (the default) grades on this machine with a pool of warm judge
processes, each starting one isolated candidate process per job (see `_judge` and `isolation`). To grade elsewhere,
send `job.to_dict()` (plain JSON) to your service, grade it there with the same rules (e.g. by running
`LocalExecutor` on the service's machines), and return `Verdict`s:

```python
class RemoteExecutor:
    def run(self, jobs):
        answers = requests.post(URL, json=[job.to_dict() for job in jobs], timeout=600).json()
        return [Verdict(passed=a["passed"], reason=a["reason"]) for a in answers]

reward = make_code_reward(executor=RemoteExecutor())
```
"""

from __future__ import annotations

import atexit
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from . import _wire as wire
from .isolation import Isolation, resolve_isolation

_JUDGE = Path(__file__).with_name("_judge.py")
_ROOT_PREFIX = "justgrpo-sandbox-"  # + the executor's pid + "-": one judge's directory (see `_Worker`)
JUDGE_MEMORY_MB = 2048

__all__ = ["CodeExecutor", "CodeJob", "LocalExecutor", "Verdict", "default_executor", "sweep_stale_roots"]


@dataclass(frozen=True)
class CodeJob:
    """One completion to grade.

    Attributes:
        code: The candidate's source; the only thing the candidate process receives.
        tests: Trusted test source, run by the judge (never in the candidate's process). Every name it uses that
            `setup` does not define and the candidate's code does define is bound to a proxy of the candidate's
            function; arguments and results cross as plain values.
        setup: Trusted source run by the judge before `tests` (HumanEval: the prompt's imports and helpers; MBPP:
            `test_imports` and `test_setup_code`).
        entry_point: A function that must be the candidate's even if `setup` defines it (HumanEval's stub).
        io_cases: Standard-input/output tests instead: `(stdin, expected stdout)` pairs; the program runs once per
            pair and its output is compared, whitespace at line ends and around the text ignored.
        timeout: Wall-clock seconds for the whole job.
        memory_mb: Address-space limit of the candidate process (0: none).
    """

    code: str
    tests: str = ""
    setup: str = ""
    entry_point: str | None = None
    io_cases: tuple[tuple[str, str], ...] | None = None
    timeout: float = 5.0
    memory_mb: int = 1024

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.io_cases is not None:
            data["io_cases"] = [list(case) for case in self.io_cases]
        return data


@dataclass(frozen=True)
class Verdict:
    """The outcome of one job: `passed`, and why not."""

    passed: bool
    reason: str = ""


@runtime_checkable
class CodeExecutor(Protocol):
    """Grades jobs: returns one `Verdict` per job, in order. Must be safe to call from several threads."""

    def run(self, jobs: Sequence[CodeJob]) -> list[Verdict]: ...


class _Worker:
    """One warm judge process, and its host directory, which this process creates and removes, so that a judge
    killed mid-job leaves nothing behind. Without namespaces its jobs' directories are there; with them it holds
    only mount points (where a root judge makes the paths its sandbox reads reachable by nobody)."""

    def __init__(self, isolation: Isolation, judge_memory_mb: int) -> None:
        self.root = tempfile.mkdtemp(prefix=f"{_ROOT_PREFIX}{os.getpid()}-")
        os.chmod(self.root, 0o755)  # reachable by the sandbox's user; what is inside is the judge's to protect
        argv = [sys.executable, "-I", str(_JUDGE), "--root", self.root, "--memory-mb", str(judge_memory_mb)]
        threads = dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), "1")
        try:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", **threads},  # no tokens
                start_new_session=True,
            )
        except BaseException:
            self._remove_root()
            raise

    def grade(self, job: CodeJob, isolation: Isolation) -> Verdict:
        message = {"job": job.to_dict(), "isolation": asdict(isolation)}
        try:
            wire.write_trusted(self.process.stdin.fileno(), message)
            # The judge enforces the job's timeout itself; the margin covers starting and cleaning up.
            fd = self.process.stdout.fileno()
            if not select.select([fd], [], [], job.timeout + 10.0)[0]:
                raise TimeoutError
            verdict = wire.read_trusted(fd)  # from our own judge process
        except (OSError, TimeoutError, EOFError, ValueError, wire.WireError):
            self.close()
            return Verdict(False, "judge process failed")
        return Verdict(bool(verdict.get("passed") is True), str(verdict.get("reason", "")))

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self._remove_root()

    def _remove_root(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


def sweep_stale_roots(directory: str | None = None) -> list[str]:
    """Remove the job directories of executors that are gone (killed before they could remove them); returns them."""
    directory = directory or tempfile.gettempdir()
    removed = []
    for entry in os.scandir(directory):
        owner = entry.name[len(_ROOT_PREFIX) :].partition("-")[0]
        if not entry.name.startswith(_ROOT_PREFIX) or not owner.isdigit() or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            os.kill(int(owner), 0)
            continue  # its executor is alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.path)
    return removed


class LocalExecutor:
    """Grades on this machine: `num_workers` warm judge processes, each running one isolated candidate at a time.

    Args:
        num_workers: Jobs graded at once (default: the CPU count).
        isolation: The layers to use (default: all); unavailable ones are dropped with a loud warning.
        require_full_isolation: Refuse (`IsolationUnavailable`) instead of running with fewer layers.
        judge_memory_mb: Address-space limit of each judge process (the trusted side, which decodes the candidate's
            values and runs the tests); 0 for none.
    """

    def __init__(
        self,
        num_workers: int | None = None,
        *,
        isolation: Isolation | None = None,
        require_full_isolation: bool = False,
        judge_memory_mb: int = JUDGE_MEMORY_MB,
    ) -> None:
        self.num_workers = max(1, num_workers or os.cpu_count() or 1)
        self.isolation = resolve_isolation(isolation, require_full=require_full_isolation)
        self.judge_memory_mb = judge_memory_mb
        sweep_stale_roots()
        executor = weakref.ref(self)  # an executor never closed (`default_executor`) still removes its directories
        atexit.register(lambda: executor() is not None and executor().close())
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []

    def _take(self) -> _Worker:
        try:
            worker = self._idle.get_nowait()
            if worker.alive:
                return worker
            worker.close()
        except queue.Empty:
            pass
        worker = _Worker(self.isolation, self.judge_memory_mb)
        with self._lock:
            self._workers = [w for w in self._workers if w.alive] + [worker]
        return worker

    def _grade(self, job: CodeJob) -> Verdict:
        worker = self._take()
        verdict = worker.grade(job, self.isolation)
        if worker.alive:
            self._idle.put(worker)
        return verdict

    def run(self, jobs: Sequence[CodeJob]) -> list[Verdict]:
        if not jobs:
            return []
        with ThreadPoolExecutor(max_workers=min(self.num_workers, len(jobs))) as pool:
            return list(pool.map(self._grade, jobs))

    def close(self) -> None:
        """Stop the judge processes and remove their directories (done at exit for an executor never closed)."""
        with self._lock:
            workers, self._workers = self._workers, []
        for worker in workers:
            worker.close()
        while not self._idle.empty():
            self._idle.get_nowait()

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_default: dict[int, LocalExecutor] = {}
_default_lock = threading.Lock()


def default_executor(num_workers: int | None = None) -> LocalExecutor:
    """A process-wide `LocalExecutor` per worker count (warm workers are reused across reward calls)."""
    key = num_workers or 0
    with _default_lock:
        if key not in _default:
            _default[key] = LocalExecutor(num_workers)
        return _default[key]
