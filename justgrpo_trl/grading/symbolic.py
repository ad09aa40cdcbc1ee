"""Symbolic answer comparisons (math-verify / sympy), each under its own hard wall-clock budget.

sympy can take unbounded time or memory on an adversarial answer (`10^{10^{10}}`, `(100!)!`), a Python thread
cannot be stopped, and `signal.alarm` only works in the main thread. So every comparison runs in a child forked by
a long-lived fork server (`_sympy_worker.py`, which imported sympy and math-verify once); a child that overruns is
killed. At most `max_workers` children (default: the CPU cores) run at once; the others wait in order.

Budgets, so that only a slow answer pays for being slow:

* every comparison may run `timeout` seconds, counted from when a worker starts it (not from when the batch was
  submitted): an answer queued behind a thousand others, or behind answers that never finish, gets its whole
  budget when its turn comes;
* the batch as a whole has a deadline that scales with it: `batch_budget(n, timeout, workers)`, the time `n`
  comparisons that all use their whole budget need on `workers` workers, plus slack. It is a backstop against a
  stuck server, not a rule that decides verdicts: in a batch that meets it no answer is cut short;
* a comparison still undecided when its budget runs out counts as not equal.

So a never-finishing answer costs `timeout / workers` seconds of the batch's wall time (64 of them at 5 s on 2
cores: 160 s), and no honest answer next to it loses its reward. The fork server's start-up (importing sympy,
about a second) is not charged to any budget.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

__all__ = ["batch_budget", "compare_batch", "default_workers", "symbolic_equal"]

_WORKER_SCRIPT = Path(__file__).with_name("_sympy_worker.py")
# Run the server by path in isolated mode (`-I`: no current directory on sys.path), then give it the caller's
# sys.path (so a venv or PYTHONPATH install of sympy is found) minus the script's own folder, whose `math.py` would
# shadow the standard library.
_BOOTSTRAP = (
    "import json, runpy, sys; sys.path[:] = json.loads(sys.argv[1]); script = sys.argv[2]; "
    "sys.argv[:] = [script, *sys.argv[3:]]; runpy.run_path(script, run_name='__main__')"
)
_STARTUP_TIMEOUT = 120.0
# Wall time a comparison may need beyond its budget (fork, pipe, reply, reaping) when the batch deadline is set.
_PER_ANSWER_OVERHEAD = 0.25
_LOST = "lost"  # the result of a request whose server died before answering (retried on a fresh server)

Request = tuple[str, str, str]  # (mode, pred, gold); mode is "verify" (math-verify) or "reference" (sympy)


def default_workers() -> int:
    """Comparisons run at once by default: the CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class _ForkServer:
    """The fork server process and a reader thread that hands its answers to the waiting futures."""

    def __init__(self, max_workers: int) -> None:
        here = _WORKER_SCRIPT.parent.resolve()
        search_path = [str(Path(p).resolve()) for p in sys.path if p and Path(p).resolve() != here]
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-c", _BOOTSTRAP, json.dumps(search_path), str(_WORKER_SCRIPT), str(max_workers)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group (killed as a whole); a terminal Ctrl-C is the caller's
        )
        self._pending: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self.alive = True
        ready: Future = Future()
        self._reader = threading.Thread(target=self._read, args=(ready,), daemon=True)
        self._reader.start()
        try:
            ready.result(timeout=_STARTUP_TIMEOUT)
        except FutureTimeout:
            self.close()
            raise RuntimeError("the symbolic fork server did not start") from None

    def _read(self, ready: Future) -> None:
        for line in self.process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if message == "ready":
                ready.set_result(True)
                continue
            with self._lock:
                future = self._pending.pop(message.get("id"), None)
            if future is not None and not future.done():
                future.set_result(message.get("result"))
        # End of output: the server died. Everyone still waiting is told so (and retried by `compare_batch`).
        self.alive = False
        if not ready.done():
            ready.set_result(False)
        with self._lock:
            pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_result(_LOST)

    def submit(self, mode: str, pred: str, gold: str, seconds: float, deadline: float) -> tuple[int, Future]:
        request_id = next(self._ids)
        future: Future = Future()
        message = {"id": request_id, "mode": mode, "pred": pred, "gold": gold, "seconds": seconds}
        message["deadline"] = deadline
        with self._lock:
            self._pending[request_id] = future
            try:
                self.process.stdin.write((json.dumps(message) + "\n").encode())
                self.process.stdin.flush()
            except (OSError, ValueError):
                self._pending.pop(request_id, None)
                future.set_result(_LOST)
        return request_id, future

    def cancel(self, request_ids: Sequence[int]) -> None:
        if not request_ids:
            return
        with self._lock:
            for request_id in request_ids:
                self._pending.pop(request_id, None)
            try:
                self.process.stdin.write((json.dumps({"cancel": list(request_ids)}) + "\n").encode())
                self.process.stdin.flush()
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        """Kill the server and every child it forked (they share its process group)."""
        self.alive = False
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except OSError:
            pass
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass


