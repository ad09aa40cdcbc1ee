"""Red team, round 2: kernel state that outlives a job, harm that outlives the judge, host-wide resources, and
text that becomes trusted code.

Each attack has a positive control: the same completion where the defence is absent (a naive harness, or the
sandbox with the layers that stop it switched off) must succeed. In the sandbox it must earn nothing, and leave
nothing: the machine's SysV IPC objects, `/dev/shm`, the sandbox directories under the temp dir, the sandbox's
processes and the free disk are the same before and after (`_machine_state`).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from justgrpo_trl.grading import _wire as wire
from justgrpo_trl.grading.executor import CodeJob, LocalExecutor
from justgrpo_trl.grading.isolation import FEATURES, Isolation, available_isolation
from justgrpo_trl.rewards import code_reward, make_code_reward

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox's isolation is Linux's")

ON_CI = os.environ.get("CI") == "true" and sys.platform.startswith("linux") and os.geteuid() == 0
ROOT = os.geteuid() == 0


def _require_full_isolation() -> None:
    missing = [name for name in FEATURES if not getattr(available_isolation(), name)]
    if missing and not ON_CI:
        pytest.skip(f"isolation layers unavailable here: {missing}")
    assert not missing, f"isolation layers unavailable on CI: {missing}"


# --------------------------------------------------------------------------------------------------------------
# What an attack may leave behind
# --------------------------------------------------------------------------------------------------------------


def _sandbox_processes() -> set[tuple[int, str]]:
    """Processes of the sandbox anywhere on the machine (a survivor may have left our process tree)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "_sandbox_runner" in command or "_judge.py" in command or "bwrap" in command:
            found.add((int(entry.name), command[:80]))
    return found


