"""The sandbox's confinement step: a small interpreter that confines itself, then execs the program.

`tunelab.sandbox` starts every program as

    python -I -S -B tunelab/sandbox/confine.py PLAN ERROR_FD -- python -I -B program.py

This script reads the plan the sandbox prepared (`save_plan`: `enter`'s arguments, marshalled)
and deletes it. It then joins the run's cgroups, unshares its namespaces, builds the private
filesystem, sets the rlimits, drops to the run's uid, and execs the rest of its command line,
which so inherits all of it. Were these steps a `preexec_fn` instead, `subprocess` would have to
fork() the caller itself: an evaluating process holding a model copies gigabytes of page tables
per program, against the vfork it uses otherwise (`bench/sandbox_caller.py` measures both; the
figures are in docs/performance.md). Started like this, the cost of a program no longer
depends on who asked for it.

A confinement step that fails writes its reason to ERROR_FD and exits; the fd is closed on exec,
so the sandbox reads either that reason or end-of-file (the program is running). It imports as
little as it can (marshal, not json; no dataclasses), as every program pays for its start, and
only from the standard library, as `-S` leaves site-packages out.
"""

from __future__ import annotations

import marshal
import os
import resource
import sys

CONFINE_FAILED = 125  # exit status when a step failed (the reason went to ERROR_FD)


def _load_libc():
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.unshare, libc.mount, libc.syscall, libc.prctl  # noqa: B018 - all four must exist
    except (ImportError, OSError, AttributeError):
        return None, None
    return ctypes, libc


_ctypes, _libc = _load_libc()


def _libc_check(result: int) -> None:
    if result != 0:
        errno = _ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def _load_unshare():
    if hasattr(os, "unshare"):  # Python 3.12+
        return os.unshare
    if _libc is None:
        return None
    _libc.unshare.argtypes = [_ctypes.c_int]
    return lambda flags: _libc_check(_libc.unshare(flags))


unshare = _load_unshare()  # None where neither os.unshare nor libc's is available

_MS_NOSUID, _MS_NODEV, _MS_BIND, _MS_REC, _MS_PRIVATE = 0x2, 0x4, 0x1000, 0x4000, 0x40000
_SYS_MOUNT_SETATTR, _AT_FDCWD, _AT_RECURSIVE = 442, -100, 0x8000  # mount_setattr(2), Linux 5.12+
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NOSUID = 0x1, 0x2
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2

# The seccomp filter's per-architecture facts: (AUDIT_ARCH_*, socket(2)'s syscall number).
_SECCOMP_ARCHES = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}
_SYS_IO_URING_SETUP = 425  # the same on both: io_uring can open sockets without socket(2)
_X32_SYSCALLS = 0x40000000  # x86_64's x32 ABI: the same calls under other numbers
_AF_UNIX = 1
_BPF_LD_W_ABS, _BPF_JEQ, _BPF_JGE, _BPF_RET = 0x20, 0x15, 0x35, 0x06
_SECCOMP_RET_ALLOW, _SECCOMP_RET_EPERM = 0x7FFF0000, 0x00050000 | 1


def _mount_attr():
    """mount_setattr's argument: read-only and nosuid (not nodev: /dev/null must keep working)."""
    if _ctypes is None:
        return None

    class MountAttr(_ctypes.Structure):
        _fields_ = [(name, _ctypes.c_uint64) for name in ("attr_set", "attr_clr", "propagation", "userns_fd")]

    return MountAttr(_MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID, 0, 0, 0)


_READ_ONLY = _mount_attr()


def _mount(source: bytes | None, target: bytes, fstype: bytes | None, flags: int, data: bytes | None = None) -> None:
    _libc_check(_libc.mount(source, target, fstype, _ctypes.c_ulong(flags), data))


def _make_read_only(path: bytes) -> None:
    """Every mount at or below `path`, in this mount namespace only, read-only and nosuid."""
    c = _ctypes
    _libc_check(_libc.syscall(c.c_long(_SYS_MOUNT_SETATTR), c.c_long(_AT_FDCWD), c.c_char_p(path),
                              c.c_long(_AT_RECURSIVE), c.byref(_READ_ONLY), c.c_long(c.sizeof(_READ_ONLY))))