_SERVERS: dict[int, _ForkServer] = {}
_SERVERS_LOCK = threading.Lock()
_SERVERS_PID = os.getpid()


def _server(max_workers: int) -> _ForkServer:
    """The (lazily started) fork server for `max_workers`; a fresh one after a fork or if the last one died."""
    global _SERVERS_PID
    with _SERVERS_LOCK:
        if _SERVERS_PID != os.getpid():  # in a forked child: the parent's servers are not ours
            _SERVERS.clear()
            _SERVERS_PID = os.getpid()
        server = _SERVERS.get(max_workers)
        if server is None or not server.alive or server.process.poll() is not None:
            if server is not None:
                server.close()
            server = _SERVERS[max_workers] = _ForkServer(max_workers)
        return server


@atexit.register
def _close_servers() -> None:
    if _SERVERS_PID != os.getpid():
        return
    for server in list(_SERVERS.values()):
        server.close()
    _SERVERS.clear()


def batch_budget(n: int, timeout: float, workers: int) -> float:
    """Seconds a batch of `n` comparisons may take on `workers` workers when every one uses its whole `timeout`:
    the batch deadline of `compare_batch` (a backstop; it never cuts a comparison that is within its budget)."""
    rounds = -(-n // max(1, workers))
    return rounds * (timeout + _PER_ANSWER_OVERHEAD) + timeout + 1.0


def compare_batch(
    requests: Sequence[Request], *, timeout: float = 5.0, max_workers: int | None = None
) -> list[bool | None]:
    """Run every comparison of `requests` in the fork server, each with `timeout` seconds from when a worker
    starts it, the whole batch under the deadline `batch_budget(len(requests), timeout, workers)`.

    Returns, per request, `True` / `False`, or `None` when it was not decided within its budget (the caller
    treats that as not equal). Comparisons lost because the server died (killed from outside) are run again once
    on a fresh server.
    """
    results: list[bool | None] = [None] * len(requests)
    if not requests:
        return results
    workers = max_workers or default_workers()
    try:
        _server(workers)  # start it (if needed) before the deadline starts counting
    except RuntimeError:
        return results
    deadline = time.monotonic() + batch_budget(len(requests), timeout, workers)
    undecided = list(range(len(requests)))
    for _attempt in range(2):
        try:
            server = _server(workers)  # a fresh one if the last one died
        except RuntimeError:
            break
        submitted = [(i, *server.submit(*requests[i], seconds=timeout, deadline=deadline)) for i in undecided]
        lost, unanswered = [], []
        for i, request_id, future in submitted:
            try:
                # The server kills a child at its budget or at the deadline and answers; the slack covers that reply.
                verdict = future.result(timeout=max(0.0, deadline - time.monotonic()) + 0.25)
            except FutureTimeout:
                verdict = None
                unanswered.append(request_id)
            if verdict == _LOST:
                lost.append(i)
            else:
                results[i] = verdict
        server.cancel(unanswered)
        undecided = lost
        if not undecided or time.monotonic() >= deadline:
            break
    return results


def symbolic_equal(
    pred: str, gold: str, *, timeout: float = 5.0, mode: str = "verify", max_workers: int | None = None
) -> bool:
    """Whether two answers are equal for math-verify (`mode="verify"`) or for the reference grader's sympy step
    (`mode="reference"`). `False` if either does not parse or the check does not finish within `timeout` seconds."""
    return bool(compare_batch([(mode, pred, gold)], timeout=timeout, max_workers=max_workers)[0])
