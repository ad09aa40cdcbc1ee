"""The candidate process: runs model-generated code and answers the judge's calls with plain values.

Started by the judge as `python -I -S THIS` (inside bubblewrap when namespaces are on), with the request pipe on fd 3
and the reply pipe on fd 4. Standard library only, plus the `landlock` binding from a read-only directory the judge
names. It holds nothing that certifies a pass: it never sees the tests, expected values or any token; it only runs
the candidate's code and sends back what the candidate's functions return, encoded by the strict plain-value encoder.
If the candidate tampers with this process, the worst it can send is plain values of its own choosing.

Order of events: read the setup message (limits, Landlock paths, the seccomp program), set rlimits, restrict the file
system with Landlock, load the seccomp filter, then read the candidate's code and run it. Everything the candidate's
code could exploit is in place before the first byte of it is compiled.
"""

import ctypes
import io
import os
import resource
import sys
import traceback

REQUESTS, REPLIES = int(sys.argv[1]), int(sys.argv[2])
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2


def _limit(name, value):
    if value is not None and hasattr(resource, name):
        resource.setrlimit(getattr(resource, name), (value, value))


def _set_limits(limits):
    if limits.get("memory_bytes"):
        _limit("RLIMIT_AS", limits["memory_bytes"])
    _limit("RLIMIT_CPU", limits.get("cpu_seconds"))
    _limit("RLIMIT_FSIZE", limits.get("file_bytes"))
    _limit("RLIMIT_NOFILE", limits.get("open_files"))
    _limit("RLIMIT_CORE", 0)
    if limits.get("processes") is not None:
        _limit("RLIMIT_NPROC", limits["processes"])


def _apply_landlock(config):
    """Reads limited to `read_paths`, writes and everything else to `write_paths`; an error if it cannot."""
    sys.path.insert(0, config["landlock_lib"])
    import landlock

    access = landlock.FSAccess
    ruleset = landlock.Ruleset()
    for path in config["read_paths"]:
        if os.path.exists(path):
            rights = access.READ_FILE | access.EXECUTE
            ruleset.allow(path, rules=rights | access.READ_DIR if os.path.isdir(path) else rights)
    for path in config["write_paths"]:
        ruleset.allow(path, rules=access.all() if os.path.isdir(path) else access.all_file())
    ruleset.apply()  # sets no_new_privs first
    del sys.path[0]
    _landlock_scopes()


def _landlock_scopes():
    """A second Landlock layer the binding does not offer yet: no TCP bind/connect (ABI 4), and no signals or
    abstract Unix sockets reaching outside this sandbox (ABI 6). Skipped on kernels without them."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))  # landlock_create_ruleset: ABI version
    if abi < 4:
        return
    attr = (ctypes.c_uint64 * 3)(0, 0b11, 0b11 if abi >= 6 else 0)  # fs: none; net: bind+connect; scopes
    size = ctypes.sizeof(attr) if abi >= 6 else 16
    fd = libc.syscall(444, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    try:
        if libc.syscall(446, ctypes.c_int(fd), ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    finally:
        os.close(fd)


def _load_seccomp(program):
    """Load a compiled seccomp BPF program (built by the judge with libseccomp) for this process and its threads."""

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


def _encode_exception(error):
    name = type(error).__name__ if type(type(error).__name__) is str else "Exception"
    try:
        message = str(error)[:300]
    except BaseException:  # noqa: B036  (the candidate's __str__ may do anything)
        message = ""
    return {"raise": name, "message": message if type(message) is str else ""}


def _serve(wire, code, io_mode):
    """Answer the judge's requests until it closes the pipe."""
    namespace = {"__name__": "__main__"}
    if io_mode:
        program = compile(code, "<candidate>", "exec")
        wire.write_frame(REPLIES, {"ok": True, "names": []})
    else:
        exec(compile(code, "<candidate>", "exec"), namespace)
        names = [name for name in list(namespace) if type(name) is str and not name.startswith("__")]
        functions = [name for name in names if callable(namespace[name])]
        wire.write_frame(REPLIES, {"ok": True, "names": functions, "values": names})
    while True:
        try:
            request = wire.read_frame(REQUESTS)
        except wire.WireError:
            return
        try:
            if io_mode:
                stdin, stdout = sys.stdin, sys.stdout
                sys.stdin, sys.stdout = io.StringIO(request["stdin"]), io.StringIO()
                try:
                    try:
                        exec(program, {"__name__": "__main__"})
                    except SystemExit:
                        pass
                    output = sys.stdout.getvalue()
                finally:
                    sys.stdin, sys.stdout = stdin, stdout
                reply = {"value": output if type(output) is str else None}
            elif "get" in request:
                reply = {"value": wire.encode(namespace[request["get"]])}
            else:
                function = namespace[request["call"]]
                args = wire.decode(request["args"])
                kwargs = wire.decode(request["kwargs"])
                reply = {"value": wire.encode(function(*args, **kwargs))}
        except BaseException as error:  # noqa: B036  (report every failure, SystemExit included, to the judge)
            reply = _encode_exception(error)
        try:
            wire.write_frame(REPLIES, reply)
        except wire.WireError:
            wire.write_frame(REPLIES, {"raise": "OverflowError", "message": "result too large"})


def main():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _wire as wire

    del sys.path[0]
    setup = wire.read_frame(REQUESTS)
    _set_limits(setup["limits"])
    if setup.get("landlock"):
        _apply_landlock(setup["landlock"])
    if setup.get("seccomp"):
        _load_seccomp(bytes.fromhex(setup["seccomp"]))
    os.chdir(setup["workdir"])
    job = wire.read_frame(REQUESTS)
    try:
        _serve(wire, job["code"], job.get("io", False))
    except BaseException as error:  # noqa: B036
        traceback.print_exc()
        try:
            wire.write_frame(REPLIES, {"ok": False, **_encode_exception(error)})
        except BaseException:  # noqa: B036
            pass
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
