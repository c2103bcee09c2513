"""Run untrusted (model-written) Python in a separate, resource-limited process.

Never `exec` model output in the evaluating process: everything goes through `run_program`,
which starts a fresh `python -I` per program, in its own session and temporary directory, with
a scrubbed environment and rlimits on CPU time, address space, file size and open files (applied
by `tunelab.sandbox.confine`, a small interpreter that confines itself and then execs the program), and:
- a cap on the number of processes (and threads) the program may have at once: a pids cgroup
  where one can be made, else RLIMIT_NPROC (see `_run_limits` for why it cannot be a plain
  RLIMIT_NPROC everywhere);
- a cap on the memory of all its processes together, where a memory cgroup can be made;
- a fresh network namespace (no network at all, not even loopback) and IPC namespace, and a
  seccomp filter under which no Unix socket can be opened (`confine._refuse_unix_sockets`): the
  filesystem's sockets are outside any network namespace;
- a private mount namespace: the whole host filesystem read-only and nosuid, and one tmpfs of
  SCRATCH_LIMIT_BYTES as the only writable place (its directory, /tmp, /var/tmp, /dev/shm), with
  the interpreter's own directories under those bound back read-only (a checkout under /tmp);
- for a root caller, a fresh uid of its own per run (from SANDBOX_UIDS), so it can neither signal,
  trace nor read the /proc entries of the caller's processes, nor open anything of root's that is
  not world-readable (private files, devices, sockets); root's home directory is replaced by a view
  holding only the Python installation. For other callers, a user namespace in which the program
  runs without capabilities, as the caller's uid;
- a cap on what it may write to stdout and stderr together (past it, it is killed and fails);
- the whole process group (and the whole cgroup, or every process of its own uid) killed on
  timeout and when it ends.
Each of these applies where the machine allows it; `isolation()` says which do here (probed once
by running a program under them), every result records the protections it ran under, and
`tunelab.sandbox.protections.require` stops a run that needs more than the machine gives.
A program's status comes from the kernel's exit status, never from anything it prints; its CPU
time comes from the kernel too (`wait4`). Checking a completion against tests is
`tunelab.sandbox.harness`: the tests run in another process, which the candidate only answers.

What this promises (where `isolation()` reports the part): a program cannot outlive its timeout,
fork-bomb the host, take more than its memory (per process; per run with a memory cgroup), fill
the disk, change or delete any file of the host, reach the network, flood the caller with output,
read the caller's environment, or leave a process or a SysV shared-memory segment behind.
What it does not promise:
- under the caller's own uid (any non-root caller): signals and ptrace towards the caller's other
  processes (the evaluator included) are not blocked, as there is no PID namespace; and with no
  cgroup of its own a process that left the group with setsid outlives the run;
- reading: the host filesystem stays readable wherever the program's uid may read;
- kernel exploits.
For those, set $TUNELAB_SANDBOX_WRAPPER to run every program under bubblewrap or nsjail (PID
namespace, a minimal filesystem); the cgroups, rlimits, output cap and timeouts still apply.
"""

from __future__ import annotations

import os
import queue
import secrets
import select
import selectors
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Callable, Iterator

from tunelab.sandbox import confine
from tunelab.sandbox.confine import save_plan, write_file

OUTPUT_LIMIT_BYTES = 1 << 20  # keep at most the last 1 MiB of each stream of a program's output
OUTPUT_STOP_BYTES = 16 << 20  # a program writing more than this to stdout+stderr is killed and fails
PROCESS_ALLOWANCE = 32  # tasks (processes and threads, itself included) one program may have at once
FILE_SIZE_LIMIT_BYTES = 10 * OUTPUT_LIMIT_BYTES  # RLIMIT_FSIZE: the largest file a program may write
SCRATCH_LIMIT_BYTES = 64 << 20  # all a program may write, where it has a private filesystem (see `confine.enter`)
SANDBOX_ID = 1000  # uid/gid of a root caller's program in its user namespace: not 0, so exec drops all capabilities
# A root caller's program runs under a fresh uid from this range, one per run, which owns nothing on the
# host and is shared with no other process, so it can neither signal, trace nor write anything of the
# caller's (or another run's). Far above the ranges distributions and container runtimes hand out.
SANDBOX_UIDS = range(1_900_000_000, 1_901_000_000)
# A command line to run every program under (bubblewrap, nsjail), `{workdir}` standing for the run's
# directory. It then owns the namespaces, the filesystem and the uid; the rest applies as ever.
WRAPPER_ENV = "TUNELAB_SANDBOX_WRAPPER"

