"""The in-sandbox half of `dare.rewards.sandbox` (standard library only; run as a script).

    python -I -B _sandbox_harness.py CONFIG.json

With `namespaces` set, this process (the *supervisor*) is pid 1 of fresh pid + mount + network
namespaces made by `unshare` (plus a user namespace when the caller is not root). It

1. reads the program from CONFIG (before /tmp, where CONFIG lives, is hidden); the tests of
   `assert` mode stay unread in their file descriptor;
2. remounts every mount read-only, mounts a fresh proc on /proc (only the sandbox's processes),
   hides every top-level directory but the system ones (`/usr`, `/etc`, `/lib*`, `/bin`,
   `/sbin`, `/dev`) under empty read-only tmpfs, except the Python installation itself, which is
   bound back read-only, and mounts empty private tmpfs on /tmp (the working directory),
   /var/tmp and /dev/shm;
3. forks the processes below, each of which sets the resource limits (CPU, address space, file
   size, open files, process count), closes every descriptor it does not need, switches to its
   own unprivileged uid (when started as root; the kernel enforces RLIMIT_NPROC only for
   non-root uids), drops every capability (bounding set included) and sets no_new_privs;
4. reaps processes until the verdict is in or the wall-clock deadline passes, then exits: pid 1
   leaving tears down the pid namespace, killing every process the program left.

Modes: `stdio` runs the program as `__main__` in one process (stdin/stdout are the caller's; the
caller judges the output); `probe` only checks that the isolation steps work; `assert` runs the
program against test snippets in two processes that share nothing but a socket:

- the *program process* runs the response code, then serves requests on the socket: call this
  function with these arguments, get this attribute, ... Arguments and results cross as data
  (JSON of exact `None/bool/int/float/str`, lists, tuples, dicts, sets, bytes, complex; an
  instance of a subclass is never data), any other object as an opaque handle;
- the *verdict process* is forked from the supervisor, so it never runs response code: its
  builtins, frames, modules and memory are its own. It reads the tests from their descriptor, runs
  each snippet with the program's top-level names bound to proxies (a call goes over the socket;
  names of builtins and modules are not taken from the program: a module is imported here), and
  writes `<i> <0|1>` per test, then `done`, to the verdict descriptor (a file of the caller;
  CONFIG names both descriptors). A test
  passes when it raises nothing *in the verdict process*: `assert f(2) == 4` compares data with
  the verdict process's own `==`. Handles compare by identity, so an object whose `__eq__`
  always says yes, or an int subclass, never equals an expected value.

Why the program cannot forge a pass: it never holds the verdict or tests descriptor (closed before its code
runs), cannot reopen them through /proc (another uid and no capabilities, or a non-dumpable
verdict process), cannot signal or ptrace the verdict process or the supervisor (another uid, no
CAP_KILL/CAP_SYS_PTRACE), never sees the tests (they are only read by the verdict process), and
whatever it sends over the socket is data that the verdict process compares itself. Its stdout
is not a verdict channel. Exiting early (`os._exit(0)`), crashing, hanging or killing itself
only makes the calls of the remaining tests fail (`RemoteError`), never pass.

Known limits of `assert` mode: arguments are copies (a list, dict or set passed to the program is
updated in place after the call, nested objects are not), functions or objects of the tests' own
cannot be passed to the program (the test fails with a TypeError), and a program function named
like a builtin is not visible to the tests.

Without `namespaces` (fallback) step 2, the uid switch and the capability drop are skipped, the
working directory is a fresh temporary folder, and the deadline kills this process group
instead. The program then runs with the caller's uid: it can read the caller's files (the tests
included) and signal the verdict process, so a verdict is only trustworthy with namespaces.
"""

