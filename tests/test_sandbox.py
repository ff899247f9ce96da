"""The sandbox stops what it must and says why: loops, fork bombs, memory, output floods, writes, network.

Every test checks afterwards that no process of any sandbox uid is left (zombies included).
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import time

import pytest

from mo_rl.rewards.sandbox import run_python, sandbox_pids

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox needs Linux")


@pytest.fixture(autouse=True)
def no_stray_processes():
    yield
    deadline = time.monotonic() + 2.0
    while sandbox_pids() and time.monotonic() < deadline:  # the kernel may take a moment to tear a namespace down
        time.sleep(0.05)
    assert sandbox_pids() == []


@pytest.mark.timeout(30)
def test_normal_program_prints_the_answer_unprivileged():
    res = run_python("import os\nprint(sum(range(10)), os.getuid() != 0, os.getgid() != 0, os.getgroups())")
    assert (res.reason, res.ok, res.returncode) == ("ok", True, 0)
    assert res.stdout == "45 True True []\n"


@pytest.mark.timeout(30)
def test_exception_is_an_error_with_its_traceback():
    res = run_python("raise ValueError('boom')")
    assert (res.reason, res.ok, res.returncode) == ("error", False, 1)
    assert "ValueError: boom" in res.stderr


@pytest.mark.timeout(30)
def test_infinite_loop_times_out():
    res = run_python("while True:\n    pass", timeout_s=1.0)
    assert res.reason == "timeout" and not res.ok
    assert res.elapsed_s < 5.0


# A bomb that stops by itself even in a broken sandbox: every process forks at most LEVELS times, so at most
# 2**LEVELS - 1 children in all, and each lives ~0.3 s. Any process whose fork fails prints why and the failure
# propagates up to the root's exit code (3).
LEVELS = 11
BOMB = f"""
import os, time
failed, children = False, []
for level in range({LEVELS}):
    try:
        pid = os.fork()
    except OSError as e:
        print(f"FORK_FAILED errno={{e.errno}}", flush=True)
        failed = True
        break
    if pid == 0:
        print("CHILD", flush=True)
        children = []
    else:
        children.append(pid)
time.sleep(0.3)
for c in children:
    _, st = os.waitpid(c, 0)
    failed = failed or os.waitstatus_to_exitcode(st) != 0
