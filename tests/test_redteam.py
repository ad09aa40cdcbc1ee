"""Red team: completions that try to forge a pass or to harm the machine, graded by the code sandbox.

Every attack is a candidate for the problem "f(x) = x + 1" whose function answers correctly only if its attack
succeeded, so its reward is a direct measure of success. Each one is run twice:

- as a positive control, unsandboxed: candidate and tests in one plain `python` process (as a naive harness would),
  where the attack must succeed and leave its trace (a killed victim, a file, bytes on a listener, a survivor...);
- through the sandbox, where it must earn nothing and leave nothing behind.

Targets are all our own: processes spawned here, files under `tmp_path`, sockets on 127.0.0.1 opened here.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from justgrpo_trl.grading.executor import CodeJob, LocalExecutor
from justgrpo_trl.grading.isolation import FEATURES, Isolation, available_isolation

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox's isolation is Linux's")

ON_CI = os.environ.get("CI") == "true" and sys.platform.startswith("linux") and os.geteuid() == 0
TESTS = "assert abs(f(1) - 2) < 1e-9\nassert abs(f(10) - 11) < 1e-9  # EXPECTED-MARK\n"
OUTCOME = "\ndef f(x):\n    return x + 1 if OK else None\n"


def _require_full_isolation() -> None:
    """On CI a missing layer fails the suite; elsewhere the tests that need every layer are skipped."""
    missing = [name for name in FEATURES if not getattr(available_isolation(), name)]
    if missing and not ON_CI:
        pytest.skip(f"isolation layers unavailable here: {missing}")
    assert not missing, f"isolation layers unavailable on CI: {missing}"


def test_every_isolation_layer_is_available_on_ci():
    _require_full_isolation()
    assert available_isolation().full


@dataclass
class Target:
    """What one run of an attack may harm, and how to tell whether it did."""

    tmp: Path
    nonce: str = field(default_factory=lambda: secrets.token_hex(4))
    processes: list[subprocess.Popen] = field(default_factory=list)
    sockets: list[socket.socket] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)

    def victim(self, env: dict[str, str] | None = None) -> subprocess.Popen:
        process = subprocess.Popen(["sleep", "60"], env=env)
        self.processes.append(process)
        return process

    def listener(self, family: int, kind: int, address: Any) -> socket.socket:
        server = socket.socket(family, kind)
        server.bind(address)
        if kind == socket.SOCK_STREAM:
            server.listen(4)
        server.settimeout(0.3)
        self.sockets.append(server)
        return server

    def close(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()
        for server in self.sockets:
            server.close()


def _received(server: socket.socket) -> bool:
    """Whether anything reached `server` (a connection or a datagram)."""
    try:
        if server.type == socket.SOCK_STREAM:
            connection, _ = server.accept()
            connection.close()
        else:
            server.recv(64)
        return True
    except (TimeoutError, BlockingIOError):
        return False


def _survivors(name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@dataclass(frozen=True)
class Attack:
    """`prepare(target)` returns the values the code template needs; `harmed(target)` says whether it left its
    trace (`None` for attacks whose only effect is what the reward measures: a forged pass, a secret read)."""

    name: str
    code: str
    prepare: Callable[[Target], dict[str, Any]] = lambda target: {}
    harmed: Callable[[Target], bool] | None = None


def _code(body: str) -> str:
    """An attack body that sets OK on success (failures just leave it False), then the conditional answer."""
    return (
        "OK = False\ntry:\n"
        + textwrap.indent(textwrap.dedent(body), "    ")
        + "\nexcept Exception:\n    pass\n"
        + OUTCOME
    )


def _outside(target: Target) -> dict[str, Any]:
    outside = target.tmp / f"outside-{target.nonce}"
    outside.mkdir()
    (outside / "precious").write_text("precious")
    target.values["outside"] = outside
    return {"OUTSIDE": str(outside)}


def _victim(target: Target, env: dict[str, str] | None = None) -> dict[str, Any]:
    target.values["victim"] = target.victim(env)
    return {"PID": target.values["victim"].pid}


def _victim_died(target: Target) -> bool:
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        if target.values["victim"].poll() is not None:
            return True
        time.sleep(0.02)
    return False


def _listener(family: int, kind: int) -> Callable[[Target], dict[str, Any]]:
    def prepare(target: Target) -> dict[str, Any]:
        address: Any = f"\0jgrpo-{target.nonce}" if family == socket.AF_UNIX else ("127.0.0.1", 0)
        server = target.listener(family, kind, address)
        target.values["listener"] = server
        return {"ADDRESS": server.getsockname() if family != socket.AF_UNIX else address}

    return prepare


def _survivor(target: Target) -> dict[str, Any]:
    target.values["comm"] = f"jgsurv{target.nonce}"
    return {"NAME": target.values["comm"]}


def _survived(target: Target) -> bool:
    time.sleep(0.3)
    pids = _survivors(target.values["comm"])
    for pid in pids:  # clean up after the control
        os.kill(pid, signal.SIGKILL)
    return bool(pids)


def _precious_changed(target: Target) -> bool:
    precious = target.values["outside"] / "precious"
    return not precious.is_file() or precious.read_text() != "precious"


def _created(name: str) -> Callable[[Target], bool]:
    return lambda target: (target.values["outside"] / name).exists()


def _secret_victim(target: Target) -> dict[str, Any]:
    target.values["secret"] = secrets.token_hex(8)
    return _victim(target, env={"PATH": os.environ.get("PATH", ""), "JGRPO_SECRET": target.values["secret"]})


FRAME_WALK_FORGE = """
import gc, os, sys
def _pools():
    frame = sys._getframe()
    while frame is not None:
        yield frame.f_globals
        yield frame.f_locals
        frame = frame.f_back
    yield from (o for o in gc.get_objects() if type(o) is dict)
