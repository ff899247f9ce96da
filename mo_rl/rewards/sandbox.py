"""Run untrusted, model-generated Python in a throw-away sandbox and report why it stopped.

Sessions and CI run as root, and root ignores RLIMIT_NPROC, so plain resource limits do not stop a fork bomb. Each
call therefore starts a small root *launcher* (this file, run as a script) that:

1. enters fresh network, mount and PID namespaces where the kernel allows it (recorded in ``namespaces``): no
   network interface but a downed loopback; a root of its own (``root``): an empty tmpfs holding read-only binds
   of ``/usr`` (and the interpreter's prefix), ``/dev/{null,zero,random,urandom}``, a size-capped tmpfs
   ``/work`` and the namespace's own ``/proc``: none of the host's files, so none of its UNIX sockets (``/run``,
   ``/tmp``, ``/dev/log``), which no network namespace isolates; a small root init as PID 1 of the namespace, so
   when the code exits the kernel kills every process it left behind; the init chroots there, the launcher keeps
   the host's view (its kill-by-uid sweep reads the host's ``/proc``);
2. forks the code's process, which sets CPU, address-space, file-size, open-file, process-count and core limits,
   drops to a fresh unprivileged uid/gid (one per call: concurrent sandboxes neither share RLIMIT_NPROC nor signal
   each other) and execs ``python -I -S`` on the code with an audit hook that refuses socket connects;
3. is the child's subreaper: it reaps everything, kills what is left by uid on exit, timeout or an output overrun.
Its configuration comes on stdin, so no command line (``/proc/1/cmdline`` included) shows it.

The parent reads stdout/stderr with a byte cap and keeps a hard deadline of its own in case the launcher hangs.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
UID_BASE, UID_SPAN = 1_900_000_000, 1_000_000  # far above real accounts and the usual subuid ranges
ROOT_DIRS = ("/usr", "/bin", "/lib", "/lib64", "/sbin")  # bound read-only (a symlink, e.g. /bin -> usr/bin, copied)
DEVICES = ("null", "zero", "random", "urandom")

# Runs inside the sandboxed interpreter. The audit hook is a second wall behind the network namespace: a hook
# cannot be removed from Python code, so a connect fails even where the kernel refused us a namespace.
PRELUDE = """
import sys
def _deny(event, args, _blocked=frozenset(("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
                                            "socket.getaddrinfo", "socket.gethostbyname"))):
    if event in _blocked:
        raise PermissionError("network access is disabled in the sandbox")
sys.addaudithook(_deny)
del _deny
exec(compile(open("main.py", encoding="utf-8").read(), "main.py", "exec"), {"__name__": "__main__",
                                                                           "__builtins__": __builtins__})
"""


@dataclass
class SandboxResult:
    """What one sandboxed run did.

    ``reason``: ``ok`` (exit 0), ``error`` (non-zero exit, e.g. an exception or a failed assert), ``timeout``
    (wall clock), ``cpu`` (RLIMIT_CPU), ``memory`` (MemoryError under RLIMIT_AS), ``output_limit`` (more than
    ``output_bytes`` of stdout+stderr), ``killed`` (another signal), ``setup`` (the sandbox itself failed).
    ``returncode`` is the exit code, minus the signal number, or None when the code was stopped (timeout, output)
    before it ended; ``stderr`` keeps the tail, where tracebacks end. ``namespaces``: those the kernel granted.
    """

    ok: bool
    returncode: int | None
    stdout: str
    stderr: str
    reason: str
    elapsed_s: float
    namespaces: tuple[str, ...] = field(default_factory=tuple)


def run_python(code: str, *, timeout_s: float = 2.0, memory_mb: int = 256, output_bytes: int = 64_000,
               cpu_s: float | None = None, file_bytes: int = 1_000_000, nproc: int = 32,
               stderr_chars: int = 4_000, python: str | None = None) -> SandboxResult:
    """Run ``code`` (a Python program) in the sandbox and return what happened; never raises for bad code.

    ``python``: the interpreter the unprivileged child runs (default: the first one ``sandbox_python`` finds).
    """
    import shutil
    import tempfile

    python = python or sandbox_python()
    t0 = time.monotonic()
    uid = _pick_uid()
    base = tempfile.mkdtemp(prefix="morl-sbx-")
    try:
        os.chmod(base, 0o711)  # the child may pass through, never list or read the code/status files
        work = os.path.join(base, "work")
        os.mkdir(work, 0o700)
        if os.geteuid() == 0:
            os.chown(work, uid, uid)
        cfg = {"base": base, "work": work, "root": os.path.join(base, "root"), "uid": uid, "python": python,
               "code": code, "timeout_s": timeout_s, "memory_mb": memory_mb, "file_bytes": file_bytes,
               "cpu_s": cpu_s if cpu_s is not None else int(timeout_s) + 1, "nproc": nproc}
        out, err, over, hard_timeout = _supervise(cfg, output_bytes, timeout_s + 3.0)
        try:
            with open(os.path.join(base, "status.json"), encoding="utf-8") as f:
                status = json.load(f)
        except (OSError, ValueError):  # the launcher died before writing it
            status = {}
    finally:
        kill_uid(uid)
        shutil.rmtree(base, ignore_errors=True)
    return _result(status, out, err, over, hard_timeout, stderr_chars, time.monotonic() - t0)


def _result(status, out, err, over, hard_timeout, stderr_chars, elapsed) -> SandboxResult:
    """Turn the launcher's status and the captured streams into a SandboxResult."""
    stdout, stderr = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")[-stderr_chars:]
    wait = status.get("wait")
    code = None if wait is None else os.waitstatus_to_exitcode(wait)
    if over:
        reason = "output_limit"
    elif hard_timeout or status.get("stopped") == "timeout":
        reason = "timeout"
    elif wait is None:
        reason = "setup"
    elif code == 0:
        reason = "ok"
    elif code == 127 and "sandbox setup failed" in stderr:
        reason = "setup"
    elif code > 0:
        reason = "memory" if "MemoryError" in stderr else "error"
    else:
        reason = "cpu" if -code in (signal.SIGXCPU, signal.SIGKILL) and status.get("cpu_hit") else "killed"
    return SandboxResult(ok=reason == "ok", returncode=code, stdout=stdout, stderr=stderr, reason=reason,
                         elapsed_s=elapsed, namespaces=tuple(status.get("namespaces", ())))