os._exit(3 if failed else 0)
"""


@pytest.mark.timeout(60)
def test_fork_bomb_is_stopped_by_the_process_limit_not_its_bound():
    res = run_python(BOMB, timeout_s=10.0, nproc=16)
    children = res.stdout.count("CHILD")
    assert res.reason == "error" and res.returncode == 3, res
    assert "FORK_FAILED errno=11" in res.stdout  # EAGAIN: RLIMIT_NPROC refused the fork
    assert children <= 16 < 2 ** LEVELS - 1  # the limit stopped it, long before the bomb's own bound


@pytest.mark.timeout(30)
def test_one_gigabyte_allocation_hits_the_memory_limit():
    res = run_python("x = bytearray(1024 ** 3)\nprint('allocated')", memory_mb=256)
    assert res.reason == "memory" and not res.ok
    assert "MemoryError" in res.stderr and "allocated" not in res.stdout


@pytest.mark.timeout(30)
def test_hundred_megabytes_of_output_hit_the_output_limit():
    code = "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(100):\n    sys.stdout.write(chunk)\nprint('done')"
    res = run_python(code, output_bytes=64_000, timeout_s=10.0)
    assert res.reason == "output_limit" and not res.ok
    assert len(res.stdout) <= 64_000 and "done" not in res.stdout
    assert res.elapsed_s < 5.0  # killed on the overrun, not at the timeout


@pytest.mark.timeout(30)
def test_writes_outside_the_private_directory_fail():
    name = f"morl-sandbox-probe-{secrets.token_hex(6)}"
    targets = [f"/etc/{name}", f"/root/{name}", f"/tmp/{name}", f"/var/tmp/{name}", f"/dev/shm/{name}"]
    code = "import os\n" + "".join(
        f"try:\n    open({t!r}, 'w').write('x')\n    print('WROTE', {t!r})\n"
        f"except OSError as e:\n    print('DENIED', {t!r}, e.errno)\n" for t in targets)
    code += "open('inside.txt', 'w').write('ok')\nprint('INSIDE', open('inside.txt').read())\n"
    res = run_python(code)
    assert res.reason == "ok", res
    assert "WROTE" not in res.stdout
    assert res.stdout.count("DENIED") == len(targets) and "INSIDE ok" in res.stdout
    for t in targets:
        assert not os.path.exists(t)


@pytest.mark.timeout(30)
def test_socket_connect_to_localhost_fails():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        srv.settimeout(0.2)
        port = srv.getsockname()[1]
        code = ("import socket\ns = socket.socket()\ns.settimeout(1)\n"
                f"try:\n    s.connect(('127.0.0.1', {port}))\n    print('CONNECTED')\n"
                "except OSError as e:\n    print('FAILED', type(e).__name__)\n")
        res = run_python(code)
        assert res.reason == "ok" and res.stdout.startswith("FAILED"), res
        with pytest.raises(OSError):  # socket.timeout: nobody knocked
            srv.accept()


# Straight to libc through ctypes, past the audit hook: only the network namespace stands in the way.
RAW_CONNECT = """
import ctypes, struct, socket
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
addr = struct.pack("!HH4s8x", socket.AF_INET, {port}, bytes([127, 0, 0, 1]))
addr = struct.pack("=H", socket.AF_INET) + addr[2:]
rc = libc.connect(fd, ctypes.c_char_p(addr), len(addr))
print("RC", rc, ctypes.get_errno())
"""


@pytest.mark.timeout(30)
def test_raw_connect_past_the_audit_hook_fails_in_the_network_namespace():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        res = run_python(RAW_CONNECT.format(port=srv.getsockname()[1]))
    if "net" not in res.namespaces:
        pytest.skip("the kernel refused a network namespace here; only the audit hook blocks sockets")
    assert res.reason == "ok", res
    rc, errno = res.stdout.split()[1:]
    assert rc == "-1" and int(errno) == 101  # ENETUNREACH: the namespace has no usable interface


@pytest.mark.slow
@pytest.mark.timeout(30)
def test_cpu_limit_stops_a_busy_loop():
    res = run_python("while True:\n    pass", timeout_s=10.0, cpu_s=1)
    assert res.reason == "cpu" and res.elapsed_s < 5.0


@pytest.mark.timeout(30)
def test_proc_shows_only_the_sandboxs_own_processes():
    """A fresh /proc of the sandbox's PID namespace: the host's processes (and their command lines) are not there."""
    import json

    host = [p for p in os.listdir("/proc") if p.isdigit()]
    res = run_python("import json, os\n"
                     "pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
                     "print(json.dumps([pids, os.getpid(), os.getppid()]))")
    assert res.ok, res.stderr
    if "pid" not in res.namespaces:
        pytest.skip("the kernel granted no PID namespace")
    assert "proc" in res.namespaces and len(host) > 3
    assert json.loads(res.stdout) == [[1, 2], 2, 1]  # its init and itself, nothing of the host's


# Issue 29.8: a filesystem socket on the host (munge, dbus, /dev/log on a cluster node) was reachable with ctypes
# past the audit hook (a network namespace does not isolate filesystem sockets), and /proc/1/cmdline showed the
# launcher's JSON configuration.
RAW_UNIX_CONNECT = """
import ctypes, socket
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0)
path = {path!r}.encode()
addr = socket.AF_UNIX.to_bytes(2, "little") + path + bytes(108 - len(path))
print("RC", libc.connect(fd, ctypes.c_char_p(addr), len(addr)), ctypes.get_errno())
"""


@pytest.mark.timeout(30)
def test_a_host_unix_socket_is_not_reachable_with_a_raw_connect(tmp_path):
    import errno

    os.chmod(tmp_path, 0o777)  # open to anyone on the host: only the sandbox's own filesystem view stands in the way
    path = str(tmp_path / "host.sock")
    with socket.socket(socket.AF_UNIX) as srv:
        srv.bind(path)
        os.chmod(path, 0o777)
        srv.listen()
        srv.settimeout(0.2)
        res = run_python(RAW_UNIX_CONNECT.format(path=path))
        if "mount" not in res.namespaces:
            pytest.skip("the kernel refused a mount namespace here")
        assert res.reason == "ok", res
        assert res.stdout.split() == ["RC", "-1", str(errno.ENOENT)]  # no such file in the sandbox's root
        with pytest.raises(OSError):  # socket.timeout: nobody connected
            srv.accept()


@pytest.mark.timeout(30)
def test_the_sandbox_sees_its_own_root_and_no_configuration_in_proc():
    import json

    from mo_rl.rewards.sandbox import sandbox_python

    res = run_python("import json, os\nprint(json.dumps([sorted(os.listdir('/')), os.getcwd(), os.listdir('/dev'), "
                     "[os.path.exists(p) for p in ('/run', '/tmp', '/etc', '/var', '/home')], "
                     "open('/proc/1/cmdline').read()]))")
    if "mount" not in res.namespaces or "proc" not in res.namespaces:
        pytest.skip("the kernel refused a mount or PID namespace here")
    assert res.ok, res.stderr
    root, cwd, dev, host_dirs, cmdline = json.loads(res.stdout)
    prefix = os.path.realpath(sandbox_python()).split("/")[1]  # the interpreter's prefix, /usr or elsewhere
    assert {"usr", "dev", "proc", "work"} <= set(root) <= {"usr", "bin", "lib", "lib64", "sbin", "dev", "proc",
                                                            "work", prefix}
    assert (cwd, sorted(dev), host_dirs) == ("/work", ["null", "random", "urandom", "zero"], [False] * 5)
    assert cmdline.split("\0")[-2].endswith("sandbox.py") and "{" not in cmdline and "timeout_s" not in cmdline


@pytest.mark.timeout(120)
def test_a_venvs_interpreter_runs_in_the_sandbox(tmp_path):
    """A venv's bin/python is a symlink outside the sandbox's root: the launcher execs the real binary (a fresh
    venv's interpreter failed with 'No such file or directory' before, so the code task failed in any venv)."""
    import subprocess
    import venv

    venv.create(tmp_path / "venv", with_pip=False, symlinks=True)
    exe = tmp_path / "venv" / "bin" / "python"
    assert subprocess.run([str(exe), "-c", "print(1)"], capture_output=True).returncode == 0
    res = run_python("print(6 * 7)",
                     python=str(exe), timeout_s=10.0)
    assert (res.reason, res.stdout) == ("ok", "42\n"), res


@pytest.mark.timeout(60)
@pytest.mark.skipif(not os.path.isfile("/usr/bin/python3")
                    or os.path.realpath("/usr/bin/python3") == os.path.realpath(sys.executable),
                    reason="needs a /usr/bin/python3 other than the interpreter running the tests")
def test_an_interpreter_with_another_prefix_than_ours_runs(tmp_path):
    """The launcher (our interpreter) imports what it needs before the chroot, where only the child's prefix is
    bound: with /usr/bin/python3 as the child it failed 'No module named resource' before."""
    res = run_python("print(6 * 7)", python="/usr/bin/python3", timeout_s=10.0)
    assert (res.reason, res.stdout) == ("ok", "42\n"), res