def _machine_state() -> dict[str, Any]:
    ipc = {name: sorted(Path(f"/proc/sysvipc/{name}").read_text().splitlines()[1:]) for name in ("shm", "msg", "sem")}
    return {
        "sysvipc": ipc,
        "dev_shm": sorted(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else [],
        "sandbox_roots": sorted(p.name for p in Path(tempfile.gettempdir()).glob("justgrpo-sandbox-*")),
        "processes": _sandbox_processes(),
    }


def _free_disk() -> int:
    return shutil.disk_usage(tempfile.gettempdir()).free


def _assert_nothing_left(before: dict[str, Any], free_before: int) -> None:
    deadline = time.monotonic() + 10.0  # processes of a closed sandbox take a moment to be reaped
    while _machine_state() != before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _machine_state() == before
    assert abs(_free_disk() - free_before) < 8 * 1024 * 1024, "the attack changed the free disk space"


def _run_naively(code: str, tests: str, cwd: Path, pass_fds: tuple[int, ...] = ()) -> bool:
    """Candidate and tests in one plain process (the positive control): passed if the tests ran to their end."""
    cwd.mkdir(exist_ok=True)
    program = code + "\n" + tests + "\nprint('NAIVE-PASSED')\n"
    result = subprocess.run(
        [sys.executable, "-I", "-c", program], cwd=cwd, capture_output=True, text=True, timeout=60, pass_fds=pass_fds
    )
    return "NAIVE-PASSED" in result.stdout


# --------------------------------------------------------------------------------------------------------------
# Kernel state that outlives a job: a counter kept by the kernel passes `f() == 1` on its second job
# --------------------------------------------------------------------------------------------------------------

COUNTER_TESTS = "assert f() == 1\n"

SYSV_SHM = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
def f():
    segment = libc.shmget({key}, 8, 0o1666)
    address = libc.shmat(segment, None, 0) if segment >= 0 else None
    if address in (None, ctypes.c_void_p(-1).value):
        return -1
    cell = ctypes.c_long.from_address(address)
    value, cell.value = cell.value, cell.value + 1
    return value
"""

SYSV_MSG = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
class Message(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_long), ("value", ctypes.c_long)]
def f():
    queue = libc.msgget({key}, 0o1666)
    if queue < 0:
        return -1
    message = Message()
    value = message.value if libc.msgrcv(queue, ctypes.byref(message), 8, 0, 0o4000) >= 0 else 0
    libc.msgsnd(queue, ctypes.byref(Message(1, value + 1)), 8, 0o4000)
    return value
"""

SYSV_SEM = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
def f():
    semaphores = libc.semget({key}, 1, 0o1666)
    if semaphores < 0:
        return -1
    value = libc.semctl(semaphores, 0, 12)  # GETVAL
    libc.semctl(semaphores, 0, 16, value + 1)  # SETVAL
    return value
"""

POSIX_MQ = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
class Attributes(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_long), ("maxmsg", ctypes.c_long), ("msgsize", ctypes.c_long),
                ("curmsgs", ctypes.c_long), ("pad", ctypes.c_long * 4)]
def f():
    queue = libc.mq_open(b"/{name}", 0o102, 0o600, None)  # O_RDWR | O_CREAT
    if queue < 0:
        return -1
    attributes = Attributes()
    libc.mq_getattr(queue, ctypes.byref(attributes))
    libc.mq_send(queue, b"x", 1, 0)
    return attributes.curmsgs
"""

DEV_SHM_FILE = """
def f():
    try:
        with open("/dev/shm/{name}", "a+") as handle:
            handle.seek(0)
            value = len(handle.read())
            handle.write("x")
        return value
    except OSError:
        return -1
"""


def _remove_host_objects(key: int, name: str) -> None:
    """Clean up after a positive control, which made its objects in the host's IPC namespace."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for get, remove in (("shmget", "shmctl"), ("msgget", "msgctl")):
        ident = getattr(libc, get)(key, 0, 0)
        if ident >= 0:
            getattr(libc, remove)(ident, 0, None)  # IPC_RMID
    ident = libc.semget(key, 0, 0)
    if ident >= 0:
        libc.semctl(ident, 0, 0)
    libc.mq_unlink(f"/{name}".encode())
    Path(f"/dev/shm/{name}").unlink(missing_ok=True)


# name -> (code, the layers that, all switched off, let the state through)
CROSS_JOB = {
    "sysv_shared_memory": (SYSV_SHM, ("namespaces", "seccomp")),
    "sysv_message_queue": (SYSV_MSG, ("namespaces", "seccomp")),
    "sysv_semaphore": (SYSV_SEM, ("namespaces", "seccomp")),
    "posix_message_queue": (POSIX_MQ, ("namespaces", "seccomp", "landlock")),  # Landlock: not beneath its paths
    "dev_shm_file": (DEV_SHM_FILE, ("namespaces", "landlock")),
}


@pytest.mark.parametrize("attack", sorted(CROSS_JOB))
def test_no_kernel_state_of_a_job_reaches_the_next(attack):
    """A counter kept in the kernel is 0 for every job of a warm sandbox, whichever single layer is off; with the
    layers that stop it off, the second job reads the first one's count and earns the reward."""
    _require_full_isolation()
    code_template, defences = CROSS_JOB[attack]
    key, name = secrets.randbelow(2**30) + 1, f"jgrpo-{secrets.token_hex(4)}"
    code = code_template.replace("{key}", str(key)).replace("{name}", name)
    jobs = [CodeJob(code=code, tests=COUNTER_TESTS)] * 3
    try:
        with LocalExecutor(1, isolation=Isolation(**dict.fromkeys(defences, False))) as control:
            assert [v.passed for v in control.run(jobs)] == [False, True, False], "positive control"
    finally:
        _remove_host_objects(key, name)
    before, free = _machine_state(), _free_disk()
    for off in (None, *FEATURES):
        with LocalExecutor(1, isolation=Isolation(**({off: False} if off else {}))) as executor:
            verdicts = executor.run(jobs)
        assert not any(v.passed for v in verdicts), f"{attack} passed with {off or 'no layer'} off: {verdicts}"
    _remove_host_objects(key, name)  # (were any made, the state check below would have failed first)
    _assert_nothing_left(before, free)


# --------------------------------------------------------------------------------------------------------------
# Host-wide resources: the reward says whether the candidate got more than its limits allow
# --------------------------------------------------------------------------------------------------------------


def _ok(body: str) -> str:
    return "OK = False\ntry:\n" + textwrap.indent(textwrap.dedent(body), "    ") + "\nexcept Exception:\n    pass\n"


THREADS = _ok(
    """
    import threading
    threading.stack_size(65536)
    stop, started = threading.Event(), 0
    try:
        for _ in range(400):
            threading.Thread(target=stop.wait, daemon=True).start()
            started += 1
    except RuntimeError:
        pass
    OK = started >= 300
    stop.set()
    """
)
MEMFD_PIN = _ok(
    """
    import os
    held = []
    for _ in range(8):
        held.append(os.memfd_create("pin"))
        os.write(held[-1], b"x" * (15 << 20))
    OK = sum(os.fstat(fd).st_size for fd in held) >= 96 << 20
    """
)
PIPE_PIN = _ok(
    """
    import fcntl, os
    held = 0
    for _ in range(48):
        read, write = os.pipe()
        fcntl.fcntl(write, 1031, 1 << 20)  # F_SETPIPE_SZ
        os.set_blocking(write, False)
        try:
            while True:
                held += os.write(write, b"x" * 65536)
        except BlockingIOError:
            pass
    OK = held >= 32 << 20
    """
)
PARK_DESCRIPTOR = _ok(
    """
    import os, socket
    left, right = socket.socketpair()
    socket.send_fds(left, [b"x"], [os.open("/dev/null", os.O_RDONLY)])
    OK = True
    """
)
FALLOCATE = _ok(
    """
    import ctypes, os
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open("reserved", os.O_CREAT | os.O_WRONLY, 0o600)
    libc.fallocate(fd, 1, ctypes.c_long(0), ctypes.c_long(256 << 20))  # FALLOC_FL_KEEP_SIZE: past RLIMIT_FSIZE
    OK = os.fstat(fd).st_blocks * 512 >= 128 << 20
    """
)
FILL_DISK = _ok(
    """
    written = 0
    for index in range(6):
        with open(f"part{index}", "wb") as handle:
            for _ in range(15):
                written += handle.write(b"x" * (1 << 20))
    OK = written >= 80 << 20
    """
)
SETUID_FILE = _ok(
    """
    import os
    open("suid", "w").close()
    os.chmod("suid", 0o4755)
    OK = os.stat("suid").st_mode & 0o4000 != 0 and os.getuid() == 0
    """
)

RESOURCES = {
    "raw_threads": THREADS,
    "memfd_pinned_memory": MEMFD_PIN,
    "pipe_pinned_memory": PIPE_PIN,
    "descriptor_parked_in_flight": PARK_DESCRIPTOR,
    "fallocate_past_the_file_size_limit": FALLOCATE,
    "fill_the_disk_below_the_file_size_limit": FILL_DISK,
    "root_owned_setuid_file": SETUID_FILE,
}
RESOURCE_TESTS = "assert OK\n"

# What one switched-off layer lets through (still without harm that outlives the job).
_DEGRADED = {
    ("seccomp", "memfd_pinned_memory"),
    ("seccomp", "pipe_pinned_memory"),
    ("seccomp", "descriptor_parked_in_flight"),
    ("namespaces", "fill_the_disk_below_the_file_size_limit"),  # a host directory, bounded per file only
}
if ROOT:  # the kernel never applies RLIMIT_NPROC to root's tasks: only a sandbox running as nobody caps them
    _DEGRADED |= {("namespaces", "raw_threads"), ("unprivileged", "raw_threads")}
    _DEGRADED |= {("namespaces", "root_owned_setuid_file"), ("unprivileged", "root_owned_setuid_file")}


@pytest.mark.parametrize("attack", sorted(RESOURCES))
def test_resources_beyond_the_jobs_limits_are_refused(attack, tmp_path):
    _require_full_isolation()
    code = RESOURCES[attack]
    if attack != "root_owned_setuid_file" or ROOT:
        assert _run_naively(code, RESOURCE_TESTS, tmp_path / "naive"), "positive control"
    shutil.rmtree(tmp_path / "naive", ignore_errors=True)
    before, free = _machine_state(), _free_disk()
    job = CodeJob(code=code, tests=RESOURCE_TESTS, memory_mb=64, timeout=10.0)
    for off in (None, *FEATURES):
        with LocalExecutor(1, isolation=Isolation(**({off: False} if off else {}))) as executor:
            verdict, honest = executor.run([job, CodeJob(code=HONEST, tests=F_TESTS)])
        if (off, attack) not in _DEGRADED:
            assert not verdict.passed, f"{attack} got its resources with {off or 'no layer'} off: {verdict}"
        assert honest.passed, honest
    _assert_nothing_left(before, free)


# --------------------------------------------------------------------------------------------------------------
# The judge: frames that would stall it or take its memory, a judge killed mid-job
# --------------------------------------------------------------------------------------------------------------

HONEST = "def f(x):\n    return x + 1\n"
F_TESTS = "assert f(1) == 2\nassert f(10) == 11\n"
_MODULUS = 2**61 - 1  # every multiple of it hashes to 0


def _forged_reply(frame: str) -> str:
    """A candidate that answers the judge's first call with `frame`, written straight to its reply pipe."""
    return textwrap.dedent(
        f"""
        import os, sys
        FRAME = {frame!r}.encode()
        def f(x):
            replies = sys.modules["__main__"].REPLIES
            os.write(replies, len(FRAME).to_bytes(4, "big") + FRAME)
            import time
            time.sleep(30)
        """
    )


def _colliding_set_frame(count: int) -> str:
    return '{"value":{"s":[' + ",".join(f'{{"i":"{k * _MODULUS}"}}' for k in range(1, count + 1)) + "]}}"


def test_a_set_of_colliding_hashes_cannot_stall_the_judge(monkeypatch):
    _require_full_isolation()
    # Positive control: the integers all hash alike, and without the collision bound the decoder builds the set
    # (60,000 of them would be 1.8e9 comparisons in one C call; 2,000 are quick).
    values = [k * _MODULUS for k in range(1, 60_001)]
    assert len({hash(v) for v in values}) == 1
    import json

    with monkeypatch.context() as patch:
        patch.setattr(wire, "MAX_HASH_COLLISIONS", 10**9)
        assert len(wire.decode(json.loads(_colliding_set_frame(2000))["value"])) == 2000
    before, free = _machine_state(), _free_disk()
    with LocalExecutor(1) as executor:
        start = time.monotonic()
        (verdict,) = executor.run([CodeJob(code=_forged_reply(_colliding_set_frame(60_000)), tests=F_TESTS)])
        assert time.monotonic() - start < 8.0  # answered by the judge itself, not by its watchdog (15 s)
        assert not verdict.passed and "share their hashes" in verdict.reason, verdict
        assert executor.run([CodeJob(code=HONEST, tests=F_TESTS)])[0].passed
    _assert_nothing_left(before, free)


def test_a_frame_of_millions_of_values_is_refused_before_it_is_parsed():
    _require_full_isolation()
    frame = '{"value":[' + "[]," * 2_000_000 + "[]]}"
    assert len(frame) < wire.MAX_REPLY_BYTES  # positive control: the size bound alone would let it through
    with LocalExecutor(1) as executor:
        (verdict,) = executor.run([CodeJob(code=_forged_reply(frame), tests=F_TESTS)])
    assert not verdict.passed and "values" in verdict.reason, verdict


def test_a_verdicts_reason_cannot_carry_megabytes():
    _require_full_isolation()
    message = "A" * (10 << 20)
    frame = '{"ok":false,"raise":{"u":"' + message.encode().hex() + '"}}'
    assert wire.decode({"u": message.encode().hex()}) == message  # positive control: the frame carries it
    code = textwrap.dedent(
        f"""
        import os, sys
        FRAME = {frame!r}.encode()
        os.write(sys.modules["__main__"].REPLIES, len(FRAME).to_bytes(4, "big") + FRAME)
        import time
        time.sleep(30)
        """
    )
    with LocalExecutor(1) as executor:
        (verdict,) = executor.run([CodeJob(code=code, tests=F_TESTS)])
    assert not verdict.passed and len(verdict.reason) <= 500, len(verdict.reason)


def test_the_judge_runs_under_its_own_memory_limit():
    _require_full_isolation()
    with LocalExecutor(1, judge_memory_mb=1536) as executor:
        assert executor.run([CodeJob(code=HONEST, tests=F_TESTS)])[0].passed
        (worker,) = executor._workers
        limits = Path(f"/proc/{worker.process.pid}/limits").read_text()
    line = next(line for line in limits.splitlines() if line.startswith("Max address space"))
    assert line.split()[3] == str(1536 << 20), line
    assert Path(f"/proc/{os.getpid()}/limits").read_text() != limits  # positive control: not inherited from us


@pytest.mark.parametrize("namespaces", [True, False], ids=["own_tmpfs", "host_directory"])
def test_a_judge_killed_mid_job_leaves_nothing(namespaces):
    """The executor kills a judge that stalls (here: one killed from outside while its job holds files); the job's
    files and processes go with it. Positive control without namespaces: the file is on the host while the job
    runs, in the executor's directory, which the executor then removes."""
    _require_full_isolation()
    code = textwrap.dedent(
        """
        import os, time
        with open("blob.part", "wb") as handle:
            handle.write(b"x" * (8 << 20))
        os.rename("blob.part", "blob")  # the test sees the file only once it is whole
        def f(x):
            time.sleep(30)
        """
    )
    before, free = _machine_state(), _free_disk()
    with LocalExecutor(1, isolation=Isolation(namespaces=namespaces)) as executor:
        result: list = []
        thread = threading.Thread(target=lambda: result.extend(executor.run([CodeJob(code, F_TESTS, timeout=30)])))
        thread.start()
        deadline = time.monotonic() + 20
        while not executor._workers and time.monotonic() < deadline:
            time.sleep(0.05)
        (worker,) = executor._workers
        blobs: list[Path] = []
        while not blobs and time.monotonic() < deadline:
            time.sleep(0.1)
            blobs = list(Path(worker.root).glob("jobs/*/blob"))
            if namespaces and time.monotonic() > deadline - 17:
                break  # with namespaces the file never appears on the host: give the job 3 s to write it
        if namespaces:
            assert not blobs
        else:
            assert blobs and blobs[0].stat().st_size == 8 << 20, "positive control: the file is on the host"
        os.kill(worker.process.pid, signal.SIGKILL)
        thread.join(30)
        assert result and not result[0].passed and result[0].reason == "judge process failed", result
        assert executor.run([CodeJob(code=HONEST, tests=F_TESTS)])[0].passed
    _assert_nothing_left(before, free)


def test_stale_directories_of_a_killed_executor_are_swept_at_start_up(tmp_path):
    from justgrpo_trl.grading.executor import sweep_stale_roots

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"justgrpo-sandbox-{dead.pid}-abc"
    (stale / "jobs" / "job1").mkdir(parents=True)
    (stale / "jobs" / "job1" / "big").write_bytes(b"x" * 1000)
    alive = tmp_path / f"justgrpo-sandbox-{os.getpid()}-def"
    alive.mkdir()
    other = tmp_path / "justgrpo-sandbox-notapid"
    other.mkdir()
    assert sweep_stale_roots(str(tmp_path)) == [str(stale)]
    assert not stale.exists() and alive.exists() and other.exists()


def test_an_executor_never_closed_removes_its_directories_at_exit():
    """`code_reward`'s process-wide executor is never closed; its judges' directories go when the trainer exits.
    Positive control: they exist while it runs."""
    _require_full_isolation()
    program = (
        "import glob, json, os, tempfile\n"
        "from justgrpo_trl.rewards import code_reward\n"
        "assert code_reward(prompts=None, completions=['def f(x):\\n    return x + 1\\n'],"
        " test_list=[['assert f(1) == 2']]) == [1.0]\n"
        "print(json.dumps(glob.glob(os.path.join(tempfile.gettempdir(), f'justgrpo-sandbox-{os.getpid()}-*'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    directories = json.loads(result.stdout)
    assert directories, "positive control: the judge's directory exists while the trainer runs"
    assert not any(os.path.exists(path) for path in directories)


# --------------------------------------------------------------------------------------------------------------
# Trust: which text becomes trusted code, and which names the tests' calls reach
# --------------------------------------------------------------------------------------------------------------

PATCH_THE_JUDGE = """```python
import gc
for cls in [o for o in gc.get_objects() if isinstance(o, type) and o.__name__ == "Proxy"]:
    cls.__call__ = lambda self, *args, **kwargs: args[0] + 1

def f(x):
    pass
```"""
F_CHECK = "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(10) == 11\n"


def test_code_from_an_earlier_assistant_turn_is_never_trusted():
    """In a multi-turn prompt, an earlier assistant turn's code that patches the judge: were it trusted setup (as
    when the messages are joined into one prompt text, the positive control), every later verdict of that judge
    would pass."""
    _require_full_isolation()
    turns = [
        {"role": "user", "content": "Write f."},
        {"role": "assistant", "content": PATCH_THE_JUDGE},
        {"role": "user", "content": "Now write f for real."},
    ]
    wrong = "```python\ndef f(x):\n    return 0\n```"
    columns = {"test": [F_CHECK], "entry_point": ["f"]}
    joined = "\n".join(turn["content"] for turn in turns)
    with LocalExecutor(1) as executor:  # its own judge: the control leaves it patched
        reward = make_code_reward(executor=executor)
        assert reward(prompts=[joined], completions=[wrong], **columns) == [1.0], "positive control"
        assert reward(prompts=[turns], completions=[wrong], **columns) == [1.0], "and the judge stays patched"
    with LocalExecutor(1) as executor:
        reward = make_code_reward(executor=executor)
        assert reward(prompts=[turns], completions=[wrong], **columns) == [0.0]
        assert reward(prompts=[turns], completions=["```python\n" + HONEST + "```"], **columns) == [1.0]


POW_TESTS = ["assert pow(2, 3) == 8", "assert pow(3, 2) == 9"]


def test_a_function_under_test_named_like_a_builtin_is_the_candidates():
    _require_full_isolation()
    assert _run_naively("", "\n".join(POW_TESTS), Path(tempfile.mkdtemp())), "positive control: builtin pow passes"
    completions = [
        "",
        "```python\ndef pow(a, b):\n    return 0\n```",
        "```python\ndef pow(a, b):\n    return a ** b\n```",
        "```python\nimport math\n```",  # defines only a module
        # The builtin-named function is not the one under test when the tests call another of the candidate's.
        "```python\ndef abs(x):\n    return 0\ndef f(x):\n    return None\n```",
    ]
    rows = [POW_TESTS] * 4 + [["assert abs(f(1) - 2) < 1e-9"]]
    assert code_reward(prompts=None, completions=completions, test_list=rows) == [0.0, 0.0, 1.0, 0.0, 0.0]


# --------------------------------------------------------------------------------------------------------------
# Further attacks of our own
# --------------------------------------------------------------------------------------------------------------

LIST_DESCRIPTORS = """
import os, stat, sys
runner = sys.modules["__main__"]
OWN = {0, 1, 2, getattr(runner, "REQUESTS", -1), getattr(runner, "REPLIES", -1)}
def _kind(fd):
    try:
        return stat.S_IFMT(os.fstat(fd).st_mode)
    except OSError:
        return None
EXTRA = {fd: _kind(fd) for fd in range(1024) if fd not in OWN and _kind(fd) is not None}
OK = bool(EXTRA)
"""


def test_the_candidate_inherits_no_descriptor_but_its_pipes():
    """No socket to the judge, no descriptor of the sandbox's set-up (bound paths, the bwrap binary) is open in the
    candidate. Positive control: a descriptor passed to a plain child process is found."""
    _require_full_isolation()
    left, right = __import__("socket").socketpair()
    try:
        assert _run_naively(LIST_DESCRIPTORS, "assert OK", Path(tempfile.mkdtemp()), (right.fileno(),))
    finally:
        left.close()
        right.close()
    for off in (None, *FEATURES):
        with LocalExecutor(1, isolation=Isolation(**({off: False} if off else {}))) as executor:
            (verdict,) = executor.run([CodeJob(code=LIST_DESCRIPTORS + HONEST, tests="assert OK\n" + F_TESTS)])
        assert not verdict.passed and "AssertionError" in verdict.reason, (off, verdict)


HOLD_A_CAPABILITY = _ok(
    """
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()
    libc.capget(header, data)
    bounding = [cap for cap in range(64) if libc.prctl(23, cap, 0, 0, 0) == 1]  # PR_CAPBSET_READ
    OK = any(data) or bool(bounding)  # any capability now, or one to regain by exec
    """
)


def test_the_candidate_holds_no_capability_even_in_its_own_namespaces():
    """A job makes its own user namespace (which starts with every capability in it) and, with `unprivileged` off,
    runs as root in the sandbox's: it must hold none, effective or in its bounding set. Positive control: a plain
    process of this (root) trainer holds some."""
    _require_full_isolation()
    if ROOT:
        assert _run_naively(HOLD_A_CAPABILITY, "assert OK", Path(tempfile.mkdtemp())), "positive control"
    for off in (None, *FEATURES):
        if off == "namespaces" and ROOT:
            continue  # without namespaces a root trainer's candidate is root itself: the layer that stops this is off
        with LocalExecutor(1, isolation=Isolation(**({off: False} if off else {}))) as executor:
            (verdict,) = executor.run([CodeJob(code=HOLD_A_CAPABILITY + HONEST, tests="assert OK\n" + F_TESTS)])
        assert not verdict.passed and "AssertionError" in verdict.reason, (off, verdict)
