"""Sandbox harness: a standalone script that `justgrpo_trl.grading.sandbox` runs as `python -I THIS CONFIG_PATH`.

It runs in a fresh session and temporary working directory. It reads (and deletes) its JSON config, sets the
resource limits, then forks: the child installs the guard and runs the untrusted program; this process only waits
for it. That way the untrusted code's parent is this throwaway supervisor, never the trainer, and its verdict
cannot be faked by an early `sys.exit(0)` or `os._exit(0)`: the child writes a secret nonce to a private pipe only
after the whole program (solution and tests) has run, and the supervisor exits 0 only if the child exited 0 *and*
the nonce arrived. Exit status otherwise: the child's exit code, 128+N if it died of signal N, 1 if it exited 0
without finishing.
"""

import json
import os
import resource
import sys


def _limit(name, value):
    if value is not None and hasattr(resource, name):
        try:
            resource.setrlimit(getattr(resource, name), (value, value))
        except (ValueError, OSError):
            pass


def _set_limits(config):
    """Memory, CPU time, file size and no core dumps, inherited by the child."""
    if config["memory_bytes"]:
        _limit("RLIMIT_AS", config["memory_bytes"])
    _limit("RLIMIT_CPU", config["cpu_seconds"])
    _limit("RLIMIT_FSIZE", config["max_file_bytes"])
    _limit("RLIMIT_CORE", 0)


def _limit_processes(extra):
    """RLIMIT_NPROC counts every thread of the real user, so the cap is "threads that exist now + extra"; the
    system-wide thread count in /proc/loadavg bounds the user's own from above. (It does not bind root.)"""
    try:
        with open("/proc/loadavg") as f:
            current = int(f.read().split()[3].split("/")[1])
    except (OSError, ValueError, IndexError):
        current = 0
    _limit("RLIMIT_NPROC", current + extra)


def _disabled(name):
    def refuse(*args, **kwargs):
        raise PermissionError(f"{name} is disabled in the sandbox")

    return refuse


# Process control, replaced in `os`/`posix`, `subprocess`, ... in the manner of HumanEval's reliability_guard.
_DISABLED = {
    "os": (
        "kill", "killpg", "fork", "forkpty", "system", "popen", "chroot", "setuid", "seteuid", "setgid", "setsid",
        "setpgid", "setpgrp", "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe",
        "spawnv", "spawnve", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnvp", "spawnvpe", "posix_spawn",
        "posix_spawnp",
    ),
    "subprocess": ("Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"),
    "_posixsubprocess": ("fork_exec",),
    "signal": ("pthread_kill", "sigqueue"),
}  # fmt: skip

