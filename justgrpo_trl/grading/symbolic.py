"""Symbolic answer equivalence (sympy) under a hard timeout, safe to call from any thread.

sympy can take unbounded time or memory on a pathological expression (e.g. `2^{2^{2^{2^{2^{2}}}}}`), and a Python
thread cannot be stopped, while `signal.alarm` only works in the main thread. So comparisons run in a small pool of
long-lived worker processes (`_sympy_worker.py`); a worker that overruns its timeout is killed and replaced, and the
answer counts as not equal. Workers start lazily; their start-up (importing sympy) is not charged to the timeout.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = ["symbolic_equal"]

_WORKER_SCRIPT = Path(__file__).with_name("_sympy_worker.py")
# Run the worker by path in isolated mode (`-I`: no current directory on sys.path), then give it the caller's
# sys.path (so a venv or PYTHONPATH install of sympy is found) minus the script's own folder, whose `math.py` would
# shadow the standard library.
_BOOTSTRAP = (
    "import json, runpy, sys; sys.path[:] = json.loads(sys.argv[1]); runpy.run_path(sys.argv[2], run_name='__main__')"
)
_STARTUP_TIMEOUT = 120.0


class _Worker:
    """One worker process and the line protocol to talk to it."""

    def __init__(self) -> None:
        here = _WORKER_SCRIPT.parent.resolve()
        search_path = [str(Path(p).resolve()) for p in sys.path if p and Path(p).resolve() != here]
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-c", _BOOTSTRAP, json.dumps(search_path), str(_WORKER_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal is the caller's to handle, not the worker's
        )
        self._buffer = b""
        if self._read_line(_STARTUP_TIMEOUT) != "ready":
            self.kill()
            raise RuntimeError("the sympy worker did not start")

    def _read_line(self, timeout: float) -> object | None:
        """The next JSON line from the worker, or `None` on timeout or if the worker died."""
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError:
            return None

    def ask(self, pred: str, gold: str, rel_tol: float, timeout: float) -> bool | None:
        """The worker's verdict, or `None` if it did not answer within `timeout` (the worker is then unusable)."""
        try:
            self.process.stdin.write((json.dumps([pred, gold, rel_tol]) + "\n").encode())
            self.process.stdin.flush()
        except OSError:
            return None
        answer = self._read_line(timeout)
        return answer if isinstance(answer, bool) else None

    def kill(self) -> None:
        try:
            self.process.kill()
        except OSError:
            pass
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass


class _WorkerPool:
    """At most `size` workers, handed out one caller at a time; overrun workers are killed, not returned."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._idle: list[_Worker] = []
        self._count = 0
        self._condition = threading.Condition()

    def acquire(self) -> _Worker:
        if self._pid != os.getpid():  # in a forked child: the parent's workers and lock are not ours
            self._reset()
        with self._condition:
            while not self._idle and self._count >= self.size:
                self._condition.wait()
            if self._idle:
                return self._idle.pop()
            self._count += 1
        try:
            return _Worker()
        except BaseException:
            self._discard()
            raise

    def release(self, worker: _Worker, healthy: bool) -> None:
        if not healthy:
            worker.kill()
            self._discard()
            return
        with self._condition:
            self._idle.append(worker)
            self._condition.notify()

    def _discard(self) -> None:
        with self._condition:
            self._count -= 1
            self._condition.notify()

    def close(self) -> None:
        if self._pid != os.getpid():
            return
        with self._condition:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()


_POOL = _WorkerPool(size=max(1, min(4, os.cpu_count() or 1)))
atexit.register(_POOL.close)


def symbolic_equal(pred: str, gold: str, *, timeout: float = 5.0, rel_tol: float = 1e-4) -> bool:
    """Whether two answers (LaTeX, or plain `sqrt(2)/2`-style) are equal for sympy: `simplify(a - b) == 0`, or
    numerically equal within `rel_tol`. Returns `False` if either does not parse or the check exceeds `timeout`."""
    try:
        worker = _POOL.acquire()
    except RuntimeError:
        return False
    verdict = worker.ask(pred, gold, rel_tol, timeout)
    _POOL.release(worker, healthy=verdict is not None)
    return bool(verdict)
