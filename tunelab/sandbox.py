"""Run untrusted (model-written) Python in a separate, resource-limited process.

Never `exec` model output in the evaluating process: everything goes through `run_program`,
which starts a fresh `python -I` per program, in its own session and temporary directory, with
a scrubbed environment and rlimits on CPU time, address space, file size and open files, and:
- a cap on the number of processes (and threads) the program may have at once: a pids cgroup
  where one can be made, else RLIMIT_NPROC (see `_process_limit` for why it cannot be a plain
  RLIMIT_NPROC everywhere);
- where the machine allows unprivileged user namespaces, a fresh user and network namespace:
  the program has no network at all (not even loopback), and inside it runs as a non-root id
  with no capabilities, even when the caller is root;
- a cap on what it may write to stdout and stderr together (past it, it is killed and fails);
- the whole process group (and the whole cgroup) killed on timeout and when it ends.
Pass or fail is decided here from the kernel's exit status (and the harness's secret marker);
its CPU time comes from the kernel too (`wait4`), never from the program. `isolation()` says
which of the above this machine gives; every result records it.

What this promises: a program cannot outlive its timeout, fork-bomb the host (where a process
limit applies: root with no pids cgroup gets none), exhaust the host's memory through one
process's address space, reach the network (where namespaces work), flood
the caller with output, read the caller's environment secrets, or forge a pass by exiting early
or by returning an object that merely claims equality.
What it does not promise: filesystem isolation (the program's files are the caller's user's
files; as root it can still read and write what root owns) or protection against code written
to escape: a program running with the caller's kernel uid can, for instance, move itself out of
its cgroup. Run under nsjail/bubblewrap/a VM for that.

Command line (usable outside the pipeline):
    python -m tunelab.sandbox run PROGRAM.py [--timeout S] [--memory-mb M]
    python -m tunelab.sandbox check --problems P.jsonl --samples S.jsonl [--out R.jsonl]
"""

from __future__ import annotations

import os
import re
import resource
import secrets
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

OUTPUT_LIMIT_BYTES = 1 << 20  # keep at most the last 1 MiB of each stream of a program's output
OUTPUT_STOP_BYTES = 16 << 20  # a program writing more than this to stdout+stderr is killed and fails
PROCESS_ALLOWANCE = 32  # tasks (processes and threads, itself included) one program may have at once
SANDBOX_ID = 1000  # uid/gid of a root caller's program in its user namespace: not 0, so exec drops all capabilities

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

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "runtime_s": round(self.runtime_s, 4),
            "cpu_s": round(self.cpu_s, 4),
            "returncode": self.returncode,
            "network_isolated": self.network_isolated,
            "process_limit": self.process_limit,
            "stdout": self.stdout[-2000:],
            "stderr": self.stderr[-2000:],
        }


@dataclass(frozen=True)
class Isolation:
    """What this machine lets the sandbox apply to every program; found once by `isolation()`."""

    network: bool  # a fresh network namespace (no interfaces up, so no network at all)
    user_namespace: bool  # a fresh user namespace under a non-root id, without capabilities
    process_limit: str  # pids-cgroup | rlimit-namespace | rlimit-user | none
    cgroup_parent: str | None = None  # where each run's pids cgroup is made


# --- confinement steps, run in the child between fork and exec ----------------------------------
# They run after fork in a process whose parent has other threads, so they must not import or take
# locks another thread may have held at fork time: only os/resource calls and prepared values.

def _load_unshare():
    if hasattr(os, "unshare"):  # Python 3.12+
        return os.unshare
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.unshare.argtypes = [ctypes.c_int]
    except (ImportError, OSError, AttributeError):
        return None

    def unshare(flags: int) -> None:
        if libc.unshare(flags) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))

    return unshare


