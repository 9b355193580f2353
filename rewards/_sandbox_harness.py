"""The in-sandbox half of `dare.rewards.sandbox` (standard library only; run as a script).

    python -I -B _sandbox_harness.py CONFIG.json

With `namespaces` set, this process is pid 1 of fresh pid + mount + network namespaces made by
`unshare` (plus a user namespace when the caller is not root). It then

1. reads the program and its tests from CONFIG (before /tmp, where CONFIG lives, is hidden);
2. remounts every mount read-only and mounts empty private tmpfs on /tmp, /var/tmp and /dev/shm
   (the working directory is the fresh /tmp), so writes land nowhere visible outside;
3. forks the program's process, which sets the resource limits (CPU, address space, file size,
   open files, process count), switches to the unprivileged `uid` of the config (when started
   as root), drops its capabilities and sets no_new_privs, then runs the code;
4. reaps processes until the program's process exits or the wall-clock deadline passes, then
   exits: pid 1 leaving tears down the pid namespace, killing every process the program left.

Without `namespaces` (fallback) steps 2 and the capability drop are skipped, the working
directory is a fresh temporary folder, and the deadline kills this process group instead.

Modes: `stdio` runs the program as `__main__` (stdin/stdout are the test's); `assert` runs the
program, then each test snippet in its namespace, and reports `<nonce> <i> <0|1>` per test on a
private duplicate of stdout; `probe` only checks that the isolation steps work.
"""

import ctypes
import json
import os
import resource
import signal
import sys
import time
import traceback

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 32, 1024, 2048, 4096
MS_RELATIME, MS_STRICTATIME = 1 << 21, 1 << 24
_FLAGS = {
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
    "strictatime": MS_STRICTATIME,
}
PR_SET_KEEPCAPS, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 8, 24, 38
CAP_DAC_READ_SEARCH = 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = None


def libc():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(rc, what):
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source, target, fstype, flags, data):
    enc = lambda s: None if s is None else s.encode()
    _check(libc().mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def mount_points():
    """(mount point, per-mount flags) of every mount, parents before children."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            target = parts[4].encode().decode("unicode_escape")  # \040 for spaces
            flags = 0
            for opt in parts[5].split(","):
                flags |= _FLAGS.get(opt, 0)
            points.append((target, flags))
    return sorted(points, key=lambda p: p[0].count("/") if p[0] != "/" else 0)


def isolate_filesystem(tmpfs_mb):
    """Every mount read-only, then private empty tmpfs on the usual writable places."""
    failed = []
    for target, flags in mount_points():
        try:
            mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags, None)
        except OSError as e:
            failed.append(f"{target}: {e.strerror}")
    if any(f.startswith("/: ") for f in failed):
        raise OSError(f"cannot make / read-only: {failed}")
    for target in ("/tmp", "/var/tmp", "/dev/shm"):
        if os.path.isdir(target):
            mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmpfs_mb}m,mode=1777")
    os.chdir("/tmp")
    return failed


def drop_capabilities(keep=0):
    """No capability left but the bitmask `keep` (bounding set emptied, inheritable cleared,
    no_new_privs set): mounts stay read-only and limits cannot be raised."""
    _check(libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except OSError:
        last = 40
    for cap in range(last + 1):
        libc().prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # EINVAL for caps this kernel lacks: fine

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header = Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (Data * 2)()
    data[0].effective = data[0].permitted = keep
    _check(libc().capset(ctypes.byref(header), data), "capset")


def set_limits(limits, with_nproc):
    cpu = max(1, int(round(limits["cpu_s"])))
    pairs = [
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (limits["memory_bytes"],) * 2),
        (resource.RLIMIT_FSIZE, (limits["fsize_bytes"],) * 2),
        (resource.RLIMIT_NOFILE, (limits["nofile"],) * 2),
        (resource.RLIMIT_CORE, (0, 0)),
    ]
    if with_nproc:
        pairs.append((resource.RLIMIT_NPROC, (limits["nproc"],) * 2))
    for what, value in pairs:
        resource.setrlimit(what, value)


def run_stdio(source):
    sys.argv = ["solution.py"]
    code = 0
    try:
        exec(compile(source, "solution.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc(limit=-5)
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        code = code or 1
    os._exit(code)


def run_assert(source, tests, nonce):
    report = os.fdopen(os.dup(1), "w")  # a private channel: the program may replace sys.stdout

    def say(text):
        try:
            sys.stdout.flush()
        except BaseException:
            pass
        report.write(f"\n{nonce} {text}\n")
        report.flush()

    scope = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(source, "solution.py", "exec"), scope)
    except SystemExit:
        pass  # a top-level exit() in the program does not skip the tests
    except BaseException:
        traceback.print_exc(limit=-5)
    for i, test in enumerate(tests):
        try:
            exec(compile(test, f"test_{i}.py", "exec"), scope)
            ok = 1
        except BaseException:
            traceback.print_exc(limit=-3)
            ok = 0
        say(f"{i} {ok}")
    say("done")
    os._exit(0)


def program(config):
    """The program's process: limits, privileges, then the code."""
    set_limits(config["limits"], with_nproc=config["namespaces"])
    if config["namespaces"]:
        uid = config.get("uid")
        keep = 0
        if uid is not None:
            # Started as real root: become an unused unprivileged uid, so that RLIMIT_NPROC
            # applies (the kernel never enforces it for uid 0) and root-owned files are not
            # writable. CAP_DAC_READ_SEARCH is kept so the interpreter and its standard library
            # stay readable wherever they are installed (e.g. under a 0700 /root).
            _check(libc().prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "prctl(KEEPCAPS)")
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            keep = 1 << CAP_DAC_READ_SEARCH
        drop_capabilities(keep)
    if config["mode"] == "probe":
        try:
            with open("/probe-write", "w"):
                pass
            wrote = True
        except OSError:
            wrote = False
        print(json.dumps({"ok": not wrote, "root_writable": wrote}), flush=True)
        os._exit(0)
    if config["mode"] == "stdio":
        run_stdio(config["source"])
    run_assert(config["source"], config["tests"], config["nonce"])


def main():
    with open(sys.argv[1]) as f:
        config = json.load(f)
    deadline = time.monotonic() + config["limits"]["wall_s"]
    if config["namespaces"]:
        try:
            isolate_filesystem(config["tmpfs_mb"])
        except OSError as e:
            print(f"dare-sandbox: isolation failed: {e}", file=sys.stderr, flush=True)
            os._exit(125)
    else:
        os.chdir(config["workdir"])
    child = os.fork()
    if child == 0:
        try:
            program(config)
        except BaseException:
            traceback.print_exc()
        os._exit(126)
    # supervisor: reap everything (pid 1 adopts orphans) until the program's process ends
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pid, status = 0, 0
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)
        if pid == 0:
            if time.monotonic() > deadline:
                print("dare-sandbox: wall-clock limit reached", file=sys.stderr, flush=True)
                if not config["namespaces"]:
                    os.killpg(0, signal.SIGKILL)
                os._exit(124)
            time.sleep(0.005)


if __name__ == "__main__":
    main()