import builtins
import ctypes
import importlib
import json
import os
import resource
import signal
import socket
import sys
import time
import traceback

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 32, 1024, 2048, 4096
MS_REC, MS_RELATIME, MS_STRICTATIME = 16384, 1 << 21, 1 << 24
MNT_DETACH = 2
_FLAGS = {
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
    "strictatime": MS_STRICTATIME,
}
PR_SET_DUMPABLE, PR_CAPBSET_READ, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 4, 23, 24, 38
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# top-level directories the sandbox sees (read-only); every other one is hidden under a tmpfs
SYSTEM_DIRS = frozenset({"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "dev", "proc", "tmp"})
MAX_MESSAGE = 16 * 1024 * 1024  # bytes of one socket message
MAX_DEPTH = 64  # nesting of one encoded value

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


def _remount_readonly(target):
    """Make the mount at `target` read-only, keeping its other flags (a user namespace may not
    clear the locked ones)."""
    flags = [f for t, f in mount_points() if t == target]
    mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | (flags[-1] if flags else 0), None)


def _python_paths():
    """What the sandboxed interpreter needs to import its standard library."""
    paths = {os.path.realpath(sys.base_prefix), os.path.dirname(os.path.realpath(sys.executable))}
    return sorted(p for p in paths if p != "/")


def isolate_filesystem(tmpfs_mb):
    """Read-only mounts, a private /proc, host directories hidden, the interpreter bound back,
    private empty tmpfs on the writable places (see the module docstring, step 2)."""
    failed = []
    for target, flags in mount_points():
        try:
            mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags, None)
        except OSError as e:
            failed.append(f"{target}: {e.strerror}")
    if any(f.startswith("/: ") for f in failed):
        raise OSError(f"cannot make / read-only: {failed}")
    # only the sandbox's processes in /proc (a user namespace in a container may refuse a new
    # proc: then /proc is hidden instead)
    try:
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    except OSError:
        mount("tmpfs", "/proc", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, "size=4k,mode=555")
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmpfs_mb}m,mode=1777")
    hidden = [
        "/" + d
        for d in sorted(os.listdir("/"))
        if d not in SYSTEM_DIRS and os.path.isdir("/" + d) and not os.path.islink("/" + d)
    ]
    # the interpreter, when it lives in a hidden directory (e.g. /root/.pyenv), is staged in the
    # new /tmp, then bound back at its own path
    keep = [p for p in _python_paths() if "/" + p.split("/")[1] in hidden]
    staged = []
    for i, path in enumerate(keep):
        stage = f"/tmp/.dare-stage-{i}"
        os.mkdir(stage)
        mount(path, stage, None, MS_BIND | MS_REC, None)
        staged.append((stage, path))
    for target in hidden:
        mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    # top-level files (e.g. a container's description) read as empty
    files = [
        "/" + d
        for d in os.listdir("/")
        if d not in SYSTEM_DIRS and os.path.isfile("/" + d) and not os.path.islink("/" + d)
    ]
    if files:
        with open("/tmp/.dare-empty", "w"):
            pass
        for target in files:
            mount("/tmp/.dare-empty", target, None, MS_BIND, None)
            _remount_readonly(target)
        os.unlink("/tmp/.dare-empty")
    for stage, path in staged:
        os.makedirs(path, exist_ok=True)
        mount(stage, path, None, MS_BIND | MS_REC, None)
        _remount_readonly(path)
        _check(libc().umount2(stage.encode(), MNT_DETACH), f"umount {stage}")
        os.rmdir(stage)
    if "/var" in hidden:
        os.makedirs("/var/tmp", exist_ok=True)
    for target in ("/var/tmp", "/dev/shm"):
        if os.path.isdir(target):
            mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmpfs_mb}m,mode=1777")
    for target in hidden:
        mount(None, target, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
    os.chdir("/tmp")
    return failed


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def drop_bounding_set():
    """Empty the capability bounding set and set no_new_privs (needs CAP_SETPCAP: before the
    uid switch, which clears the effective set)."""
    _check(libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except (OSError, ValueError):
        last = 63
    for cap in range(last + 1):
        if libc().prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != 22:
            _check(-1, f"prctl(CAPBSET_DROP, {cap})")  # EINVAL: a cap this kernel lacks, fine


def drop_capabilities():
    """No capability left (effective, permitted, inheritable): mounts stay read-only, limits
    cannot be raised, no file permission is bypassed."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(libc().capset(ctypes.byref(header), data), "capset")


def capabilities_left():
    """Names of the capability sets that are not empty (effective, permitted, bounding)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(libc().capget(ctypes.byref(header), data), "capget")
    left = [name for name in ("effective", "permitted") if any(getattr(d, name) for d in data)]
    if any(libc().prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1 for cap in range(64)):
        left.append("bounding")
    return left


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


def confine(config, uid, keep_fds=(), dumpable=True):
    """This process's limits, descriptors and privileges (step 3 of the module docstring). A
    dumpable process may read its own /proc/self files; the verdict process is not dumpable."""
    keep = sorted({0, 1, 2, *keep_fds})
    for lo, hi in zip(keep, keep[1:] + [1 << 16]):
        os.closerange(lo + 1, hi)
    set_limits(config["limits"], with_nproc=config["namespaces"])
    if config["namespaces"]:
        drop_bounding_set()
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        drop_capabilities()
    libc().prctl(PR_SET_DUMPABLE, int(dumpable), 0, 0, 0)


# -- data over the socket ---------------------------------------------------------------------

_SCALARS = (type(None), bool, int, float, str)


class RemoteError(Exception):
    """The program failed a request (its exception, or it died)."""


def encode(x, ref, depth=0):
    """JSON-able form of `x`: scalars as themselves, containers tagged, others via `ref(x)`."""
    t = type(x)
    if t in _SCALARS:
        return x
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    sub = lambda v: encode(v, ref, depth + 1)
    if t is list or t is tuple or t is set or t is frozenset:
        return [{list: "l", tuple: "t", set: "s", frozenset: "f"}[t], [sub(v) for v in x]]
    if t is dict:
        return ["d", [[sub(k), sub(v)] for k, v in x.items()]]
    if t is bytes:
        return ["b", x.hex()]
    if t is complex:
        return ["c", x.real, x.imag]
    return ref(x)


def decode(x, deref, depth=0):
    """Inverse of `encode`; `deref(tagged)` resolves what is not data (or raises)."""
    t = type(x)
    if t in _SCALARS:
        return x
    if depth > MAX_DEPTH or t is not list or not x or type(x[0]) is not str:
        raise ValueError("malformed value")
    tag, sub = x[0], lambda v: decode(v, deref, depth + 1)
    if tag in ("l", "t", "s", "f"):
        items = [sub(v) for v in x[1]]
        return {"l": list, "t": tuple, "s": set, "f": frozenset}[tag](items)
    if tag == "d":
        return {sub(k): sub(v) for k, v in x[1]}
    if tag == "b":
        return bytes.fromhex(x[1])
    if tag == "c":
        return complex(float(x[1]), float(x[2]))
    return deref(x)


def send_msg(sock, obj):
    data = json.dumps(obj).encode()
    sock.sendall(len(data).to_bytes(4, "big") + data)


def _recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError("the program's process closed the connection")
        buf += chunk
    return bytes(buf)


def recv_msg(sock):
    n = int.from_bytes(_recv_exact(sock, 4), "big")
    if n > MAX_MESSAGE:
        raise ValueError(f"message of {n} bytes (limit {MAX_MESSAGE})")
    return json.loads(_recv_exact(sock, n))


# -- the program process ------------------------------------------------------------------------


def serve(sock, scope):
    """Answer the verdict process's requests against the program's objects until it hangs up."""
    handles = []

    def ref(x):
        if type(x).__name__ == "module" and isinstance(getattr(x, "__name__", None), str):
            return ["m", x.__name__]
        handles.append(x)
        return ["h", len(handles) - 1]

    def deref(tagged):
        if tagged[0] == "h":
            return handles[tagged[1]]
        raise ValueError(f"unknown tag {tagged[0]!r}")

    names = {}
    for name, value in list(scope.items()):
        if not name.startswith("__"):
            try:
                names[name] = encode(value, ref)
            except Exception:
                pass
    send_msg(sock, ["ready", names])
    ops = {
        "getattr": lambda obj, name: getattr(obj, name),
        "getitem": lambda obj, key: obj[key],
        "len": len,
        "iter": lambda obj: list(obj),
        "next": next,
        "str": str,
        "repr": repr,
        "bool": bool,
        "contains": lambda obj, item: item in obj,
    }
    while True:
        try:
            msg = recv_msg(sock)
        except (EOFError, OSError):
            return
        try:
            op, hid, args = msg[0], msg[1], decode(msg[2], deref)
            if op == "call":
                pos, kw = args
                result = handles[hid](*pos, **kw)
                after = [encode(a, ref) if type(a) in (list, dict, set) else None for a in pos]
                reply = ["ok", encode(result, ref), after]
            else:
                reply = ["ok", encode(ops[op](handles[hid], *args), ref), []]
        except BaseException as e:  # the program's own SystemExit included: an error of the call
            try:
                text = str(e)[:1000]
            except BaseException:
                text = "?"
            reply = ["raise", type(e).__name__, text]
        send_msg(sock, reply)


def run_program_side(config, sock):
    scope = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(config["source"], "solution.py", "exec"), scope)
    except SystemExit:
        pass  # a top-level exit() in the program does not skip the tests
    except BaseException:
        traceback.print_exc(limit=-5)
    try:
        sys.stdout.flush()
    except BaseException:
        pass
    serve(sock, scope)
    os._exit(0)


# -- the verdict process ------------------------------------------------------------------------


class _Link:
    """The verdict process's end of the socket."""

    def __init__(self, sock):
        self.sock = sock
        self.dead = None
        self.ready = False

    def request(self, op, hid, args):
        if self.dead:
            raise RemoteError(self.dead)
        data = encode(args, _to_program)  # a TypeError for objects of the tests: the test fails
        try:
            send_msg(self.sock, [op, hid, data])
            reply = recv_msg(self.sock)
            if type(reply) is not list or len(reply) != 3 or reply[0] not in ("ok", "raise"):
                raise ValueError("malformed reply")
        except (EOFError, OSError, ValueError, RecursionError) as e:
            self.dead = f"the program's process is gone or misbehaved ({type(e).__name__}: {e})"
            raise RemoteError(self.dead) from None
        if reply[0] == "raise":
            raise _exception(reply[1], reply[2])
        return reply


def _exception(name, text):
    """A builtin exception of the same name (tests may expect `ValueError`), else RemoteError."""
    cls = getattr(builtins, name, None) if type(name) is str else None
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        cls = RemoteError
    return cls(f"{text}" if cls is not RemoteError else f"{name}: {text}")


_LINK = None


def _to_program(x):
    if isinstance(x, Remote):
        return ["h", object.__getattribute__(x, "_hid")]
    raise TypeError(f"a {type(x).__name__} of the tests cannot be passed to the program (only data)")


def _from_program(tagged):
    if tagged[0] == "h" and type(tagged[1]) is int:
        return Remote(tagged[1])
    if tagged[0] == "m" and type(tagged[1]) is str and tagged[1].partition(".")[0] in sys.stdlib_module_names:
        return importlib.import_module(tagged[1])  # the verdict process's own copy (standard library only)
    raise ValueError("malformed value")


def _value(reply):
    return decode(reply[1], _from_program)


class Remote:
    """An object of the program: every use is a request; it equals only itself."""

    __slots__ = ("_hid",)

    def __init__(self, hid):
        object.__setattr__(self, "_hid", hid)

    def _ask(self, op, *args):
        return _value(_LINK.request(op, object.__getattribute__(self, "_hid"), list(args)))

    def __call__(self, *args, **kwargs):
        reply = _LINK.request("call", object.__getattribute__(self, "_hid"), [list(args), kwargs])
        after = reply[2] if type(reply[2]) is list else []
        for arg, new in zip(args, after):
            if new is not None and type(arg) in (list, dict, set):
                value = decode(new, _from_program)
                if type(value) is type(arg):  # arguments the program changed in place
                    arg.clear()
                    arg.update(value) if type(arg) is not list else arg.extend(value)
        return _value(reply)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._ask("getattr", name)

    def __setattr__(self, name, value):
        raise TypeError("objects of the program are read-only in tests")

    def __getitem__(self, key):
        return self._ask("getitem", key)

    def __len__(self):
        return self._ask("len")

    def __iter__(self):
        return iter(self._ask("iter"))

    def __next__(self):
        return self._ask("next")

    def __contains__(self, item):
        return self._ask("contains", item)

    def __bool__(self):
        return self._ask("bool") is True

    def __str__(self):
        return str(self._ask("str"))

    def __repr__(self):
        return str(self._ask("repr"))

    def __eq__(self, other):
        return self is other

    __hash__ = object.__hash__


def run_verdict_side(sock, tests_fd, verdict_fd):
    """Run each test against the program; write `<i> <0|1>` lines and `done` to `verdict_fd`."""
    global _LINK
    with os.fdopen(tests_fd, "rb") as f:
        tests = json.loads(f.read())
    _LINK = _Link(sock)
    scope = {"__name__": "__main__", "__builtins__": builtins}
    try:
        kind, names = recv_msg(sock)
        if kind != "ready" or type(names) is not dict:
            raise ValueError("malformed greeting")
        _LINK.ready = True
        for name, value in names.items():
            if type(name) is str and name.isidentifier() and not hasattr(builtins, name):
                try:
                    scope[name] = decode(value, _from_program)
                except Exception:
                    pass
    except Exception as e:
        # a program that dies or never finishes its top-level code fails every test (even one
        # that does not use it)
        _LINK.dead = f"the program's process never got ready ({type(e).__name__}: {e})"
        print(f"dare-sandbox: {_LINK.dead}", file=sys.stderr, flush=True)
    for i, test in enumerate(tests):
        ok = 0
        if not _LINK.dead or _LINK.ready:
            try:
                exec(compile(test, f"test_{i}.py", "exec"), scope)
                ok = 1
            except BaseException:
                traceback.print_exc(limit=-3)
        os.write(verdict_fd, f"{i} {ok}\n".encode())
    os.write(verdict_fd, b"done\n")
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    os._exit(0)


# -- stdio and probe ----------------------------------------------------------------------------


def run_stdio(source):
    sys.argv = ["solution.py"]
    code = 0
    try:
        exec(compile(source, "solution.py", "exec"), {"__name__": "__main__", "__builtins__": builtins})
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


def run_probe():
    """Checks from inside: / not writable, no capability, a private /proc."""
    try:
        with open("/probe-write", "w"):
            pass
        wrote = True
    except OSError:
        wrote = False
    caps = capabilities_left()
    pids = [p for p in os.listdir("/proc") if p.isdigit()]
    ok = not wrote and not caps and len(pids) < 10
    print(json.dumps({"ok": ok, "root_writable": wrote, "caps": caps, "pids": len(pids)}), flush=True)
    os._exit(0)


# -- the supervisor -----------------------------------------------------------------------------


def _fork(body):
    pid = os.fork()
    if pid == 0:
        try:
            body()
        except BaseException:
            traceback.print_exc()
        os._exit(126)
    return pid


def start(config):
    """Fork the run's processes; returns (pid whose exit ends the run, program pid)."""
    if config["mode"] != "assert":
        body = run_probe if config["mode"] == "probe" else lambda: run_stdio(config["source"])
        pid = _fork(lambda: (confine(config, config.get("uid")), body()))
        return pid, pid
    ours, theirs = socket.socketpair()
    verdict_fd, tests_fd = config["verdict_fd"], config["tests_fd"]

    def program():
        ours.detach()  # its descriptor is closed by confine (no socket object may close a reused one)
        confine(config, config.get("uid"), keep_fds=[theirs.fileno()])
        run_program_side(config, theirs)

    def verdict():
        theirs.detach()
        libc().prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # no /proc/<pid>/{mem,fd} for same-uid peers
        keep = [ours.fileno(), verdict_fd, tests_fd]
        confine(config, config.get("verdict_uid"), keep_fds=keep, dumpable=False)
        run_verdict_side(ours, tests_fd, verdict_fd)

    prog = _fork(program)
    judge = _fork(verdict)
    ours.close()
    theirs.close()
    for fd in (verdict_fd, tests_fd):
        os.close(fd)
    return judge, prog


def main():
    with open(sys.argv[1]) as f:
        config = json.load(f)
    deadline = time.monotonic() + config["limits"]["wall_s"]
    if config["namespaces"]:
        try:
            libc().prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
            isolate_filesystem(config["tmpfs_mb"])
        except OSError as e:
            print(f"dare-sandbox: isolation failed: {e}", file=sys.stderr, flush=True)
            os._exit(125)
    else:
        os.chdir(config["workdir"])
    main_pid, prog = start(config)
    # supervisor: reap everything (pid 1 adopts orphans) until the main process ends
    prog_code = None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pid, status = 0, 0
        if pid == prog:
            prog_code = os.waitstatus_to_exitcode(status)
        if pid == main_pid:
            code = os.waitstatus_to_exitcode(status)
            code = code if code >= 0 else 128 - code
            if main_pid != prog and prog_code is None:
                code = _wait_briefly(prog, code)
            elif main_pid != prog and prog_code < 0:
                code = 128 - prog_code  # the program was killed by a limit (e.g. SIGXCPU)
            os._exit(code)
        if pid == 0:
            if time.monotonic() > deadline:
                print("dare-sandbox: wall-clock limit reached", file=sys.stderr, flush=True)
                if not config["namespaces"]:
                    os.killpg(0, signal.SIGKILL)
                os._exit(124)
            time.sleep(0.005)


def _wait_briefly(prog, code):
    """The program's exit after the verdict (it stops when the socket closes): a kill by a limit
    is reported as 128 + signal, like in `stdio` mode."""
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        try:
            pid, status = os.waitpid(prog, os.WNOHANG)
        except ChildProcessError:
            return code
        if pid == prog:
            c = os.waitstatus_to_exitcode(status)
            return 128 - c if c < 0 else code
        time.sleep(0.005)
    return code


if __name__ == "__main__":
    main()