_unshare = _load_unshare()


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class _Plan:
    """Everything the child needs to confine itself, prepared in the parent."""

    timeout: float
    memory_mb: int
    unshare_flags: int = 0
    id_maps: tuple[bytes, bytes] | None = None  # uid_map, gid_map lines for a new user namespace
    cgroup_procs: str | None = None  # the run's cgroup.procs file, to join before exec
    nproc: int | None = None  # RLIMIT_NPROC

    def enter(self) -> None:
        """preexec_fn: join the cgroup (while still privileged to), unshare, then set rlimits."""
        if self.cgroup_procs:
            _write(self.cgroup_procs, str(os.getpid()).encode())
        if self.unshare_flags:
            _unshare(self.unshare_flags)
            if self.id_maps:
                _write("/proc/self/setgroups", b"deny")  # required before an unprivileged gid_map
                _write("/proc/self/uid_map", self.id_maps[0])
                _write("/proc/self/gid_map", self.id_maps[1])
        cpu = max(1, int(self.timeout) + 1)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        memory = self.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_LIMIT_BYTES * 10, OUTPUT_LIMIT_BYTES * 10))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if self.nproc is not None:
            # After unshare: a new user namespace takes the creator's RLIMIT_NPROC at creation as
            # the cap on the user's count outside it, which must stay the caller's own.
            resource.setrlimit(resource.RLIMIT_NPROC, (self.nproc, self.nproc))


def _id_maps() -> tuple[bytes, bytes]:
    """Map the caller's own ids (the only ones an unprivileged process may map) to a non-zero
    id inside, so that exec leaves the program without capabilities even when the caller is root."""
    uid, gid = os.geteuid(), os.getegid()
    return (f"{uid or SANDBOX_ID} {uid} 1".encode(), f"{gid or SANDBOX_ID} {gid} 1".encode())


# --- the process-count limit ---------------------------------------------------------------------

def _pids_cgroup_parent() -> str | None:
    """This process's own cgroup in a hierarchy with the pids controller, if it is writable."""
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
        if fstype == "cgroup" and "pids" in options:
            path = next((p for c, p in membership.items() if "pids" in c.split(",")), None)
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
        if fstype == "cgroup2":  # children get pids.max only where this cgroup hands the controller down
            try:
                with open(os.path.join(directory, "cgroup.subtree_control")) as handle:
                    if "pids" not in handle.read().split():
                        continue
            except OSError:
                continue
        return directory
    return None


def _make_cgroup(parent: str, max_tasks: int) -> str:
    directory = os.path.join(parent, f"tunelab-sandbox-{os.getpid()}-{secrets.token_hex(4)}")
    os.mkdir(directory)
    try:
        _write(os.path.join(directory, "pids.max"), str(max_tasks).encode())
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
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.005)


def _user_task_count(uid: int) -> int:
    """Tasks (threads) whose real uid is `uid`, as far as /proc shows them: what RLIMIT_NPROC counts."""
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
        except OSError:
            continue  # gone, or hidden from us
        if int(fields["Uid"].split()[0]) == uid:
            count += int(fields["Threads"])
    return count


def _process_limit(found: Isolation, max_processes: int) -> tuple[str | None, int | None]:
    """(a pids cgroup for this run, an RLIMIT_NPROC value): how this run's task count is capped.

    A pids cgroup counts exactly this program's tasks whoever runs it, and lets the cleanup find
    tasks that left the process group. Where none can be made, RLIMIT_NPROC is the fallback, with
    two catches. It counts every task of the real uid, so in the caller's own user namespace a
    small value would fail at once for a user already running many processes: there the limit is
    the user's current count (read here, before fork) plus the allowance. In a fresh user namespace
    the kernel counts per namespace, so the allowance alone is exact. And the kernel never applies
    it to kernel uid 0 (root, in any namespace): a root caller without a pids cgroup gets no cap.
    """
    if found.process_limit == "pids-cgroup":
        return _make_cgroup(found.cgroup_parent, max_processes), None
    if found.process_limit == "rlimit-namespace":
        return None, max_processes
    if found.process_limit == "rlimit-user":
        return None, _user_task_count(os.getuid()) + max_processes
    return None, None


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