# Audit events refused outright, whatever alias (`posix.kill`, a re-imported module...) the code used to get there.
_BLOCKED_EVENTS = {
    "os.kill", "os.killpg", "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
    "os.chroot", "subprocess.Popen", "signal.pthread_kill", "resource.setrlimit", "resource.prlimit",
    "socket.connect", "socket.bind", "socket.sendto",
}  # fmt: skip
# Audit events that change the file system: allowed only on paths inside the working directory, so that deleting,
# renaming, truncating or re-permissioning anything else fails while temporary files of the program still work.
# Values: (position of a path argument, position of its dir_fd argument or None) pairs.
_PATH_EVENTS = {
    "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.rename": ((0, 2), (1, 3)), "os.link": ((0, 2), (1, 3)),
    "os.symlink": ((1, 2),), "shutil.rmtree": ((0, 1),), "os.truncate": ((0, None),), "os.chmod": ((0, 2),),
    "os.chown": ((0, 3),), "os.utime": ((0, 3),), "os.mkdir": ((0, 2),), "sqlite3.connect": ((0, None),),
}  # fmt: skip
# libc symbols that ctypes may not look up (a way around everything above).
_BLOCKED_SYMBOLS = {
    "kill", "killpg", "tgkill", "tkill", "fork", "vfork", "clone", "clone3", "system", "popen", "execv", "execve",
    "execvp", "execvpe", "execl", "execlp", "execle", "posix_spawn", "posix_spawnp", "syscall", "unlink",
    "unlinkat", "remove", "rmdir", "rename", "renameat", "renameat2", "truncate", "open", "open64", "openat",
    "openat64", "creat", "fopen", "fopen64", "chmod", "fchmodat", "chown", "setsid", "setpgid", "setrlimit",
    "prlimit", "prlimit64", "ptrace", "reboot", "chroot", "mount", "umount",
}  # fmt: skip
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def _make_audit_hook(workdir):
    """An audit hook (it cannot be removed once added) enforcing the rules above for the rest of the process."""
    root = os.path.realpath(workdir)
    realpath, commonpath, fspath = os.path.realpath, os.path.commonpath, os.fspath

    def inside(path, dir_fd=None):
        try:
            path = fspath(path)
            if dir_fd is not None and dir_fd != -1:  # relative to a directory descriptor (e.g. shutil.rmtree)
                path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
            return commonpath([root, realpath(path)]) == root
        except (TypeError, ValueError, OSError):
            return False

    def hook(event, args):
        if event in _BLOCKED_EVENTS:
            raise PermissionError(f"{event} is not allowed in the sandbox")
        if event == "open":
            path, _mode, flags = args
            if isinstance(path, int) or not isinstance(flags, int) or not flags & _WRITE_FLAGS:
                return
            if path != os.devnull and not inside(path):
                raise PermissionError(f"writing outside the sandbox directory is not allowed: {path!r}")
        elif event in _PATH_EVENTS:
            for position, dir_fd_position in _PATH_EVENTS[event]:
                path = args[position]
                has_dir_fd = dir_fd_position is not None and dir_fd_position < len(args)
                dir_fd = args[dir_fd_position] if has_dir_fd else None
                if isinstance(path, int) and event == "os.truncate":
                    continue  # ftruncate of a descriptor that `open` already checked
                if isinstance(path, int) or not inside(path, dir_fd):
                    raise PermissionError(f"{event} outside the sandbox directory is not allowed: {path!r}")
        elif event == "ctypes.dlsym":
            name = args[1]
            if isinstance(name, (bytes, bytearray)):
                name = name.decode(errors="replace")
            if isinstance(name, str) and name.lstrip("_") in _BLOCKED_SYMBOLS:
                raise PermissionError(f"ctypes access to {name} is not allowed in the sandbox")

    return hook


def _install_guard(workdir):
    """Disable process control and confine file-system changes to `workdir` for the untrusted code (defence in depth
    on top of the OS limits, which as root do not stop forks or writes)."""
    import importlib
    import posix

    modules = {"posix": (posix, _DISABLED["os"])}
    for module_name, names in _DISABLED.items():  # import all first: their own imports may need what goes below
        try:
            modules[module_name] = (importlib.import_module(module_name), names)
        except ImportError:
            pass
    sys.addaudithook(_make_audit_hook(workdir))
    for module_name, (module, names) in modules.items():
        for name in names:
            if hasattr(module, name):
                setattr(module, name, _disabled(f"{module_name}.{name}"))


def _run_child(config, status_fd):
    """Run the untrusted program; exit 0 and send the nonce only if it ran to the end."""
    import builtins
    import traceback

    nonce = config["nonce"].encode()
    try:
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        _limit_processes(config["max_processes"])
        program = compile(config["code"], "<sandbox>", "exec")
        if config["guard"]:
            _install_guard(os.getcwd())
        namespace = {"__name__": "__sandbox__", "__builtins__": builtins}
        exec(program, namespace)
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: B036  (SystemExit included: exiting early is a failure, not a pass)
        try:
            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:  # noqa: B036  (stderr may be full)
            pass
        os._exit(1)
    os.write(status_fd, nonce)
    os._exit(0)


def main():
    config_path = sys.argv[1]
    with open(config_path) as f:
        config = json.load(f)
    os.remove(config_path)
    _set_limits(config)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _run_child(config, write_fd)
    os.close(write_fd)
    _, status = os.waitpid(pid, 0)
    os.set_blocking(read_fd, False)
    try:
        received = os.read(read_fd, 4096)
    except BlockingIOError:
        received = b""
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        os._exit(0 if received == config["nonce"].encode() else 1)
    os._exit(128 - code if code < 0 else code)


if __name__ == "__main__":
    main()
