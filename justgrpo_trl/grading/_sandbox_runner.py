"""The candidates' side: a fork server whose children run model-generated code and answer with plain values.

Started by the judge as `python -I -S THIS CONTROL_FD` (inside bubblewrap when namespaces are on), it forks, for
every job, a child that confines itself and runs the candidate, so that no job pays for an interpreter's start-up.
Standard library only. The child holds nothing that certifies a pass: it never sees the tests, expected values or
any token; it only runs the candidate's code and sends back what the candidate's functions return, encoded by the
strict plain-value encoder. If the candidate tampers with its process, the worst it can send is plain values of its
own choosing.

Order of events in the child: from its one job message (limits, Landlock paths, the seccomp program, the code),
enter a kernel world of its own (with namespaces: new user, IPC and mount namespaces, a size-capped tmpfs as its
directory, no capabilities left), set rlimits, restrict the file system with Landlock, load the seccomp filter, then
compile and run the candidate's code. Everything the candidate's code could exploit is in place before the first byte
of it is compiled, and nothing it creates in the kernel (an IPC object, a file) is visible to the next job.
"""

import io
import os
import resource
import sys

REQUESTS = REPLIES = -1  # the job's pipes, set in each forked child
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2


def _limit(name, value):
    if value is not None and hasattr(resource, name):
        resource.setrlimit(getattr(resource, name), (value, value))


_CLONE_NEWUSER, _CLONE_NEWIPC, _CLONE_NEWNS = 0x10000000, 0x08000000, 0x00020000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_CAPABILITY_VERSION_3 = 0x20080522