def _exchange(process: subprocess.Popen, stdin_bytes: bytes, deadline: float) -> tuple[bytes, bytes, str]:
    """Feed stdin, read stdout and stderr until both close; stop early at the deadline ('timeout')
    or when the output passes OUTPUT_STOP_BYTES ('output'). Keeps each stream's last bytes only."""
    buffers = {process.stdout: bytearray(), process.stderr: bytearray()}
    written, total, stopped = 0, 0, ""
    with selectors.DefaultSelector() as selector:
        for stream in buffers:
            selector.register(stream, selectors.EVENT_READ)
        if stdin_bytes:
            selector.register(process.stdin, selectors.EVENT_WRITE)
        else:
            process.stdin.close()
        while selector.get_map() and not stopped:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                stopped = "timeout"
                break
            for key, _ in selector.select(remaining):
                if key.fileobj is process.stdin:
                    try:
                        written += os.write(key.fd, stdin_bytes[written:written + _PIPE_CHUNK])
                    except BrokenPipeError:
                        written = len(stdin_bytes)
                    if written >= len(stdin_bytes):
                        selector.unregister(process.stdin)
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
    for stream in (process.stdin, process.stdout, process.stderr):
        stream.close()
    tail = OUTPUT_LIMIT_BYTES
    return bytes(buffers[process.stdout][-tail:]), bytes(buffers[process.stderr][-tail:]), stopped


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


def _execute(source: str, timeout: float, memory_mb: int, stdin_text: str, found: Isolation,
             max_processes: int) -> _Outcome:
    """Run `source` under `found`'s confinement; no verdict, just what happened."""
    with tempfile.TemporaryDirectory(prefix="tunelab-sandbox-") as workdir:
        program = os.path.join(workdir, "program.py")
        with open(program, "w") as handle:
            handle.write(source)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir,
               "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            cgroup, nproc = _process_limit(found, max_processes)
        except OSError as err:
            return _Outcome(None, "", f"could not start sandbox: {err}", 0.0, 0.0, "start")
        try:
            flags = (_CLONE_NEWUSER if found.user_namespace else 0) | (_CLONE_NEWNET if found.network else 0)
            plan = _Plan(timeout, memory_mb, flags, _id_maps() if found.user_namespace else None,
                         os.path.join(cgroup, "cgroup.procs") if cgroup else None, nproc)
            start = time.monotonic()
            try:
                process = subprocess.Popen(
                    [sys.executable, "-I", "-B", program], bufsize=0,
                    cwd=workdir, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, start_new_session=True, preexec_fn=plan.enter,
                )
            except (OSError, subprocess.SubprocessError) as err:
                return _Outcome(None, "", f"could not start sandbox: {err}", 0.0, 0.0, "start")
            try:
                stdout, stderr, stopped = _exchange(process, stdin_text.encode(), start + timeout)
                if stopped:
                    _kill_group(process.pid)
                returncode, cpu, killed = _reap(process.pid, start + timeout)
                process.returncode = returncode  # reaped here, with wait4; Popen must not wait again
                stopped = stopped or ("timeout" if killed else "")
            finally:
                _kill_group(process.pid, wait_s=2.0)  # whatever the program left behind in its group
            runtime = time.monotonic() - start
        finally:
            if cgroup:
                _remove_cgroup(cgroup)
    return _Outcome(returncode, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace"),
                    runtime, cpu, stopped)


# --- what this machine allows, found once --------------------------------------------------------

_PROBE = ("import os\n"
          "print(os.readlink('/proc/self/ns/net'), os.readlink('/proc/self/ns/user'), os.getuid())\n"
          "print(open('/proc/self/cgroup').read())\n")
_found: Isolation | None = None
_found_lock = threading.Lock()


def _probe(found: Isolation) -> list[str] | None:
    """What the probe program reports about itself under `found`, or None if it could not run so."""
    try:
        outcome = _execute(_PROBE, 10.0, 512, "", found, PROCESS_ALLOWANCE)
    except OSError:
        return None
    return outcome.stdout.split() if outcome.returncode == 0 else None


