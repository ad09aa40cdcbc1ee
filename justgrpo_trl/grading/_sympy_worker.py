"""Symbolic-equivalence fork server: a standalone script, run by `justgrpo_trl.grading.symbolic` in its own process.

Why a fork server: sympy can run without bound on an adversarial answer (`10^{10^{10}}`, `(100!)!`), a thread cannot
be stopped, and importing sympy + math-verify takes about a second. So this process imports them once, then forks one
short-lived child per comparison; a child that overruns is killed (SIGKILL) at no cost to the others, and a fresh
child starts in milliseconds.

Protocol (one JSON object per line on stdin / stdout):

* the server prints `"ready"` once its imports are done (and warmed by one comparison);
* request `{"id": n, "mode": "verify" | "reference", "pred": str, "gold": str, "seconds": s, "deadline": t}`:
  compare in a child that may run `s` seconds after it starts and never past `t` (a `time.monotonic()` value, a
  clock shared by all processes of the machine). At most `argv[1]` children run at once; the others wait in order;
* request `{"cancel": [n, ...]}`: forget those requests (kill their children if running);
* reply `{"id": n, "result": true | false | null}`: `null` when the child was killed (time) or crashed.

The server imports nothing from `justgrpo_trl` (whose `__init__` pulls in model code) and exits, killing its
children, when stdin closes (its parent died or closed the pipe). Anything the parsers print goes to stderr.
"""

import collections
import json
import math
import os
import select
import signal
import sys
import time

# Address-space limit of each child: an answer that tries to build a huge integer fails fast instead of swapping.
_MEMORY_LIMIT_BYTES = 2 * 1024**3


# --------------------------------------------------------------------------------------------------------------
# The comparisons (run in a child)
# --------------------------------------------------------------------------------------------------------------


def _verify(pred, gold):
    """math-verify's verdict on two already normalized answers (each parsed as the content of a `\\boxed{}`)."""
    from math_verify import parse, verify

    gold_parsed = parse("\\boxed{" + gold + "}", parsing_timeout=None)
    pred_parsed = parse("\\boxed{" + pred + "}", parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def _load_reference_rules():
    """`_reference_rules.py` from this script's folder, loaded by path (that folder is not on `sys.path`: its
    `math.py` would shadow the standard library)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_reference_rules.py")
    spec = importlib.util.spec_from_file_location("_justgrpo_reference_rules", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_REFERENCE = _load_reference_rules()


def _reference(pred, gold):
    """The reference grader's whole `math_equal` (its sympy step included) on two normalized answers."""
    return _REFERENCE.math_equal(pred, gold, _REFERENCE.symbolic_equal)


_MODES = {"verify": _verify, "reference": _reference}


_WARM_UP = [
    ("\\frac{1}{2}", "0.5"),
    ("x^2-1", "(x-1)(x+1)"),
    ("\\frac{\\pi}{2}", "\\frac{2\\pi}{4}"),
    ("\\sin^2 x+\\cos^2 x", "1"),
    ("\\sqrt{8}", "2\\sqrt{2}"),
    ("(0,\\infty)", "[0,1]"),
    ("\\{1,2\\}", "1,2"),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}1/2\\\\2\\end{pmatrix}"),
    ("x=\\log_2 8 + e^{i\\pi}", "y"),
    ("50\\%", "1+2i"),
]


def _child(request, write_fd):
    """Body of a forked child: limit itself, compare, write one JSON value, exit without cleanup."""
    result = None
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (_MEMORY_LIMIT_BYTES, _MEMORY_LIMIT_BYTES))
        cpu = int(math.ceil(request["seconds"])) + 1  # a backstop: the server kills it at `seconds` already
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    except (ImportError, ValueError, OSError):
        pass
    try:
        sys.setrecursionlimit(10_000)
        result = bool(_MODES[request["mode"]](request["pred"], request["gold"]))
    except BaseException:  # noqa: B036  (any parser failure, MemoryError or RecursionError means "not equal")
        result = False
    try:
        os.write(write_fd, json.dumps(result).encode())
    finally:
        os._exit(0)


# --------------------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------------------


class _Running:
    """A running child: its request id, pid, result pipe and kill time."""

    def __init__(self, request_id, pid, read_fd, kill_at):
        self.request_id, self.pid, self.read_fd, self.kill_at = request_id, pid, read_fd, kill_at
        self.data = b""


def _reap(child):
    try:
        os.kill(child.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        os.waitpid(child.pid, 0)
    except ChildProcessError:
        pass
    os.close(child.read_fd)


def serve(max_children):
    answers = sys.stdout
    sys.stdout = sys.stderr
    import latex2sympy2_extended  # noqa: F401  (pay the imports before announcing readiness, not in each child)
    import math_verify  # noqa: F401
    import sympy  # noqa: F401

    # Warm math-verify's and sympy's lazy imports and caches once here rather than in every child (a cold child
    # spends 0.1-0.3 s on them for answers with pi, trigonometry, intervals or matrices).
    for mode in (_verify, _reference):
        for pred, gold in _WARM_UP:
            mode(pred, gold)

    def reply(request_id, result):
        answers.write(json.dumps({"id": request_id, "result": result}) + "\n")
        answers.flush()

    answers.write(json.dumps("ready") + "\n")
    answers.flush()

    stdin_fd = sys.stdin.fileno()
    buffer = b""
    queue = collections.deque()
    running = {}  # read_fd -> _Running
    stdin_open = True
    while stdin_open or running:
        now = time.monotonic()
        # Kill overrunning children.
        for fd, child in list(running.items()):
            if child.kill_at <= now:
                del running[fd]
                _reap(child)
                reply(child.request_id, None)
        # Start queued requests while there is room; one whose deadline has passed is answered at once.
        while queue and len(running) < max_children:
            request = queue.popleft()
            kill_at = min(now + float(request["seconds"]), float(request["deadline"]))
            if kill_at <= now:
                reply(request["id"], None)
                continue
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read_fd)
                _child(request, write_fd)
            os.close(write_fd)
            running[read_fd] = _Running(request["id"], pid, read_fd, kill_at)
        wait = min((c.kill_at for c in running.values()), default=now + 60.0) - now
        readable, _, _ = select.select(([stdin_fd] if stdin_open else []) + list(running), [], [], max(0.0, wait))
        for fd in readable:
            if fd == stdin_fd:
                chunk = os.read(stdin_fd, 65536)
                if not chunk:
                    stdin_open = False
                    queue.clear()
                    for child in running.values():  # nobody is left to read the answers
                        _reap(child)
                    running.clear()
                    break
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    message = json.loads(line)
                    if "cancel" in message:
                        cancelled = set(message["cancel"])
                        queue = collections.deque(r for r in queue if r["id"] not in cancelled)
                        for rfd, child in list(running.items()):
                            if child.request_id in cancelled:
                                del running[rfd]
                                _reap(child)
                    else:
                        queue.append(message)
                continue
            child = running.get(fd)
            if child is None:
                continue
            chunk = os.read(fd, 65536)
            if chunk:
                child.data += chunk
                continue
            del running[fd]  # end of file: the child wrote its answer (or died) and exited
            _reap(child)
            try:
                result = json.loads(child.data)
            except ValueError:
                result = None
            reply(child.request_id, result if isinstance(result, bool) else None)


if __name__ == "__main__":
    serve(max(1, int(sys.argv[1])) if len(sys.argv) > 1 else 1)