for _pool in _pools():
    for _value in list(_pool.values()):
        if isinstance(_value, str) and _value.startswith("tok-"):
            print(_value, flush=True)
os._exit(0)
def f(x):
    return None
"""

READ_EXPECTED = _code(
    """
    import gc, sys
    def _strings():
        frame = sys._getframe()
        while frame is not None:
            yield from list(frame.f_globals.values()) + list(frame.f_locals.values())
            frame = frame.f_back
        for o in gc.get_objects():
            if type(o) is dict:
                yield from list(o.values())
    def _found():
        mark = "EXPECTED" + "-MARK"  # built here, not spelled out: the candidate's own strings must not match
        return any(isinstance(s, str) and mark in s and s is not mark for s in _strings())
    OK = _found()
    """
)

ALWAYS_EQUAL = """
class Anything:
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    def __sub__(self, other):
        return self
    def __abs__(self):
        return 0
    __hash__ = object.__hash__
def f(x):
    return Anything()
"""

INT_SUBCLASS_EQUAL = """
class Int(int):
    def __eq__(self, other):
        return True
    def __sub__(self, other):
        return Int(0)
    __hash__ = int.__hash__
def f(x):
    return Int(0)
"""

SHADOW_BUILTIN = """
def abs(x):
    return 0
def f(x):
    return 2