def _detect() -> Isolation:
    namespaces = Isolation(network=False, user_namespace=False, process_limit="none")
    try:
        own_net, own_user = os.readlink("/proc/self/ns/net"), os.readlink("/proc/self/ns/user")
    except OSError:
        own_net = own_user = None
    if _unshare is not None and own_net:
        # Unprivileged callers need the user namespace to get a network one; root may only have netns.
        for user in (True, False):
            trial = Isolation(network=True, user_namespace=user, process_limit="none")
            seen = _probe(trial)
            if seen and seen[0] != own_net and (not user or (seen[1] != own_user and seen[2] != "0")):
                namespaces = trial
                break
    process_limit, cgroup_parent = "none", _pids_cgroup_parent()
    if cgroup_parent:
        trial = Isolation(namespaces.network, namespaces.user_namespace, "pids-cgroup", cgroup_parent)
        seen = _probe(trial)
        if seen and any("/tunelab-sandbox-" in field for field in seen[3:]):
            process_limit = "pids-cgroup"
    if process_limit == "none" and os.geteuid() != 0:  # the kernel exempts uid 0 from RLIMIT_NPROC
        process_limit = "rlimit-namespace" if namespaces.user_namespace else "rlimit-user"
    return Isolation(namespaces.network, namespaces.user_namespace, process_limit,
                     cgroup_parent if process_limit == "pids-cgroup" else None)


def isolation() -> Isolation:
    """What confinement this machine gives every program (probed on first use, then cached)."""
    global _found
    with _found_lock:
        if _found is None:
            _found = _detect()
        return _found


def network_isolated() -> bool:
    """Whether programs run without any network (a fresh network namespace) on this machine."""
    return isolation().network


def run_program(
    source: str,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    stdin_text: str = "",
    pass_marker: str | None = None,
    max_processes: int = PROCESS_ALLOWANCE,
) -> SandboxResult:
    """Run `source` as a Python program in a fresh sandboxed process.

    Passed means exit status 0 and, when `pass_marker` is given, that marker as the last line of
    stdout (so a program that exits 0 before its tests ran does not pass). A program killed for
    its CPU or wall-clock time is 'timeout'; one that writes more than OUTPUT_STOP_BYTES fails.
    """
    found = isolation()
    outcome = _execute(source, timeout, memory_mb, stdin_text, found, max_processes)
    out, err = outcome.stdout, outcome.stderr
    if outcome.stopped == "start":
        status = "error"
    elif outcome.stopped == "timeout" or outcome.returncode == -signal.SIGXCPU:
        status = "timeout"
    elif outcome.stopped == "output":
        status = "failed"
        err += f"\nsandbox: output limit exceeded (more than {OUTPUT_STOP_BYTES} bytes)"
    elif outcome.returncode == 0:
        lines = out.rstrip("\n").splitlines()
        status = "passed" if pass_marker is None or (lines and lines[-1] == pass_marker) else "failed"
    else:
        status = "failed"
    return SandboxResult(status, outcome.runtime_s, outcome.returncode, out, err, outcome.cpu_s,
                         found.network, found.process_limit)