_CLONE_NEWNS = 0x00020000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_PIPE_CHUNK = 512  # stdin is written in pieces no larger than PIPE_BUF, which never block once writable


@dataclass
class SandboxResult:
    status: str  # passed | failed | timeout | error
    runtime_s: float  # wall time, measured here
    returncode: int | None
    stdout: str
    stderr: str
    cpu_s: float = 0.0  # user+system CPU time of the program and the children it waited for, from wait4
    network_isolated: bool = False  # it ran in a fresh network namespace
    process_limit: str = "none"  # how its process count was capped (see `Isolation`)
    protections: tuple[str, ...] = ()  # the PROTECTIONS it ran under

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "runtime_s": round(self.runtime_s, 4),
            "cpu_s": round(self.cpu_s, 4),
            "returncode": self.returncode,
            "network_isolated": self.network_isolated,
            "process_limit": self.process_limit,
            "protections": list(self.protections),
            "stdout": self.stdout[-2000:],
            "stderr": self.stderr[-2000:],
        }


# The protections a program can run under, as `sandbox.require` names them (tunelab.sandbox.protections).
PROTECTIONS = {
    "network": "no network at all: a fresh network namespace, and no Unix socket can be opened",
    "filesystem": "the host filesystem read-only; a program writes only to a small private tmpfs",
    "process-limit": "a cap on the processes and threads a program may have at once",
    "caller-unreachable": "a program can neither signal nor trace the caller's processes "
                          "(a uid of its own per run, or a wrapper's PID namespace)",
}


@dataclass(frozen=True)
class Isolation:
    """What this machine lets the sandbox apply to every program; found once by `isolation()`."""

    network: bool  # a fresh network namespace (no interfaces up, so no network at all)
    user_namespace: bool  # a fresh user namespace under a non-root id, without capabilities
    process_limit: str  # pids-cgroup | rlimit-own-uid | rlimit-namespace | rlimit-user | none
    cgroup_parent: str | None = None  # where each run's pids cgroup is made
    memory_cgroup_parent: str | None = None  # where each run's memory cgroup is made, if one can be
    filesystem: bool = False  # a private mount namespace: the host read-only, writes only to a small tmpfs
    own_uid: bool = False  # a fresh uid per run (root callers only): nothing of the caller's is its own
    wrapper: tuple[str, ...] = ()  # the isolator every program runs under ($TUNELAB_SANDBOX_WRAPPER);
    # with one, network/user_namespace/filesystem/pid_namespace say what a probe program saw under it
    pid_namespace: bool = False  # a PID namespace of its own (only under a wrapper): no host process in sight
    unix_sockets_refused: bool = False  # seccomp refuses socket(AF_UNIX): no Unix socket of the host is reachable
    weaker_because: str = ""  # why the strongest set-up could not be used: what its probe program said

    @property
    def protections(self) -> list[str]:
        """The PROTECTIONS every program gets under this isolation, in that order."""
        has = {"network": self.network and self.unix_sockets_refused, "filesystem": self.filesystem,
               "process-limit": self.process_limit != "none", "caller-unreachable": self.own_uid or self.pid_namespace}
        return [name for name in PROTECTIONS if has[name]]


@lru_cache(maxsize=None)
def _interpreter_directories() -> list[str]:
    """The outermost directories the interpreter (and its virtual environment) lives in."""
    own = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix, os.path.dirname(sys.executable)}
    paths = sorted({os.path.realpath(p) for p in own} | {os.path.dirname(os.path.realpath(sys.executable))})
    return [p for p in paths if not any(p.startswith(q + os.sep) for q in paths)]


# Where the private filesystem mounts its scratch tmpfs: anything the interpreter needs there is
# bound back read-only (`confine._private_filesystem`), so a checkout under /tmp still runs.
SCRATCH_PLACES = ("/tmp", "/var/tmp", "/dev/shm")


def _interpreter_under_scratch() -> tuple[str, ...]:
    return tuple(p for p in _interpreter_directories()
                 if any(p == place or p.startswith(place + os.sep) for place in SCRATCH_PLACES))