def _supervise(cfg: dict, output_bytes: int, hard_deadline_s: float):
    """Start the launcher, read its output under the cap; returns (stdout, stderr, over_cap, hard_timeout)."""
    import selectors
    import subprocess

    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "HOME": cfg["work"]}
    proc = subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(__file__)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cfg["work"], env=env,
                            start_new_session=True)
    with proc.stdin:  # the launcher reads it all before it writes anything
        proc.stdin.write(json.dumps(cfg).encode())
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    bufs = {out_fd: bytearray(), err_fd: bytearray()}
    sel = selectors.DefaultSelector()
    for stream in (proc.stdout, proc.stderr):
        os.set_blocking(stream.fileno(), False)
        sel.register(stream.fileno(), selectors.EVENT_READ)
    deadline, over, hard_timeout, total = time.monotonic() + hard_deadline_s, False, False, 0
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                hard_timeout = True
                break
            for key, _ in sel.select(timeout=min(left, 0.5)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                room = output_bytes - total
                bufs[key.fd] += chunk[:max(room, 0)]
                total += len(chunk)
                if total > output_bytes and not over:
                    over = True  # the launcher kills the code and reports; we keep draining to EOF
                    _signal(proc.pid, signal.SIGUSR1)
    finally:
        sel.close()
        if hard_timeout:
            _killpg(proc.pid)
        try:
            proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            _killpg(proc.pid)
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    return bytes(bufs[out_fd]), bytes(bufs[err_fd]), over, hard_timeout


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _killpg(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _pick_uid() -> int:
    """A uid no live process has, so RLIMIT_NPROC and the final kill-by-uid concern this call alone."""
    import random

    if os.geteuid() != 0:
        return os.geteuid()
    for _ in range(100):
        uid = UID_BASE + random.randrange(UID_SPAN)
        if not pids_of_uid(uid):
            return uid
    raise RuntimeError("no free sandbox uid found")


def pids_of_uid(uid: int, end: int | None = None, *, zombies: bool = True) -> list[int]:
    """Pids whose real uid is ``uid`` (or in ``[uid, end)`` when ``end`` is given), zombies optionally."""
    end = uid + 1 if end is None else end
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                fields = dict(ln.split(b":", 1) for ln in f if ln.startswith((b"State:", b"Uid:")))
        except (OSError, ValueError):
            continue  # the process ended while we looked
        if len(fields) == 2 and uid <= int(fields[b"Uid"].split()[0]) < end \
                and (zombies or not fields[b"State"].strip().startswith(b"Z")):
            found.append(int(name))
    return found


def sandbox_pids() -> list[int]:
    """Every process (zombies included) owned by a sandbox uid: empty when no sandbox is running."""
    return pids_of_uid(UID_BASE, UID_BASE + UID_SPAN)


def kill_uid(uid: int, rounds: int = 50) -> None:
    """SIGKILL every process of ``uid`` until none is left (a running fork bomb needs a few rounds)."""
    if uid == 0 or uid == os.geteuid():
        return  # never sweep root or ourselves (the non-root fallback runs code as the caller's uid)
    for _ in range(rounds):
        pids = pids_of_uid(uid, zombies=False)  # a zombie is already dead; its parent reaps it
        if not pids:
            return
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        time.sleep(0.01)


_PYTHON: list[str] = []
_PYTHON_LOCK = threading.Lock()


def sandbox_python() -> str:
    """An interpreter the unprivileged child can execute (ours may sit under an unreadable /root)."""
    with _PYTHON_LOCK:  # reward threads start together; probe once
        if not _PYTHON:
            _PYTHON.append(_probe_python())
        return _PYTHON[0]


def _probe_python() -> str:
    import shutil

    from mo_rl.errors import MoRLError

    override = os.environ.get("MORL_SANDBOX_PYTHON")
    candidates = [override] if override else [sys.executable, "/usr/bin/python3", "/usr/local/bin/python3",
                                              shutil.which("python3") or ""]
    tried = []
    for exe in dict.fromkeys(c for c in candidates if c):
        if run_python("print(6 * 7)", timeout_s=10.0, python=exe).stdout.strip() == "42":
            return exe
        tried.append(exe)
    raise MoRLError(f"no Python interpreter runs as the unprivileged sandbox user; tried: {', '.join(tried)} "
                    "(set MORL_SANDBOX_PYTHON to a world-readable python3)")


# ----------------------------------------------------------------------------------------------------------------
# The launcher: everything below runs in a separate root process started by _supervise (``python -I -S this_file``).

def _enter_namespaces(libc, cfg: dict) -> list[str]:
    """Unshare what the kernel allows; build the code's root there (else it runs in ``work``, in the host's view)."""
    got = []
    flags = [(CLONE_NEWNET, "net"), (CLONE_NEWNS, "mount"), (CLONE_NEWPID, "pid")]
    if os.geteuid() != 0:
        flags = [(CLONE_NEWUSER | CLONE_NEWNET, "net")]  # unprivileged: a user namespace makes the net one legal
    for flag, name in flags:
        if libc.unshare(flag) == 0:
            got.append(name)
    if "mount" in got:
        libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None)  # keep our mounts out of the host's view
        try:
            _build_root(libc, cfg)
        except OSError:
            got.remove("mount")
    if "mount" not in got:
        cfg["root"] = None
    os.chdir(os.path.join(cfg["root"], "work") if cfg["root"] else cfg["work"])
    return got


def _build_root(libc, cfg: dict) -> None:
    """The code's root (module docstring), under ``cfg["root"]`` in our private mount namespace. OSError if a
    mount fails."""
    root = cfg["root"]

    def mount(src, dst, fstype, flags, opts=None):
        if libc.mount(src and src.encode(), dst.encode(), fstype, flags, opts) != 0:
            raise OSError(ctypes.get_errno(), f"mount {dst}")

    def bind(src, dst, flags=MS_RDONLY):
        mount(src, dst, None, MS_BIND)
        mount(None, dst, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | flags)

    os.mkdir(root, 0o755)
    mount("tmpfs", root, b"tmpfs", MS_NOSUID | MS_NODEV, b"size=1m,mode=755")
    prefix = os.path.dirname(os.path.dirname(os.path.realpath(cfg["python"])))
    for d in dict.fromkeys((*ROOT_DIRS, prefix)):
        if os.path.islink(d) and os.path.dirname(d) == "/":
            os.symlink(os.readlink(d), root + d)
        elif os.path.isdir(d) and not os.path.exists(root + d):
            os.makedirs(root + d)
            bind(d, root + d)
    for d in ("/dev", "/proc", "/work"):
        os.mkdir(root + d)
    for name in DEVICES:
        open(f"{root}/dev/{name}", "w").close()
        bind(f"/dev/{name}", f"{root}/dev/{name}", 0)
    mount("tmpfs", root + "/work", b"tmpfs", MS_NOSUID | MS_NODEV,
          f"size=16m,mode=700,uid={cfg['uid']},gid={cfg['uid']}".encode())


def _exec_child(libc, cfg: dict) -> None:
    """In the forked child: limits, drop privileges, exec the interpreter. Never returns."""
    try:
        import resource  # noqa: F401 - already imported by _launch, before any chroot (see there)

        if cfg["root"]:  # no PID namespace, so no init entered it
            os.chroot(cfg["root"])
            os.chdir("/work")
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        mem = cfg["memory_mb"] * 1024 * 1024
        cpu = max(1, int(cfg["cpu_s"]))
        limits = [(resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_AS, mem, mem),
                  (resource.RLIMIT_FSIZE, cfg["file_bytes"], cfg["file_bytes"]), (resource.RLIMIT_NOFILE, 64, 64),
                  (resource.RLIMIT_NPROC, cfg["nproc"], cfg["nproc"]), (resource.RLIMIT_CORE, 0, 0)]
        for res, soft, hard in limits:
            resource.setrlimit(res, (soft, hard))
        if os.geteuid() == 0:  # hard == soft above, so the unprivileged code cannot raise any limit back
            uid = cfg["uid"]
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after setuid, which clears it
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "HOME": "."}
        os.execve(cfg["python"], [cfg["python"], "-I", "-S", "-c", PRELUDE], env)
    except BaseException as e:  # noqa: BLE001 - report any setup failure and leave; the parent maps it to "setup"
        os.write(2, f"sandbox setup failed: {type(e).__name__}: {e}\n".encode())
    os._exit(127)