# The harness wraps the candidate so that what it returns must be built-in data, or instances of
# classes the problem itself defined (LeetCode's ListNode/TreeNode): an object whose __eq__ always
# answers True cannot satisfy `assert candidate(x) == y`. A problem prefix that compiles on its
# own (LeetCodeDataset) runs first; its names are snapshotted and must be untouched by the
# completion, so patching ListNode.__eq__ or a test helper fails the sample.
_HARNESS = '''
import sys as _tunelab_sys
_SCALARS = (int, float, complex, str, bytes, bool, type(None))

def _tunelab_check_value(value, trusted):
    stack, seen = [value], set()
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in _SCALARS:
            continue
        if kind in (list, tuple, set, frozenset):
            stack.extend(item)
        elif kind is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
        elif kind in trusted:
            if id(item) not in seen:
                seen.add(id(item))
                stack.extend(vars(item).values())
        else:
            raise TypeError("candidate returned a %r, which is neither built-in data nor a problem type" % kind.__name__)

def _tunelab_snapshot(namespace):
    names = {k: v for k, v in namespace.items() if not k.startswith("__")}
    classes = {k: dict(vars(v)) for k, v in names.items() if isinstance(v, type)}
    return names, classes

def _tunelab_code_shape(code):
    consts = tuple(_tunelab_code_shape(c) if hasattr(c, "co_code") else c for c in code.co_consts)
    return code.co_code, code.co_names, consts

def _tunelab_same_function(old, new):
    """A restated helper with the same bytecode (positions aside) is not tampering."""
    code_old, code_new = getattr(old, "__code__", None), getattr(new, "__code__", None)
    return (code_old is not None and code_new is not None
            and _tunelab_code_shape(code_old) == _tunelab_code_shape(code_new))

def _tunelab_untouched(namespace, snapshot, entry_name):
    names, classes = snapshot
    for key, value in names.items():
        current = namespace.get(key)
        if key == entry_name or current is value and key not in classes:
            continue
        restated_constant = type(current) is type(value) and type(value) in _SCALARS and current == value
        if current is not value and not restated_constant and not _tunelab_same_function(value, current):
            raise RuntimeError("the completion redefined the problem's %r" % key)
        if key in classes and dict(vars(value)) != classes[key]:
            raise RuntimeError("the completion modified the problem's class %r" % key)

def _tunelab_run(marker, prefix, completion, test, entry_point, calls):
    namespace = {"__name__": "__candidate__"}
    try:
        completion_code = compile(completion, "solution.py", "exec")
        prefix_code = compile(prefix, "problem.py", "exec")
    except SyntaxError:
        completion_code = None  # HumanEval style: the completion finishes the prompt's function
    snapshot, trusted = ({}, {}), set()
    if completion_code is None:
        exec(compile(prefix + completion, "solution.py", "exec"), namespace)
    else:
        exec(prefix_code, namespace)
        snapshot = _tunelab_snapshot(namespace)
        trusted = {v for v in snapshot[0].values() if isinstance(v, type)}
        exec(completion_code, namespace)
    exec(compile(test, "test.py", "exec"), namespace)
    candidate = eval(entry_point, namespace)

    def guarded(*args, **kwargs):
        result = candidate(*args, **kwargs)
        _tunelab_check_value(result, trusted)
        return result

    for _ in range(calls):
        namespace["check"](guarded)
    _tunelab_untouched(namespace, snapshot, entry_point.split('(')[0].split('.')[0])
    _tunelab_sys.stdout.flush()
    _tunelab_sys.stdout.write("\\n" + marker + "\\n")
    _tunelab_sys.stdout.flush()

_tunelab_run(_tunelab_sys.stdin.readline().strip(), @PREFIX@, @COMPLETION@, @TEST@, @ENTRY_POINT@, @CALLS@)
'''


def build_check_program(problem: dict[str, Any], completion: str, check_calls: int = 1) -> str:
    """A program that runs `problem`'s tests against `completion` (HumanEval or LeetCodeDataset),
    calling the tests' `check` `check_calls` times (more than once only to time the solution)."""
    if check_calls < 1:
        raise ValueError(f"check_calls must be at least 1, not {check_calls}")
    values = {"PREFIX": repr(problem["prompt"]), "COMPLETION": repr(completion), "TEST": repr(problem["test"]),
              "ENTRY_POINT": repr(problem["entry_point"]), "CALLS": str(int(check_calls))}
    # One pass, so a completion that contains '@TEST@' is not spliced into.
    return re.sub(r"@(PREFIX|COMPLETION|TEST|ENTRY_POINT|CALLS)@", lambda m: values[m.group(1)], _HARNESS)