def _unreachable_ancestors() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(directory, the interpreter's directories under it) for each directory on the way to the
    interpreter that others may not enter (root's 0700 home, where pyenv lives): a run under a
    fresh uid could not start Python through it, so `_reveal_only` shows it just those."""
    hidden: dict[str, list[str]] = {}
    for path in _interpreter_directories():
        parts = path.split(os.sep)
        for depth in range(2, len(parts)):
            ancestor = os.sep.join(parts[:depth])
            if not os.stat(ancestor).st_mode & 0o001:
                hidden.setdefault(ancestor, []).append(path)
                break
    return tuple((directory, tuple(needed)) for directory, needed in sorted(hidden.items()))


def _id_maps() -> tuple[str, str]:
    """Map the caller's own ids (the only ones an unprivileged process may map) to a non-zero
    id inside, so that exec leaves the program without capabilities even when the caller is root."""
    uid, gid = os.geteuid(), os.getegid()
    return f"{uid or SANDBOX_ID} {uid} 1", f"{gid or SANDBOX_ID} {gid} 1"


# --- the process-count and memory limits --------------------------------------------------------

def _cgroup_parent(controller: str) -> str | None:
    """This process's own cgroup in a hierarchy with `controller` (pids, memory), if it is writable."""
    try:
        with open("/proc/self/cgroup") as handle:
            membership = dict(line.rstrip("\n").split(":", 2)[1:] for line in handle if line.count(":") >= 2)
        with open("/proc/self/mountinfo") as handle:
            mounts = [line.split() for line in handle]
    except OSError:
        return None
    for fields in mounts:
        tail = fields[fields.index("-") + 1:]
        fstype, options, root, mount_point = tail[0], tail[2].split(","), fields[3], fields[4]
        if fstype == "cgroup" and controller in options:
            path = next((p for c, p in membership.items() if controller in c.split(",")), None)
        elif fstype == "cgroup2":
            path = membership.get("")
        else:
            continue
        if path is None:
            continue
        relative = os.path.relpath(path, root)
        directory = os.path.normpath(os.path.join(mount_point, relative))
        if relative.startswith("..") or not os.access(directory, os.W_OK):
            continue
        if fstype == "cgroup2":  # children get the limit only where this cgroup hands the controller down
            try:
                with open(os.path.join(directory, "cgroup.subtree_control")) as handle:
                    if controller not in handle.read().split():
                        continue
            except OSError:
                continue
        return directory
    return None


def _make_cgroup(parent: str, max_tasks: int | None, memory_bytes: int | None) -> str:
    """A cgroup for one run, capping its tasks and/or its memory (the program's and its
    children's pages and its tmpfs together; swap too, in cgroup v2)."""
    directory = os.path.join(parent, f"tunelab-sandbox-{os.getpid()}-{secrets.token_hex(4)}")
    os.mkdir(directory)
    limits: dict[str, int] = {}
    if max_tasks is not None:
        limits["pids.max"] = max_tasks
    if memory_bytes is not None:
        if os.path.exists(os.path.join(directory, "memory.max")):  # cgroup v2
            limits["memory.max"] = memory_bytes
            if os.path.exists(os.path.join(directory, "memory.swap.max")):
                limits["memory.swap.max"] = 0
        else:
            limits["memory.limit_in_bytes"] = memory_bytes
    try:
        for name, value in limits.items():
            write_file(os.path.join(directory, name), str(value).encode())
    except OSError:
        os.rmdir(directory)
        raise
    return directory


def _remove_cgroup(directory: str) -> None:
    """Kill every task left in the run's cgroup (setsid cannot take them out of it), then remove it."""
    for _ in range(400):
        try:
            with open(os.path.join(directory, "cgroup.procs")) as handle:
                pids = [int(line) for line in handle if line.strip()]
        except FileNotFoundError:
            return
        if not pids:
            try:
                os.rmdir(directory)
                return
            except OSError:  # the last tasks are still being torn down
                pass
        _kill_all(pids)
        time.sleep(0.005)


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def process_statuses() -> Iterator[tuple[int, dict[str, str]]]:
    """(pid, the fields of /proc/<pid>/status) of every process this one can see."""
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/status") as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
        except OSError:
            continue  # gone, or hidden from us
        yield int(entry), fields


def real_uid(fields: dict[str, str]) -> int:
    return int(fields["Uid"].split()[0])


def is_live(fields: dict[str, str]) -> bool:
    return fields["State"].split()[0] not in ("Z", "X")  # zombies and dead tasks hold nothing


def _user_task_count(uid: int) -> int:
    """Tasks (threads) whose real uid is `uid`, as far as /proc shows them: what RLIMIT_NPROC counts."""
    return sum(int(fields["Threads"]) for _, fields in process_statuses() if real_uid(fields) == uid)


def _run_limits(found: Isolation, max_processes: int, memory_mb: int) -> tuple[list[str], int | None]:
    """(the cgroups made for this run, an RLIMIT_NPROC value): how its task count and, where a
    memory cgroup can be made, its memory as a whole are capped (RLIMIT_AS caps one process only:
    PROCESS_ALLOWANCE processes could otherwise hold that much each).

    A pids cgroup counts exactly this program's tasks whoever runs it, and lets the cleanup find
    tasks that left the process group. Where none can be made, RLIMIT_NPROC is the fallback, with
    two catches. It counts every task of the real uid, so in the caller's own user namespace a
    small value would fail at once for a user already running many processes: there the limit is
    the user's current count (read here, before fork) plus the allowance. In a fresh user namespace
    the kernel counts per namespace, so the allowance alone is exact, as it is for a run under its
    own fresh uid. And the kernel never applies it to kernel uid 0 (root, in any namespace): a root
    caller without a pids cgroup gets no cap unless its programs run under their own uid.
    """
    pids_parent = found.cgroup_parent if found.process_limit == "pids-cgroup" else None
    memory_parent = found.memory_cgroup_parent
    memory = memory_mb * 1024 * 1024 + SCRATCH_LIMIT_BYTES if memory_parent else None
    if pids_parent and pids_parent == memory_parent:  # cgroup v2: one group holds both limits
        wanted = [(pids_parent, max_processes, memory)]
    else:
        wanted = [(pids_parent, max_processes, None), (memory_parent, None, memory)]
    made: list[str] = []
    try:
        for parent, tasks, memory_bytes in wanted:
            if parent:
                made.append(_make_cgroup(parent, tasks, memory_bytes))
    except OSError:
        for directory in made:
            _remove_cgroup(directory)
        raise
    if found.process_limit in ("rlimit-own-uid", "rlimit-namespace"):  # counted for this run alone
        return made, max_processes
    if found.process_limit == "rlimit-user":
        return made, _user_task_count(os.getuid()) + max_processes
    return made, None


# --- running one program -------------------------------------------------------------------------

def _group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` is still running (zombies, which init may take a while
    to reap, do not count)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                state, _, group = handle.read().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if int(group) == pgid and state not in "ZX":
            return True
    return False


def _kill_group(pid: int, wait_s: float = 0.0) -> None:
    """SIGKILL the program's process group; with `wait_s`, keep at it until no member runs (the
    last ones may still have been forking), so nothing outlives the run."""
    give_up = time.monotonic() + wait_s
    while True:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        if time.monotonic() >= give_up or not _group_alive(pid):
            return
        time.sleep(0.005)


def _kill_uid(uid: int, wait_s: float = 2.0) -> None:
    """SIGKILL every process running as `uid` (a run's own, so all of them are the run's) until none
    is left: where no cgroup holds the run, this finds what left its process group with setsid."""
    give_up = time.monotonic() + wait_s
    while time.monotonic() < give_up:
        running = [pid for pid, fields in process_statuses() if real_uid(fields) == uid and is_live(fields)]
        if not running:
            return
        _kill_all(running)
        time.sleep(0.005)


class Conversation:
    """The caller's end of a dialogue with a running program: it writes one line to the program's
    stdin and waits for the next line of its stdout (`run_dialogue`)."""

    def __init__(self, wake: int) -> None:
        self._outgoing = bytearray()
        self._lock = threading.Lock()
        self._replies: queue.Queue[bytes | None] = queue.Queue()
        self._wake = wake
        self.ended = False

    def ask(self, line: bytes) -> bytes | None:
        """Send `line` (a newline ends it) and return the program's next line, or None once the
        program can no longer answer: it ended, or was stopped at its timeout or output limit."""
        if self.ended:
            return None
        with self._lock:
            self._outgoing += line + b"\n"
        os.write(self._wake, b"s")
        reply = self._replies.get()
        if reply is None:
            self.ended = True
        return reply

    def _take_outgoing(self) -> bytes:
        with self._lock:
            data, self._outgoing = bytes(self._outgoing), bytearray()
        return data

    def _end(self) -> None:
        self._replies.put(None)


def _exchange(process: subprocess.Popen, stdin_bytes: bytes, deadline: float,
              dialogue: Callable[[Conversation], Any] | None = None) -> tuple[bytes, bytes, str, list]:
    """Feed stdin, read stdout and stderr until both close; stop early at the deadline ('timeout')
    or when the output passes OUTPUT_STOP_BYTES ('output'). Keeps each stream's last bytes only.

    With a `dialogue`, stdin is what the dialogue (run in a thread of its own) sends, line by line,
    and each line of stdout is its answer; stdin closes when the dialogue returns. The last value
    is [what the dialogue returned] or [None, the exception it raised]."""
    buffers = {process.stdout: bytearray(), process.stderr: bytearray()}
    written, total, stopped = 0, 0, ""
    outcome: list = [None, None]
    talk = None
    if dialogue is not None:
        wake_read, wake_write = os.pipe()
        talk = Conversation(wake_write)
        finished = threading.Event()

        def converse() -> None:
            try:
                outcome[0] = dialogue(talk)
            except BaseException as err:  # noqa: BLE001 - handed to the caller as the dialogue's result
                outcome[1] = err
            finally:
                finished.set()
                os.write(wake_write, b"d")

        thread = threading.Thread(target=converse, name="sandbox-dialogue", daemon=True)
        partial_line = bytearray()
    with selectors.DefaultSelector() as selector:
        for stream in buffers:
            selector.register(stream, selectors.EVENT_READ)
        if talk is not None:
            selector.register(wake_read, selectors.EVENT_READ)
            thread.start()
        elif stdin_bytes:
            selector.register(process.stdin, selectors.EVENT_WRITE)
        else:
            process.stdin.close()
        # In a dialogue the wake-up pipe stays registered: run until the program's output streams close.
        while (any(key.fileobj in buffers for key in selector.get_map().values()) if talk is not None
               else selector.get_map()) and not stopped:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                stopped = "timeout"
                break
            for key, _ in selector.select(remaining):
                if talk is not None and key.fileobj == wake_read:
                    os.read(wake_read, 4096)
                    if not process.stdin.closed:
                        stdin_bytes = stdin_bytes[written:] + talk._take_outgoing()
                        written = 0
                        if stdin_bytes and process.stdin not in [k.fileobj for k in selector.get_map().values()]:
                            selector.register(process.stdin, selectors.EVENT_WRITE)
                        elif not stdin_bytes and finished.is_set():
                            process.stdin.close()
                    continue
                if key.fileobj is process.stdin:
                    try:
                        written += os.write(key.fd, stdin_bytes[written:written + _PIPE_CHUNK])
                    except BrokenPipeError:
                        written = len(stdin_bytes)
                    if written >= len(stdin_bytes):
                        selector.unregister(process.stdin)
                        if talk is None or finished.is_set():
                            process.stdin.close()
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                buffer = buffers[key.fileobj]
                buffer += chunk
                if len(buffer) > 2 * OUTPUT_LIMIT_BYTES:
                    del buffer[:-OUTPUT_LIMIT_BYTES]
                total += len(chunk)
                if total > OUTPUT_STOP_BYTES:
                    stopped = "output"
                elif talk is not None and key.fileobj is process.stdout:
                    partial_line += chunk
                    *lines, rest = partial_line.split(b"\n")
                    partial_line = bytearray(rest)
                    for line in lines:
                        talk._replies.put(bytes(line))
    for stream in (process.stdin, process.stdout, process.stderr):
        stream.close()
    if talk is not None:
        talk._end()  # the program can answer no more: a waiting `ask` returns None
        thread.join(max(0.0, deadline - time.monotonic()) + 5.0)
        if thread.is_alive():  # its pipe stays open: the thread may still write to it
            outcome[1] = TimeoutError("the dialogue did not end after the program did")
        else:
            os.close(wake_read)
            os.close(wake_write)
    tail = OUTPUT_LIMIT_BYTES
    return bytes(buffers[process.stdout][-tail:]), bytes(buffers[process.stderr][-tail:]), stopped, outcome


def _confinement_failure(error_read: int, deadline: float) -> str | None:
    """Why the confinement step (`tunelab.sandbox.confine`) did not run the program, or None once it has:
    its error pipe closes on exec, or carries one message (under PIPE_BUF, so written whole)."""
    try:
        if not select.select([error_read], [], [], max(0.0, deadline - time.monotonic()))[0]:
            return "the confinement step did not finish before the timeout"
        message = os.read(error_read, 8192)
    finally:
        os.close(error_read)
    return message.decode("utf-8", "replace") or None


def _reap(pid: int, deadline: float) -> tuple[int, float, bool]:
    """(exit code as Popen reports it, CPU seconds from wait4, whether it had to be killed at the deadline)."""
    delay, killed = 0.0005, False
    while True:
        done, status, usage = os.wait4(pid, 0 if killed else os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime, killed
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)  # not yet reaped, so the pid is still this program's
            killed = True
            continue
        time.sleep(min(delay, max(deadline - time.monotonic(), 0)))
        delay = min(delay * 2, 0.05)


@dataclass
class _Outcome:
    returncode: int | None
    stdout: str
    stderr: str
    runtime_s: float
    cpu_s: float
    stopped: str  # '' | 'timeout' | 'output' | 'start' (could not start)
    dialogue: list | None = None  # [returned, raised] of a dialogue (`run_dialogue`)


def _unshare_flags(found: Isolation) -> int:
    if found.wrapper:
        return 0
    flags = _CLONE_NEWUSER if found.user_namespace else 0
    if found.network:
        flags |= _CLONE_NEWNET
    if found.filesystem:  # a private IPC namespace too: SysV shared memory would outlive the run
        flags |= _CLONE_NEWNS | _CLONE_NEWIPC
    return flags


def _execute(source: str, timeout: float, memory_mb: int, stdin_text: str, found: Isolation,
             max_processes: int, dialogue: Callable[[Conversation], Any] | None = None) -> _Outcome:
    """Run `source` under `found`'s confinement; no verdict, just what happened."""
    with tempfile.TemporaryDirectory(prefix="tunelab-sandbox-") as workdir:
        # With a private filesystem the program's directory is made afresh in its own tmpfs, under
        # the same name; this one on the host is then only where the child starts.
        private = found.filesystem and not found.wrapper
        program_dir = os.path.join("/tmp", os.path.basename(workdir)) if private else workdir
        program = os.path.join(program_dir, "program.py")
        with open(os.path.join(workdir, "program.py"), "w") as handle:
            handle.write(source)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": program_dir, "TMPDIR": program_dir,
               "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            cgroups, nproc = _run_limits(found, max_processes, memory_mb)
        except OSError as err:
            return _Outcome(None, "", f"could not start sandbox: {err}", 0.0, 0.0, "start")
        try:
            plan = dict(timeout=timeout, memory_mb=memory_mb, scratch_bytes=SCRATCH_LIMIT_BYTES,
                        file_size_bytes=FILE_SIZE_LIMIT_BYTES, unshare_flags=_unshare_flags(found),
                        id_maps=_id_maps() if found.user_namespace else None,
                        cgroup_procs=tuple(os.path.join(cgroup, "cgroup.procs") for cgroup in cgroups),
                        nproc=nproc, workdir=program_dir if private else None, program=source,
                        uid=SANDBOX_UIDS[secrets.randbelow(len(SANDBOX_UIDS))] if found.own_uid else None,
                        reveal=_unreachable_ancestors() if found.own_uid else (),
                        keep=_interpreter_under_scratch() if private else ())
            plan_path = os.path.join(workdir, "plan.marshal")
            save_plan(plan, plan_path)
            wrapper = [arg.replace("{workdir}", workdir) for arg in found.wrapper]
            error_read, error_write = os.pipe()
            start = time.monotonic()
            try:
                process = subprocess.Popen(
                    confine.command(plan_path, error_write, wrapper + [sys.executable, "-I", "-B", program]),
                    bufsize=0, cwd=workdir, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, start_new_session=True, pass_fds=(error_write,),
                )
            except (OSError, subprocess.SubprocessError) as err:
                os.close(error_read)
                return _Outcome(None, "", f"could not start sandbox: {err}", 0.0, 0.0, "start")
            finally:
                os.close(error_write)
            try:
                failure = _confinement_failure(error_read, start + timeout)
                if failure is not None:
                    for stream in (process.stdin, process.stdout, process.stderr):
                        stream.close()
                    process.returncode = _reap(process.pid, start + timeout)[0]  # Popen must not wait again
                    return _Outcome(None, "", f"could not start sandbox: {failure}", 0.0, 0.0, "start")
                stdout, stderr, stopped, talked = _exchange(process, stdin_text.encode(), start + timeout, dialogue)
                if stopped:
                    _kill_group(process.pid)
                returncode, cpu, killed = _reap(process.pid, start + timeout)
                process.returncode = returncode  # reaped here, with wait4; Popen must not wait again
                stopped = stopped or ("timeout" if killed else "")
            finally:
                _kill_group(process.pid, wait_s=2.0)  # whatever the program left behind in its group
                if plan["uid"] is not None and not cgroups:
                    _kill_uid(plan["uid"])
            runtime = time.monotonic() - start
        finally:
            for cgroup in cgroups:
                _remove_cgroup(cgroup)
    return _Outcome(returncode, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace"),
                    runtime, cpu, stopped, talked if dialogue is not None else None)


# --- what this machine allows, found once --------------------------------------------------------

# The probe reports what it runs under, and fails unless what honest programs need still works.
_PROBE = ("import os, socket\n"
          "open('probe.txt', 'w').write('x')\n"
          "open(os.devnull, 'w').write('x')\n"
          "try:\n"
          "    socket.socket(socket.AF_UNIX).close()\n"
          "    unix_refused = 0\n"
          "except PermissionError:\n"
          "    unix_refused = 1\n"
          "print(os.readlink('/proc/self/ns/net'), os.readlink('/proc/self/ns/user'), os.getuid(),\n"
          "      int(bool(os.statvfs('/').f_flag & os.ST_RDONLY)), os.readlink('/proc/self/ns/pid'), unix_refused)\n"
          "print(open('/proc/self/cgroup').read())\n")
_PROBE_FIELDS = 6  # the words of the probe's first line; /proc/self/cgroup's lines follow
_found: dict[tuple[str, ...], Isolation] = {}  # by wrapper
_found_lock = threading.Lock()


def _probe(found: Isolation) -> tuple[list[str] | None, str]:
    """What the probe program reports about itself under `found` (None if it could not run so),
    and the last line of what went wrong otherwise."""
    try:
        outcome = _execute(_PROBE, 10.0, 512, "", found, PROCESS_ALLOWANCE)
    except OSError as err:
        return None, f"{type(err).__name__}: {err}"
    if outcome.returncode == 0:
        return outcome.stdout.split(), ""
    said = outcome.stderr.strip().splitlines()
    return None, said[-1] if said else f"exit status {outcome.returncode}"


def _candidates() -> list[Isolation]:
    """Namespace set-ups, strongest first. Only root may run a program under another uid (and, in
    its own user namespace, root may have a network namespace without a user one)."""
    found = [Isolation(True, False, "none", filesystem=True, own_uid=True)] if os.geteuid() == 0 else []
    return found + [Isolation(True, True, "none", filesystem=True), Isolation(True, True, "none"),
                    Isolation(True, False, "none")]


def _confirmed(trial: Isolation, seen: list[str] | None, own: dict[str, str]) -> bool:
    """Whether the probe really ran under everything `trial` promises."""
    if not seen:
        return False
    net, user, uid, read_only = seen[0], seen[1], int(seen[2]), seen[3] == "1"
    return (net != own["net"]
            and (not trial.user_namespace or (user != own["user"] and uid != 0))
            and (not trial.own_uid or uid in SANDBOX_UIDS)
            and (not trial.filesystem or read_only))


def _under_wrapper(wrapper: tuple[str, ...], own: dict[str, str]) -> Isolation:
    """What a probe program sees of its namespaces and filesystem under `wrapper`."""
    seen, problem = _probe(Isolation(False, False, "none", wrapper=wrapper))
    if not seen or len(seen) < _PROBE_FIELDS:
        raise RuntimeError(f"{WRAPPER_ENV}={shlex.join(wrapper)!r}: a probe program could not run under it: "
                           f"{problem[-500:]}")
    return Isolation(network=seen[0] != own["net"], user_namespace=seen[1] != own["user"], process_limit="none",
                     filesystem=seen[3] == "1", wrapper=wrapper, pid_namespace=seen[4] != own["pid"],
                     unix_sockets_refused=seen[5] == "1")


def _own_namespaces() -> dict[str, str] | None:
    try:
        return {kind: os.readlink(f"/proc/self/ns/{kind}") for kind in ("net", "user", "pid")}
    except OSError:
        return None


def _detect(wrapper: tuple[str, ...] = ()) -> Isolation:
    namespaces = Isolation(network=False, user_namespace=False, process_limit="none")
    own = _own_namespaces()
    if wrapper:
        namespaces = _under_wrapper(wrapper, own or {"net": "", "user": "", "pid": ""})
    elif confine.unshare is None or own is None:
        namespaces = replace(namespaces, weaker_because="this Python can call neither os.unshare nor libc's "
                                                        "unshare, or /proc/self/ns cannot be read")
    else:
        problems = []
        for trial in _candidates():
            seen, problem = _probe(trial)
            if _confirmed(trial, seen, own):
                namespaces = replace(trial, unix_sockets_refused=seen[5] == "1")
                break
            problems.append(problem or "the probe ran without what was asked for")
        namespaces = replace(namespaces, weaker_because=problems[0] if problems else "")
    # Cgroups are joined before exec, outside any wrapper (whose cgroup namespace would hide them).
    base = Isolation(False, False, "none") if wrapper else namespaces
    process_limit, cgroup_parent, memory_parent = "none", _cgroup_parent("pids"), _cgroup_parent("memory")
    pids_trial = replace(base, process_limit="pids-cgroup", cgroup_parent=cgroup_parent)
    if cgroup_parent and _joined("pids", _probe(pids_trial)[0]):
        process_limit = "pids-cgroup"
    if memory_parent and not _joined("memory", _probe(replace(base, memory_cgroup_parent=memory_parent))[0]):
        memory_parent = None
    if process_limit == "none":
        if namespaces.own_uid:
            process_limit = "rlimit-own-uid"
        elif os.geteuid() != 0:  # the kernel exempts uid 0 from RLIMIT_NPROC
            process_limit = "rlimit-namespace" if namespaces.user_namespace else "rlimit-user"
    return replace(namespaces, process_limit=process_limit, memory_cgroup_parent=memory_parent,
                   cgroup_parent=cgroup_parent if process_limit == "pids-cgroup" else None)


def _joined(controller: str, seen: list[str] | None) -> bool:
    """Whether the probe ran in a run cgroup of `controller`'s hierarchy (its /proc/self/cgroup)."""
    for line in seen[_PROBE_FIELDS:] if seen else ():
        _, controllers, path = line.split(":", 2)
        if (not controllers or controller in controllers.split(",")) and "/tunelab-sandbox-" in path:
            return True
    return False


# $TUNELAB_SANDBOX_WRAPPER=bubblewrap: the command line docs/sandbox.md recommends, with the
# interpreter's directories under /tmp or /dev/shm bound back (its tmpfs would hide them).
BUBBLEWRAP = "bubblewrap"


def bubblewrap_command() -> tuple[str, ...]:
    scratch = str(SCRATCH_LIMIT_BYTES)
    command = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
               "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/run",
               "--size", scratch, "--tmpfs", "/tmp", "--size", scratch, "--tmpfs", "/dev/shm"]
    for directory in _interpreter_under_scratch():
        command += ["--ro-bind", directory, directory]
    return (*command, "--ro-bind", "{workdir}/program.py", "{workdir}/program.py", "--chdir", "{workdir}")


def isolation() -> Isolation:
    """What confinement this machine gives every program (probed on first use, then cached; once
    per value of $TUNELAB_SANDBOX_WRAPPER)."""
    wrapper = os.environ.get(WRAPPER_ENV, "").strip()
    wrapper = bubblewrap_command() if wrapper == BUBBLEWRAP else tuple(shlex.split(wrapper))
    with _found_lock:
        if wrapper not in _found:
            _found[wrapper] = _detect(wrapper)
        return _found[wrapper]


def network_isolated() -> bool:
    """Whether programs run without any network (a fresh network namespace) on this machine."""
    return isolation().network


def run_program(
    source: str,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    stdin_text: str = "",
    max_processes: int = PROCESS_ALLOWANCE,
) -> SandboxResult:
    """Run `source` as a Python program in a fresh sandboxed process.

    Passed means exit status 0. A program killed for its CPU or wall-clock time is 'timeout'; one
    that writes more than OUTPUT_STOP_BYTES fails; one that could not be started is 'error'.
    """
    found = isolation()
    return _result(_execute(source, timeout, memory_mb, stdin_text, found, max_processes), found)


def run_dialogue(
    source: str,
    dialogue: Callable[[Conversation], Any],
    timeout: float = 10.0,
    memory_mb: int = 1024,
    max_processes: int = PROCESS_ALLOWANCE,
) -> tuple[SandboxResult, Any, BaseException | None]:
    """Run `source` in a fresh sandboxed process and hold a dialogue with it while it runs.

    `dialogue(conversation)` runs in the caller's process, in a thread of its own, as soon as the
    program has started; `conversation.ask(line)` writes a line to the program's stdin and returns
    the next line it printed (None once it cannot answer). When the dialogue returns, the program's
    stdin closes. Returns the program's result (its status as `run_program` gives it), what the
    dialogue returned, and the exception it raised (or None).
    """
    found = isolation()
    outcome = _execute(source, timeout, memory_mb, "", found, max_processes, dialogue)
    returned, raised = outcome.dialogue if outcome.dialogue is not None else (None, None)
    return _result(outcome, found), returned, raised


def _result(outcome: _Outcome, found: Isolation) -> SandboxResult:
    out, err = outcome.stdout, outcome.stderr
    if outcome.stopped == "start":
        status = "error"
    elif outcome.stopped == "timeout" or outcome.returncode == -signal.SIGXCPU or (
            found.wrapper and outcome.returncode == 128 + signal.SIGXCPU):  # how bwrap reports the signal
        status = "timeout"
    elif outcome.stopped == "output":
        status = "failed"
        err += f"\nsandbox: output limit exceeded (more than {OUTPUT_STOP_BYTES} bytes)"
    elif outcome.returncode == 0:
        status = "passed"
    else:
        status = "failed"
    return SandboxResult(status, outcome.runtime_s, outcome.returncode, out, err, outcome.cpu_s,
                         found.network, found.process_limit, tuple(found.protections))