"""

PLANT_FOR_NEXT_JOB = _code(
    """
    import os
    for name in ["job" + str(i) for i in range(300)] + ["planted"]:  # the names later jobs' directories might take
        os.makedirs(os.path.join(os.path.dirname(os.getcwd()), name), exist_ok=True)
    OK = True
    """
)

ATTACKS = [
    Attack("shadow_builtin_used_by_tests", SHADOW_BUILTIN),
    Attack("plant_files_beside_its_directory", PLANT_FOR_NEXT_JOB),
    Attack("frame_walk_forge", FRAME_WALK_FORGE),
    Attack("read_expected_outputs", READ_EXPECTED),
    Attack("always_equal_object", ALWAYS_EQUAL),
    Attack("int_subclass_equal", INT_SUBCLASS_EQUAL),
    Attack(
        "pidfd_kill",
        _code("import os, signal\nsignal.pidfd_send_signal(os.pidfd_open({PID}), signal.SIGKILL)\nOK = True"),
        _victim,
        _victim_died,
    ),
    Attack("kill", _code("import os\nos.kill({PID}, 9)\nOK = True"), _victim, _victim_died),
    Attack(
        "fork_setsid_survivor",
        _code(
            """
            import ctypes, os, time
            libc = ctypes.CDLL(None, use_errno=True)
            pid = getattr(libc, "_Fork", libc.fork)()
            if pid == 0:
                libc.setsid()
                for fd in (0, 1, 2):
                    os.close(fd)
                libc.prctl(15, {NAME!r}.encode(), 0, 0, 0)
                time.sleep(30)
                os._exit(0)
            OK = pid > 0
            """
        ),
        _survivor,
        _survived,
    ),
    Attack(
        "ctypes_wordexp_shell",
        _code(
            """
            import ctypes, os
            class WordExp(ctypes.Structure):
                _fields_ = [("count", ctypes.c_size_t), ("words", ctypes.c_void_p), ("offs", ctypes.c_size_t)]
            words = WordExp()
            ctypes.CDLL(None).wordexp(b"$(touch {OUTSIDE}/shell)", ctypes.byref(words), 0)
            OK = os.path.exists("{OUTSIDE}/shell")
            """
        ),
        _outside,
        lambda t: (t.values["outside"] / "shell").exists(),
    ),
    Attack(
        "dir_fd_overwrite",
        _code(
            """
            import os
            folder = os.open({OUTSIDE!r}, os.O_RDONLY | os.O_DIRECTORY)
            fd = os.open("precious", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=folder)
            os.write(fd, b"pwned")
            OK = True
            """
        ),
        _outside,
        lambda t: (t.values["outside"] / "precious").read_text() != "precious",
    ),
    Attack(
        "sqlite_attach",
        _code(
            """
            import sqlite3
            connection = sqlite3.connect(":memory:")
            connection.execute("ATTACH DATABASE '{OUTSIDE}/stolen.db' AS x")
            connection.execute("CREATE TABLE x.t (a)")
            connection.commit()
            OK = True
            """
        ),
        _outside,
        lambda t: (t.values["outside"] / "stolen.db").exists(),
    ),
    Attack(
        "mkfifo",
        _code("import os\nos.mkfifo({OUTSIDE!r} + '/fifo')\nOK = True"),
        _outside,
        lambda t: (t.values["outside"] / "fifo").exists(),
    ),
    Attack(
        "ctypes_mkdir",
        _code("import ctypes\nOK = ctypes.CDLL(None).mkdir(({OUTSIDE!r} + '/made').encode(), 0o755) == 0"),
        _outside,
        lambda t: (t.values["outside"] / "made").exists(),
    ),
    Attack(
        "read_outside_file",
        _code("OK = open({OUTSIDE!r} + '/precious').read() == 'precious'"),
        _outside,
    ),
    Attack(
        "udp_sendmsg",
        _code(
            """
            import socket
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            OK = s.sendmsg([b"leak"], [], 0, tuple({ADDRESS!r})) == 4
            """
        ),
        _listener(socket.AF_INET, socket.SOCK_DGRAM),
        lambda t: _received(t.values["listener"]),
    ),
    Attack(
        "tcp_ctypes_connect",
        _code(
            """
            import ctypes, socket, struct
            libc = ctypes.CDLL(None)
            host, port = {ADDRESS!r}
            fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
            address = struct.pack("=HH4s8x", socket.AF_INET, socket.htons(port), socket.inet_aton(host))
            OK = fd >= 0 and libc.connect(fd, address, len(address)) == 0 and libc.send(fd, b"leak", 4, 0) == 4
            """
        ),
        _listener(socket.AF_INET, socket.SOCK_STREAM),
        lambda t: _received(t.values["listener"]),
    ),
    Attack(
        "abstract_unix_socket",
        _code(
            """
            import socket
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect({ADDRESS!r})
            OK = s.send(b"leak") == 4
            """
        ),
        _listener(socket.AF_UNIX, socket.SOCK_STREAM),
        lambda t: _received(t.values["listener"]),
    ),
    Attack(
        "proc_environ_secret",
        _code("OK = b'JGRPO_SECRET=' in open('/proc/{PID}/environ', 'rb').read()"),
        _secret_victim,
    ),
    # Deleting, moving or changing a file outside, by every path the old in-process guard had to catch one by one.
    Attack(
        "remove_outside",
        _code("import os\nos.remove({OUTSIDE!r} + '/precious')\nOK = True"),
        _outside,
        _precious_changed,
    ),
    Attack(
        "rmtree_outside",
        _code("import shutil\nshutil.rmtree({OUTSIDE!r})\nOK = True"),
        _outside,
        _precious_changed,
    ),
    Attack(
        "rename_outside",
        _code("import os\nos.rename({OUTSIDE!r} + '/precious', 'stolen')\nOK = True"),
        _outside,
        _precious_changed,
    ),
    Attack(
        "chdir_then_remove",
        _code("import os\nos.chdir({OUTSIDE!r})\nos.remove('precious')\nOK = True"),
        _outside,
        _precious_changed,
    ),
    Attack(
        "overwrite_outside",
        _code("open({OUTSIDE!r} + '/precious', 'w').write('overwritten')\nOK = True"),
        _outside,
        _precious_changed,
    ),
    Attack(
        "symlink_then_write",
        _code(
            """
            import os
            os.symlink({OUTSIDE!r} + "/precious", "link")
            open("link", "w").write("overwritten")
            OK = True
            """
        ),
        _outside,
        _precious_changed,
    ),
    Attack(
        "ctypes_unlink",
        _code("import ctypes\nOK = ctypes.CDLL(None).unlink(({OUTSIDE!r} + '/precious').encode()) == 0"),
        _outside,
        _precious_changed,
    ),
    Attack("ctypes_kill", _code("import ctypes\nOK = ctypes.CDLL(None).kill({PID}, 9) == 0"), _victim, _victim_died),
    Attack(
        "kill_parent",  # the naive control runs under a throwaway shell (see `_run_naively`), which this kills
        _code(
            """
            import os, signal, time
            parent = os.getppid()
            os.kill(parent, signal.SIGKILL)
            for _ in range(50):  # orphaned: adopted by another process once the parent is dead
                if os.getppid() != parent:
                    break
                time.sleep(0.01)
            OK = os.getppid() != parent
            """
        ),
    ),
    Attack(
        "ptrace_seize_parent",  # the naive control seizes its throwaway shell (a seize does not stop it)
        _code("import ctypes, os\nOK = ctypes.CDLL(None).ptrace(0x4206, os.getppid(), None, None) == 0"),
    ),
    Attack(
        "fork_bomb",
        _code(
            """
            import ctypes, os, time
            for _ in range(100):  # past the 32 tasks a job may have
                if os.fork() == 0:
                    for fd in (0, 1, 2):
                        os.close(fd)
                    ctypes.CDLL(None).prctl(15, {NAME!r}.encode(), 0, 0, 0)
                    time.sleep(30)
                    os._exit(0)
            OK = True
            """
        ),
        _survivor,
        _survived,
    ),
    Attack(
        "subprocess_run",
        _code(
            """
            import os, subprocess, sys
            spawned = {OUTSIDE!r} + "/spawned"
            subprocess.run([sys.executable, "-c", "open(%r, 'w').close()" % spawned], timeout=5)
            OK = os.path.exists(spawned)
            """
        ),
        _outside,
        _created("spawned"),
    ),
    Attack(
        "os_system",
        _code("import os\nos.system('touch {OUTSIDE}/system')\nOK = os.path.exists({OUTSIDE!r} + '/system')"),
        _outside,
        _created("system"),
    ),
    Attack(
        "raise_rlimits",
        _code(
            """
            import resource
            unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
            resource.setrlimit(resource.RLIMIT_AS, unlimited)
            resource.setrlimit(resource.RLIMIT_CPU, unlimited)
            OK = resource.getrlimit(resource.RLIMIT_AS) == resource.getrlimit(resource.RLIMIT_CPU) == unlimited
            """
        ),
    ),
]

NAIVE_HARNESS = """
import sys
TOKEN = sys.argv[1]
CODE, TESTS = sys.argv[2], sys.argv[3]
namespace = {}
exec(CODE, namespace)
exec(TESTS, namespace)
print(TOKEN)
"""


def _run_naively(code: str, tmp: Path) -> bool:
    """The positive control: candidate and tests in one unsandboxed process; passed if the token is printed."""
    token = "tok-" + secrets.token_hex(8)
    cwd = tmp / f"naive-{token}"
    cwd.mkdir()
    # Under a throwaway shell (not `exec`ed: a command follows), so that an attack on its parent kills that shell,
    # never pytest.
    result = subprocess.run(
        ["sh", "-c", '"$0" -I -c "$1" "$2" "$3" "$4"; exit 0', sys.executable, NAIVE_HARNESS, token, code, TESTS],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return token in result.stdout


def _attack_jobs(attacks: list[Attack], tmp: Path) -> tuple[list[Target], list[CodeJob]]:
    targets, jobs = [], []
    for attack in attacks:
        target = Target(tmp)
        code = attack.code.format(**attack.prepare(target)) if "{" in attack.code else attack.code
        targets.append(target)
        jobs.append(CodeJob(code=code, tests=TESTS, timeout=10.0))
    return targets, jobs


@pytest.fixture(scope="module")
def full_executor():
    with LocalExecutor(2) as executor:
        yield executor


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.name)
def test_attack_works_unsandboxed_and_fails_in_the_sandbox(attack, tmp_path, full_executor):
    _require_full_isolation()
    control = Target(tmp_path)
    try:
        code = attack.code.format(**attack.prepare(control)) if "{" in attack.code else attack.code
        assert _run_naively(code, tmp_path), "positive control: the attack must work without the sandbox"
        if attack.harmed is not None:  # a loaded machine may take a moment (a forked survivor naming itself...)
            deadline, harmed = time.monotonic() + 5.0, attack.harmed(control)
            while not harmed and time.monotonic() < deadline:
                time.sleep(0.1)
                harmed = attack.harmed(control)
            assert harmed, "positive control: the attack must leave its trace without the sandbox"
    finally:
        control.close()
    (targets, jobs) = _attack_jobs([attack], tmp_path)
    try:
        (verdict,) = full_executor.run(jobs)
        assert not verdict.passed, f"{attack.name} earned the reward: {verdict}"
        assert [v.passed for v in full_executor.run([GOOD] * 2)] == [True] * 2
        assert attack.harmed is None or not attack.harmed(targets[0]), f"{attack.name} left a trace"
        if "victim" in targets[0].values:
            assert targets[0].values["victim"].poll() is None
    finally:
        targets[0].close()
    os.kill(os.getpid(), 0)  # the trainer is alive


# Attacks a single missing layer lets "succeed" by their own measure, without harm: without seccomp a fork
# succeeds (up to the job's 32 tasks: a fork bomb does not), but the process dies with the sandbox's PID namespace;
# a UDP datagram is sent, but to the sandbox's own loopback interface (its network namespace), so no byte reaches
# the listener.
# Without Landlock a job still cannot write beside its own directory: that is its own tmpfs, on a read-only root.
_DEGRADED_REWARD_ALLOWED = {
    ("seccomp", "fork_setsid_survivor"),
    ("seccomp", "udp_sendmsg"),
}


def _landlock_abi() -> int:
    try:
        import landlock

        return landlock.landlock_abi_version()
    except Exception:  # noqa: BLE001  (no Landlock: version 0)
        return 0


# Without namespaces the candidate's parent is its fork server, which runs as the same user; only Landlock's signal
# scoping (ABI 6, Linux 6.12) refuses that kill. On older kernels the server dies and the judge starts another.
if _landlock_abi() < 6:
    _DEGRADED_REWARD_ALLOWED.add(("namespaces", "kill_parent"))
GOOD = CodeJob(code="def f(x):\n    return x + 1\n", tests=TESTS)


@pytest.mark.parametrize("layer_off", FEATURES)
def test_each_layer_off_still_blocks_every_attack(layer_off, tmp_path):
    """Defence in depth: with any one layer switched off explicitly, no attack harms anything, and only the
    listed ones earn a reward."""
    _require_full_isolation()
    isolation = Isolation(**{layer_off: False})
    targets, jobs = _attack_jobs(ATTACKS, tmp_path)
    try:
        with LocalExecutor(2, isolation=isolation) as executor:
            verdicts = executor.run(jobs)
            # Checked while the sandboxes are still up: what a job leaves must be gone when its verdict is.
            for attack, target, verdict in zip(ATTACKS, targets, verdicts):
                if (layer_off, attack.name) not in _DEGRADED_REWARD_ALLOWED:
                    assert not verdict.passed, f"{attack.name} earned the reward without {layer_off}: {verdict}"
                harmed = attack.harmed is not None and attack.harmed(target)
                assert not harmed, f"{attack.name} left a trace without {layer_off}"
            # And the attacks changed nothing for the completions graded after them.
            assert [v.passed for v in executor.run([GOOD] * 4)] == [True] * 4
    finally:
        for target in targets:
            target.close()


def test_require_full_isolation_refuses_a_switched_off_layer():
    from justgrpo_trl.grading.isolation import IsolationUnavailable

    with pytest.raises(IsolationUnavailable):
        LocalExecutor(1, isolation=Isolation(seccomp=False), require_full_isolation=True)


def test_a_job_cannot_disturb_the_next_ones_even_without_landlock():
    """Without Landlock a job can write beside its own directory, e.g. the directories later jobs would use; the
    next jobs on the same sandbox must still be graded correctly."""
    _require_full_isolation()
    with LocalExecutor(1, isolation=Isolation(landlock=False)) as executor:
        executor.run([CodeJob(code=PLANT_FOR_NEXT_JOB, tests=TESTS)])
        assert [v.passed for v in executor.run([GOOD] * 3)] == [True] * 3