def write_file(path: str, data: bytes) -> None:
    """One write to an existing file (procfs and cgroupfs files want it whole)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def save_plan(plan: dict, path: str) -> None:
    """Write `plan` (`enter`'s arguments) for the confinement step; only its owner may read it."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        marshal.dump(plan, handle)  # the same interpreter reads it back


def enter(*, timeout: float, memory_mb: int, scratch_bytes: int, file_size_bytes: int, unshare_flags: int,
          id_maps: tuple[str, str] | None, cgroup_procs: tuple[str, ...], nproc: int | None,
          workdir: str | None, program: str, uid: int | None,
          reveal: tuple[tuple[str, tuple[str, ...]], ...], keep: tuple[str, ...] = ()) -> None:
    """Join the cgroups (while still privileged to), unshare, build the private filesystem, set
    rlimits, then give up root for the run's own uid. The arguments are `tunelab.sandbox.Plan`'s."""
    for procs in cgroup_procs:
        write_file(procs, str(os.getpid()).encode())
    if unshare_flags:
        unshare(unshare_flags)
        if id_maps:
            write_file("/proc/self/setgroups", b"deny")  # required before an unprivileged gid_map
            write_file("/proc/self/uid_map", id_maps[0].encode())
            write_file("/proc/self/gid_map", id_maps[1].encode())
    if workdir:
        _private_filesystem(workdir, program, uid, reveal, scratch_bytes, keep)
    cpu = max(1, int(timeout) + 1)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    memory = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_bytes, file_size_bytes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    if nproc is not None:
        # After unshare: a new user namespace takes the creator's RLIMIT_NPROC at creation as
        # the cap on the user's count outside it, which must stay the caller's own.
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    if _libc is not None:  # no setuid binary can hand the program privileges back
        _libc.prctl(_PR_SET_NO_NEW_PRIVS, _ctypes.c_ulong(1), _ctypes.c_ulong(0), _ctypes.c_ulong(0),
                    _ctypes.c_ulong(0))
        _refuse_unix_sockets()


def _refuse_unix_sockets() -> None:
    """A seccomp filter under which socket(AF_UNIX, ...) fails with EPERM.

    A network namespace leaves the filesystem's Unix sockets reachable (a D-Bus or Docker socket,
    or any left writable to all); with no way to open one, none is. socketpair(2) stays allowed
    (a connected pair reaches nothing outside), and so does every other address family. The
    filter also refuses what would bypass it: io_uring (which opens sockets itself), the x32
    ABI's numbers and any other architecture's calls (int 0x80). Where seccomp or the
    architecture is missing nothing is installed; the probe in `tunelab.sandbox.runner` then
    finds Unix sockets open and `isolation()` says so.
    """
    arch = _SECCOMP_ARCHES.get(os.uname().machine)
    if arch is None:
        return
    audit_arch, socket_call = arch
    c = _ctypes

    class Instruction(c.Structure):
        _fields_ = [("code", c.c_uint16), ("jt", c.c_uint8), ("jf", c.c_uint8), ("k", c.c_uint32)]

    class Program(c.Structure):
        _fields_ = [("len", c.c_uint16), ("filter", c.POINTER(Instruction))]

    # seccomp_data: nr at 0, arch at 4, args[0]'s low word at 16. Jumps count from the next line.
    steps = [(_BPF_LD_W_ABS, 0, 0, 4), (_BPF_JEQ, 0, 8, audit_arch),      # 0-1 another arch: refuse
             (_BPF_LD_W_ABS, 0, 0, 0), (_BPF_JGE, 6, 0, _X32_SYSCALLS),   # 2-3 x32: refuse
             (_BPF_JEQ, 2, 0, socket_call),                              # 4 socket: look at its family
             (_BPF_JEQ, 4, 0, _SYS_IO_URING_SETUP), (_BPF_RET, 0, 0, _SECCOMP_RET_ALLOW),  # 5-6
             (_BPF_LD_W_ABS, 0, 0, 16), (_BPF_JEQ, 1, 0, _AF_UNIX),       # 7-8 AF_UNIX: refuse
             (_BPF_RET, 0, 0, _SECCOMP_RET_ALLOW), (_BPF_RET, 0, 0, _SECCOMP_RET_EPERM)]  # 9, 10
    instructions = (Instruction * len(steps))(*[Instruction(*step) for step in steps])
    program = Program(len(steps), instructions)
    _libc.prctl(_PR_SET_SECCOMP, c.c_ulong(_SECCOMP_MODE_FILTER), c.byref(program), c.c_ulong(0), c.c_ulong(0))


def _private_filesystem(workdir: str, program: str, uid: int | None,
                        reveal: tuple[tuple[str, tuple[str, ...]], ...], scratch_bytes: int,
                        keep: tuple[str, ...] = ()) -> None:
    """In the new mount namespace: the whole host tree read-only, one size-capped tmpfs as the
    only writable place (/tmp, also seen at /var/tmp and /dev/shm, holding the program's
    directory `workdir`). Directories the run's uid could not enter on the way to the interpreter
    (`reveal`) are replaced by a view holding only the interpreter; the interpreter's directories
    under /tmp, /var/tmp or /dev/shm (`keep`) are bound back into the tmpfs, read-only."""
    _mount(None, b"/", None, _MS_REC | _MS_PRIVATE)  # first: nothing mounted below may reach the host
    for hidden, needed in reveal:
        _reveal_only(hidden, needed)
    _make_read_only(b"/")
    kept = [(path, os.open(path, os.O_PATH | os.O_DIRECTORY)) for path in keep]  # before the tmpfs covers them
    _mount(b"tunelab-sandbox", b"/tmp", b"tmpfs", _MS_NOSUID | _MS_NODEV, b"size=%d,mode=1777" % scratch_bytes)
    for alias in (b"/var/tmp", b"/dev/shm"):
        if os.path.isdir(alias):
            _mount(b"/tmp", alias, None, _MS_BIND)
    for path, handle in kept:
        os.makedirs(path, 0o755, exist_ok=True)
        _mount(b"/proc/self/fd/%d" % handle, path.encode(), None, _MS_BIND | _MS_REC)
        os.close(handle)
        _make_read_only(path.encode())
    os.mkdir(workdir, 0o700)
    descriptor = os.open(os.path.join(workdir, "program.py"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, program.encode())
    finally:
        os.close(descriptor)
    if uid is not None:
        os.chown(workdir, uid, uid)
    os.chdir(workdir)


def _reveal_only(hidden: str, needed: tuple[str, ...]) -> None:
    """Cover `hidden` with an empty tmpfs and bind back only the `needed` directories under it."""
    handles = [os.open(path, os.O_PATH | os.O_DIRECTORY) for path in needed]  # before they are covered
    _mount(b"tunelab-sandbox", hidden.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, b"size=1m,mode=0755")
    for path, handle in zip(needed, handles):
        os.makedirs(path, 0o755, exist_ok=True)
        _mount(b"/proc/self/fd/%d" % handle, path.encode(), None, _MS_BIND | _MS_REC)
        os.close(handle)


def command(plan_path: str, error_fd: int, program_argv: list[str]) -> list[str]:
    """The command line that confines itself by `plan_path`'s plan, then runs `program_argv`."""
    return [sys.executable, "-I", "-S", "-B", os.path.abspath(__file__), plan_path, str(error_fd), "--",
            *program_argv]


def main(argv: list[str]) -> int:
    plan_path, error_fd, separator, *program_argv = argv
    error_fd = int(error_fd)
    os.set_inheritable(error_fd, False)  # closed by the exec below: end-of-file tells the sandbox it ran
    try:
        if separator != "--" or not program_argv:
            raise ValueError("usage: confine.py PLAN ERROR_FD -- PROGRAM [ARGS...]")
        with open(plan_path, "rb") as handle:
            plan = marshal.load(handle)
        os.unlink(plan_path)  # the program's own directory holds only the program
        enter(**plan)
        os.execvp(program_argv[0], program_argv)  # a wrapper (bwrap) is found on PATH, as Popen would
    except BaseException as err:  # anything before the exec: report it, never run the program
        os.write(error_fd, f"{type(err).__name__}: {err}".encode()[:4096])
        return CONFINE_FAILED
    return CONFINE_FAILED  # not reached: execvp returns only by raising


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