def _ns_init(libc, cfg: dict, report: int) -> None:
    """PID 1 of the new namespace: run the code as its child (the kernel shields an init from signals, RLIMIT_CPU's
    SIGXCPU included), reap every orphan, and hand the code's raw wait status to the launcher through a pipe."""
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    proc = 0
    if cfg["root"]:  # a /proc of this PID namespace (1), or where the kernel refuses an empty directory (2), then in
        proc = 2 - (libc.mount(b"proc", f"{cfg['root']}/proc".encode(), b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                               None) == 0)
        os.chroot(cfg["root"])
        os.chdir("/work")
        cfg["root"] = None  # entered: the code's process inherits it
    code_pid = os.fork()
    if code_pid == 0:
        _exec_child(libc, cfg)
    while True:
        pid, st = os.wait()
        if pid == code_pid:
            os.write(report, st.to_bytes(4, "little") + bytes([proc]))
            os._exit(0)  # the kernel now kills whatever the code left in the namespace


def _launch(cfg: dict) -> None:
    """Launcher main: namespaces, fork the child, reap everything, write status.json."""
    import resource  # noqa: F401 - now: after the chroot only the child interpreter's prefix is there, not ours

    # the interpreter itself, not a venv's bin/python symlink: the root binds only the real binary's prefix (a
    # venv's packages are not wanted: -I -S runs no site), so a venv's own path is not there after the chroot
    cfg["python"] = os.path.realpath(cfg["python"])
    state = {"child": 0, "stopped": None}

    def stop(signum, _frame):  # installed first: the parent may ask us to stop at any moment
        state["stopped"] = state["stopped"] or ("timeout" if signum == signal.SIGALRM else "output_limit")
        if state["child"] > 0:  # only while unreaped: a reaped pid may already belong to someone else
            _signal(state["child"], signal.SIGKILL)
        kill_uid(cfg["uid"])

    signal.signal(signal.SIGALRM, stop)
    signal.signal(signal.SIGUSR1, stop)
    signal.setitimer(signal.ITIMER_REAL, cfg["timeout_s"])
    libc = ctypes.CDLL(None, use_errno=True)
    status = open(os.path.join(cfg["base"], "status.json"), "w", encoding="utf-8")  # in the host's view
    namespaces = _enter_namespaces(libc, cfg)
    with open("main.py", "w", encoding="utf-8") as f:
        f.write(cfg.pop("code"))
    if os.geteuid() == 0:
        os.chown("main.py", cfg["uid"], cfg["uid"])
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans come back to us, not to an init that may not reap
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        os.close(report_r)
        _ns_init(libc, cfg, report_w) if "pid" in namespaces else _exec_child(libc, cfg)
    os.close(report_w)
    state["child"] = pid
    wait, usage = None, None
    while True:
        try:
            pid, st, ru = os.wait3(0)
        except ChildProcessError:
            break
        if pid == state["child"]:
            state["child"] = 0
            signal.setitimer(signal.ITIMER_REAL, 0)
            wait, usage = st, ru  # ru counts the code too: the init reaped it
            kill_uid(cfg["uid"])  # without a PID namespace, the code's leftovers die here
    if "pid" in namespaces:
        raw = os.read(report_r, 5)
        wait = int.from_bytes(raw[:4], "little") if len(raw) == 5 else None
        if len(raw) == 5 and raw[4]:
            namespaces.append("proc" if raw[4] == 1 else "proc-hidden")
    cpu_hit = usage is not None and usage.ru_utime + usage.ru_stime >= max(1, int(cfg["cpu_s"])) - 0.05
    json.dump({"wait": wait, "stopped": state["stopped"], "namespaces": namespaces, "cpu_hit": cpu_hit}, status)
    status.close()


if __name__ == "__main__":
    _launch(json.loads(sys.stdin.read()))