def _write_file(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _enter_job_namespaces(workdir, workdir_bytes, workdir_inodes, own_user):
    """A fresh kernel world for one job, inside the sandbox's namespaces: its own user namespace (where it is
    counted alone by `RLIMIT_NPROC`), IPC namespace (no SysV or POSIX IPC object of an earlier job, none left for a
    later one) and mount namespace, in which `workdir` is a new tmpfs of at most `workdir_bytes` (no setuid, no
    devices) and `/proc` an empty read-only one. All of it belongs to the job's processes only: the kernel frees it
    when the last of them dies, whoever kills them. Then every capability the new user namespace gave is dropped.

    Without `own_user` (the sandbox's user is root in its namespace, which may not map itself into a child
    namespace without a capability it does not have), the fork server holds `CAP_SYS_ADMIN` for this step instead
    and the job enters new IPC and mount namespaces only."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def check(result, what):
        if result != 0:
            raise OSError(ctypes.get_errno(), what)

    uid, gid = os.getuid(), os.getgid()
    # The fork server is not dumpable (its jobs cannot attach to it), which its children inherit; a job must be,
    # or its /proc files belong to root and it cannot write its own identity map.
    check(libc.prctl(4, 1, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")
    if own_user:
        check(libc.unshare(_CLONE_NEWUSER | _CLONE_NEWIPC | _CLONE_NEWNS), "unshare(user, ipc, mount)")
        _write_file("/proc/self/setgroups", "deny")
        _write_file("/proc/self/uid_map", f"{uid} {uid} 1")  # the same identity, so that it can own its files
        _write_file("/proc/self/gid_map", f"{gid} {gid} 1")
    else:
        check(libc.unshare(_CLONE_NEWIPC | _CLONE_NEWNS), "unshare(ipc, mount)")
    options = f"size={workdir_bytes},nr_inodes={workdir_inodes},mode=0700".encode()
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    check(libc.mount(b"none", workdir.encode(), b"tmpfs", flags, options), "mount(tmpfs, workdir)")
    check(libc.mount(b"none", b"/proc", b"tmpfs", flags | _MS_RDONLY, b"size=4k,nr_inodes=2"), "mount(/proc)")

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    for capability in range(64):  # and none to regain through exec (EINVAL past the kernel's last one)
        libc.prctl(24, capability, 0, 0, 0)  # PR_CAPBSET_DROP
    nothing = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable: twice (64 capability bits)
    check(libc.capset(ctypes.byref(Header(_CAPABILITY_VERSION_3, 0)), nothing), "capset")


def _set_limits(limits):
    if limits.get("memory_bytes"):
        _limit("RLIMIT_AS", limits["memory_bytes"])
    _limit("RLIMIT_CPU", limits.get("cpu_seconds"))
    _limit("RLIMIT_FSIZE", limits.get("file_bytes"))
    _limit("RLIMIT_NOFILE", limits.get("open_files"))
    _limit("RLIMIT_CORE", 0)
    if limits.get("processes") is not None:
        _limit("RLIMIT_NPROC", limits["processes"])


_LANDLOCK_CREATE_RULESET, _LANDLOCK_ADD_RULE, _LANDLOCK_RESTRICT_SELF = 444, 445, 446  # the same on every arch
# Landlock file-system rights (ABI 1..5): execute, write, read file, read dir, remove dir/file, make char/dir/reg/
# sock/fifo/block/sym, refer (2), truncate (3), ioctl on devices (5).
_FS_READ_FILE, _FS_READ_DIR, _FS_EXECUTE = 1 << 2, 1 << 3, 1 << 0
_FS_FILE_RIGHTS = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 14) | (1 << 15)


def _fs_rights(abi):
    """All file-system rights the kernel's ABI knows."""
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= 1 << 13
    if abi >= 3:
        rights |= 1 << 14
    if abi >= 5:
        rights |= 1 << 15
    return rights


def _apply_landlock(config):
    """Reads limited to `read_paths`, writes and everything else to `write_paths`; no TCP bind or connect (ABI 4);
    no signal or abstract Unix socket reaching outside the sandbox (ABI 6). Raw system calls (three of them):
    importing a binding would cost more start-up time than the rest of the sandbox."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long

    def call(*args):
        result = libc.syscall(*args)
        if result < 0:
            raise OSError(ctypes.get_errno(), f"landlock syscall {args[0]}")
        return result

    abi = call(_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))  # the ABI version
    handled = _fs_rights(abi)
    attr = (ctypes.c_uint64 * 3)(handled, 0b11 if abi >= 4 else 0, 0b11 if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = call(_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    def allow(path, rights):
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return
        try:
            if not os.path.isdir(path):
                rights &= _FS_FILE_RIGHTS
            rule = PathBeneath(rights & handled, fd)
            call(_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(1), ctypes.byref(rule), ctypes.c_uint32(0))
        finally:
            os.close(fd)

    try:
        for path in config["read_paths"]:
            allow(path, _FS_READ_FILE | _FS_READ_DIR | _FS_EXECUTE)
        for path in config["write_paths"]:
            allow(path, handled)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        call(_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))
    finally:
        os.close(ruleset)


def _load_seccomp(program):
    """Load a compiled seccomp BPF program (built by the judge with libseccomp) for this process and its threads."""
    import ctypes

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    count = len(program) // ctypes.sizeof(SockFilter)
    filters = (SockFilter * count).from_buffer_copy(program)
    fprog = SockFprog(count, filters)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def _exception_json(wire, error, prefix=""):
    """`{"raise": name, "message": text}` for an exception of the candidate's (whose `__str__` may do anything)."""
    name = type(error).__name__
    try:
        message = str(error)[:300]
    except BaseException:  # noqa: B036
        message = ""
    name = name if type(name) is str else "Exception"
    message = message if type(message) is str else ""
    return "{" + prefix + '"raise":' + wire.to_json(name) + ',"message":' + wire.to_json(message) + "}"


def _run_io(program, stdin_text):
    """Run the whole program once on `stdin_text`; its standard output."""
    stdin, stdout = sys.stdin, sys.stdout
    sys.stdin, sys.stdout = io.StringIO(stdin_text), io.StringIO()
    try:
        try:
            exec(program, {"__name__": "__main__"})
        except SystemExit:
            pass
        return sys.stdout.getvalue()
    finally:
        sys.stdin, sys.stdout = stdin, stdout


def _serve(wire, code, io_mode):
    """Run the candidate's code, then answer the judge's requests until it closes the pipe."""
    namespace = {"__name__": "__main__"}
    program = compile(code, "<candidate>", "exec")
    if io_mode:
        wire.write_json(REPLIES, '{"ok":true,"names":[],"values":[]}')
    else:
        exec(program, namespace)
        names = [name for name in list(namespace) if type(name) is str and not name.startswith("__")]
        functions = [name for name in names if callable(namespace[name])]
        text = '{"ok":true,"names":' + wire.to_json(functions) + ',"values":' + wire.to_json(names) + "}"
        wire.write_json(REPLIES, text)
    while True:
        try:
            request = wire.read_trusted(REQUESTS)
        except (wire.WireError, EOFError, ValueError):
            return
        try:
            if "stdin" in request:
                reply = '{"value":' + wire.to_json(_run_io(program, request["stdin"])) + "}"
            elif "get" in request:
                reply = '{"value":' + wire.to_json(namespace[request["get"]]) + "}"
            else:
                result = namespace[request["call"]](*request["args"], **request["kwargs"])
                reply = '{"value":' + wire.to_json(result) + "}"
        except BaseException as error:  # noqa: B036  (report every failure, SystemExit included, to the judge)
            reply = _exception_json(wire, error)
        try:
            wire.write_json(REPLIES, reply)
        except wire.WireError:
            wire.write_json(REPLIES, _exception_json(wire, OverflowError("result too large")))


def _close_all_but(*kept):
    """Close every descriptor of this process except `kept`."""
    low = 0
    for high in (*sorted(set(kept)), max(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 1024)):
        if low < high:  # never an empty range: `closerange(n, n)` closes everything from n on
            os.closerange(low, high)
        low = high + 1


def _job(wire, job, requests, replies, stderr, own_session):
    """In the forked child: confine this process, then run the candidate and serve the judge. Never returns."""
    global REQUESTS, REPLIES
    REQUESTS, REPLIES = requests, replies
    try:
        os.dup2(stderr, 2)
        _close_all_but(0, 1, 2, requests, replies)  # the job's stderr copy and anything the server inherited
        if own_session:
            os.setsid()  # without a PID namespace, its process group is what the server kills afterwards
        if job.get("job_namespaces"):
            _enter_job_namespaces(job["workdir"], job["workdir_bytes"], job["workdir_inodes"], job["own_user"])
        _set_limits(job["limits"])
        if job.get("landlock"):
            _apply_landlock(job["landlock"])
        if job.get("seccomp"):
            _load_seccomp(job["seccomp"])
        os.chdir(job["workdir"])
        _serve(wire, job["code"], job["io"])
    except BaseException as error:  # noqa: B036
        try:
            import traceback

            traceback.print_exc()
            wire.write_json(REPLIES, _exception_json(wire, error, prefix='"ok":false,'))
        except BaseException:  # noqa: B036
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(0)


def _receive(control, wire):
    """One job from the judge: a 4-byte length sent with the job's descriptors, then the marshalled job."""
    import marshal
    import socket

    header, fds, _, _ = socket.recv_fds(control, 4, 3)
    if not header:
        raise EOFError
    while len(header) < 4:
        more = control.recv(4 - len(header))
        if not more:
            raise EOFError
        header += more
    size, body = int.from_bytes(header, "big"), b""
    while len(body) < size:
        chunk = control.recv(min(size - len(body), 1 << 20))
        if not chunk:
            raise EOFError
        body += chunk
    return marshal.loads(body), fds


def main():
    """The fork server: one warm interpreter per judge that forks a fresh, confined child for every job.

    With namespaces it is PID 1 of the sandbox, so after each job `kill(-1, SIGKILL)` ends every process the job
    left (a PID namespace's init cannot be signalled from inside it, and it is not dumpable, so it cannot be
    traced). It never runs candidate code, and it never sees tests: only each job's code and confinement."""
    import ctypes
    import signal
    import socket

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _wire as wire

    del sys.path[0]
    prctl = getattr(ctypes.CDLL(None), "prctl", None)  # Linux only
    if prctl is not None:
        prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: its children cannot attach to it
    _close_all_but(0, 1, 2, int(sys.argv[1]))  # what the launcher passed on (e.g. the descriptor bwrap ran from)
    control = socket.socket(fileno=int(sys.argv[1]))
    is_init = os.getpid() == 1
    while True:
        try:
            job, fds = _receive(control, wire)
        except (EOFError, OSError, ValueError):
            os._exit(0)
        if len(fds) != 3:
            os._exit(1)
        pid = os.fork()
        if pid == 0:
            control.close()
            _job(wire, job, *fds, own_session=not is_init)
        for fd in fds:
            os.close(fd)
        try:
            ended = control.recv(1)  # the judge is done with this job (or gone)
        except OSError:
            ended = b""
        try:
            if is_init:
                os.kill(-1, signal.SIGKILL)  # everything in the namespace but this process
            else:
                os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
        if not ended:
            os._exit(0)
        control.sendall(b"c")


if __name__ == "__main__":
    main()