def check_completion(problem: dict[str, Any], completion: str, timeout: float, memory_mb: int,
                     check_calls: int = 1) -> dict:
    """One verdict row: task_id, passed, status, runtime_s (wall), cpu_s (kernel), network_isolated, error."""
    # The marker travels on stdin and is never in the program text, so the solution cannot print
    # it without reading the harness's own frame.
    marker = "TUNELAB-PASS-" + secrets.token_hex(16)
    result = run_program(build_check_program(problem, completion, check_calls), timeout, memory_mb,
                         stdin_text=marker + "\n", pass_marker=marker)
    return {
        "task_id": problem["task_id"],
        "passed": result.status == "passed",
        "status": result.status,
        "runtime_s": round(result.runtime_s, 4),
        "cpu_s": round(result.cpu_s, 4),
        "network_isolated": result.network_isolated,
        "error": result.stderr.strip().splitlines()[-1] if result.status != "passed" and result.stderr.strip() else "",
    }


def check_samples(
    problems: dict[str, dict[str, Any]],
    samples: list[dict[str, Any]],
    timeout: float = 10.0,
    memory_mb: int = 1024,
    workers: int = 2,
) -> list[dict[str, Any]]:
    """Verdict rows in sample order; each sample is {'task_id', 'completion'}."""
    for sample in samples:
        if sample.get("task_id") not in problems:
            raise ValueError(f"sample names unknown task_id {sample.get('task_id')!r}")

    def one(sample: dict[str, Any]) -> dict[str, Any]:
        return check_completion(problems[sample["task_id"]], sample["completion"], timeout, memory_mb)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, samples))


def pass_at_1(verdicts: list[dict[str, Any]]) -> float:
    """Mean over tasks of the fraction of that task's samples that passed."""
    by_task: dict[str, list[bool]] = {}
    for verdict in verdicts:
        by_task.setdefault(verdict["task_id"], []).append(verdict["passed"])
    if not by_task:
        return 0.0
    return sum(sum(v) / len(v) for v in by_task.values()) / len(by_task)


def load_problems(path: str) -> dict[str, dict[str, Any]]:
    """Problems keyed by task_id, from a HumanEval-format or LeetCodeDataset-format JSONL(.gz)."""
    import gzip
    import json

    opener = gzip.open if str(path).endswith(".gz") else open
    problems = {}
    with opener(path, "rt") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = [k for k in ("task_id", "prompt", "entry_point", "test") if k not in row]
            if missing:
                raise ValueError(f"{path}:{number}: problem lacks {', '.join(missing)}")
            problems[row["task_id"]] = row
    if not problems:
        raise ValueError(f"{path} holds no problems")
    return problems


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m tunelab.sandbox", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one program; print a JSON verdict")
    run.add_argument("program")
    check = commands.add_parser("check", help="check completions against problems")
    check.add_argument("--problems", required=True)
    check.add_argument("--samples", required=True)
    check.add_argument("--out")
    check.add_argument("--workers", type=int, default=2)
    for sub in (run, check):
        sub.add_argument("--timeout", type=float, default=10.0)
        sub.add_argument("--memory-mb", type=int, default=1024)
    args = parser.parse_args(argv)

    if args.command == "run":
        with open(args.program) as handle:
            result = run_program(handle.read(), args.timeout, args.memory_mb)
        print(json.dumps(result.as_dict()))
        return 0

    problems = load_problems(args.problems)
    with open(args.samples) as handle:
        samples = [json.loads(line) for line in handle if line.strip()]
    verdicts = check_samples(problems, samples, args.timeout, args.memory_mb, args.workers)
    if args.out:
        with open(args.out, "w") as handle:
            handle.writelines(json.dumps(v) + "\n" for v in verdicts)
    else:
        for verdict in verdicts:
            print(json.dumps(verdict))
    summary = {"pass@1": pass_at_1(verdicts), "samples": len(verdicts),
               "tasks": len({v["task_id"] for v in verdicts})}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
