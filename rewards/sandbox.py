"""Run untrusted Python (model completions) in a separate, limited process.

    result = run_program("print(int(input()) * 2)", stdin="21\\n")          # result.stdout == "42\\n"
    passed, result = run_tests("def f(x): return x + 1", ["assert f(1) == 2"])  # [True]

Every run is a fresh process with:

- resource limits (`resource.setrlimit`): CPU seconds, address space, file size (also caps the
  captured stdout/stderr), open files, and a process count (`RLIMIT_NPROC`, against fork bombs);
- a wall-clock limit (sleeping or blocked programs), after which every process of the run dies;
- a clean environment: no variable of the parent is inherited (`PATH`, `HOME`, `LANG` only) and
  the interpreter runs isolated (`python -I -B`: no `PYTHON*` variables, no user site);
- with Linux namespaces (`unshare`, util-linux; the default where it works, as root or with
  unprivileged user namespaces): its own user, pid, mount and **network** namespace (no network
  interface but a down loopback), every mount read-only, a fresh /proc (only the run's
  processes), every top-level directory but the system ones hidden (the interpreter bound back
  read-only), an empty private tmpfs as /tmp (the working directory), /var/tmp and /dev/shm, an
  unprivileged uid per process (as root), no capabilities at all (bounding set included) and
  no_new_privs, the process count limit counted per sandbox, and teardown of every process it
  started when it ends (pid namespace);
- without them (`isolation="none"`, or `"auto"` where `unshare` fails: non-Linux, containers
  without user namespaces): rlimits, clean env, a fresh temporary working directory and a
  process-group kill only. The network is then reachable, files outside the working directory
  readable and writable with the caller's permissions, there is no process-count limit (a
  per-user count would count the caller's own processes), and the verdict of `run_tests` is not
  protected from the program. A warning is logged once.

`run_tests` never runs the tests in the program's interpreter: a separate verdict process (which
never executes the program) runs them and calls the program's functions over a socket, data only,
so patched builtins, a hunted nonce, an early `os._exit(0)` or an object that equals anything do
not pass a test (`_sandbox_harness.py` explains the design). Threat model, what is and is not
enforced: docs/security.md.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger("dare.rewards.sandbox")

HARNESS = Path(__file__).with_name("_sandbox_harness.py")
# new pid (torn down with its first process), mount and network namespaces; a caller that is not
# root also needs a user namespace (where it is root) to make them
UNSHARE_ARGS = ("--pid", "--fork", "--kill-child", "--mount", "--net")
USERNS_ARGS = ("--user", "--map-root-user")
# programs of a root caller run as a random uid from this range (no account, no files outside the
# private tmpfs): the kernel counts RLIMIT_NPROC per uid and never enforces it for uid 0
SANDBOX_UID_RANGE = (3_000_000, 4_000_000)
Isolation = Literal["auto", "namespaces", "none"]

_MB = 1024 * 1024


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run."""

    # CPU seconds of each process (SIGXCPU at the limit, SIGKILL a second later)
    cpu_s: float = 5.0
    # wall-clock seconds of the whole run (then every process of the run is killed)
    wall_s: float = 10.0
    # address space per process
    memory_mb: int = 512
    # processes and threads of the run (namespaces only)
    max_processes: int = 32
    # largest file a process may write, stdout and stderr included
    max_output_mb: int = 8
    # size of the private /tmp (namespaces only)
    tmpfs_mb: int = 64
    max_open_files: int = 64

    def __post_init__(self) -> None:
        for name in ("cpu_s", "wall_s", "memory_mb", "max_processes", "max_output_mb", "tmpfs_mb", "max_open_files"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SandboxLimits.{name} must be > 0, got {getattr(self, name)!r}")

    def harness_limits(self) -> dict[str, Any]:
        return {
            "cpu_s": self.cpu_s,
            "wall_s": self.wall_s,
            "memory_bytes": self.memory_mb * _MB,
            "fsize_bytes": self.max_output_mb * _MB,
            "nofile": self.max_open_files,
            "nproc": self.max_processes,
        }


@dataclass
class SandboxResult:
    """What a run left: exit status, output (decoded, capped), and why it ended."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    wall_s: float
    isolation: str
    # 128 + signal number in returncode when the program was killed by a signal
    signal: int | None = field(default=None)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def _python() -> str:
    """The base interpreter (outside any virtual environment: the sandbox does not see the
    project's packages)."""
    return getattr(sys, "_base_executable", None) or sys.executable


_CLEAN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}

_probe_lock = threading.Lock()
_probe_result: dict[str, Any] | None = None


def namespaces_available() -> bool:
    """Whether namespace isolation works here (probed once per process: a sandboxed run that
    checks the read-only remount, tmpfs, limits and capability drop)."""
    global _probe_result
    with _probe_lock:
        if _probe_result is None:
            _probe_result = _probe()
            if not _probe_result["ok"]:
                logger.warning(
                    "code sandbox: Linux namespaces unavailable (%s); falling back to rlimits only: "
                    "no network isolation, no read-only filesystem, no process-count limit",
                    _probe_result["why"],
                )
        return bool(_probe_result["ok"])


def _probe() -> dict[str, Any]:
    if not sys.platform.startswith("linux"):
        return {"ok": False, "why": f"not Linux ({sys.platform})"}
    if shutil.which("unshare") is None:
        return {"ok": False, "why": "no unshare command (util-linux)"}
    try:
        res, _ = _run({"mode": "probe"}, "", SandboxLimits(cpu_s=5, wall_s=20), namespaces=True)
    except OSError as e:
        return {"ok": False, "why": str(e)}
    try:
        out = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        out = {}
    if res.returncode == 0 and out.get("ok"):
        return {"ok": True, "why": ""}
    return {"ok": False, "why": f"probe exited {res.returncode}: {(res.stderr or res.stdout).strip()[-300:]}"}


def _resolve_isolation(isolation: Isolation) -> bool:
    if isolation == "none":
        return False
    if isolation == "namespaces":
        if not namespaces_available():
            raise RuntimeError(f"code sandbox: namespace isolation requested but unavailable: {_probe_result}")
        return True
    if isolation == "auto":
        return namespaces_available()
    raise ValueError(f"isolation must be 'auto', 'namespaces' or 'none', got {isolation!r}")


def _read_capped(path: Path, limit: int) -> str:
    with open(path, "rb") as f:
        data = f.read(limit)
    return data.decode("utf-8", errors="replace")


def _kill(proc: subprocess.Popen[bytes], namespaces: bool) -> None:
    """Kill a run: `unshare --kill-child` takes its pid namespace down with it; without
    namespaces the run is its own process group."""
    try:
        if namespaces:
            proc.kill()
        else:
            os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _run(
    config: dict[str, Any],
    stdin: str,
    limits: SandboxLimits,
    namespaces: bool,
    python: str | None = None,
    tests: list[str] | None = None,
) -> tuple[SandboxResult, str]:
    """One harness run: its result, and what the verdict process wrote (`assert` mode)."""
    host = Path(tempfile.mkdtemp(prefix="dare-sandbox-"))
    fds: list[int] = []
    try:
        work = host / "work"  # the program's working directory without namespaces (empty)
        work.mkdir()
        config = {**config, "namespaces": namespaces, "limits": limits.harness_limits()}
        config.update(tmpfs_mb=limits.tmpfs_mb, workdir=str(work))
        cmd = [python or _python(), "-I", "-B", str(HARNESS), str(host / "config.json")]
        env = dict(_CLEAN_ENV)
        if tests is not None:
            # the tests reach only the verdict process (a descriptor it inherits), its verdicts
            # come back in a file no other process of the run holds
            (host / "tests.json").write_text(json.dumps(tests))
            fds = [
                os.open(host / "verdict", os.O_WRONLY | os.O_CREAT, 0o600),
                os.open(host / "tests.json", os.O_RDONLY),
            ]
            config.update(verdict_fd=fds[0], tests_fd=fds[1])
        if namespaces:
            as_root = os.geteuid() == 0
            if as_root:
                lo, hi = SANDBOX_UID_RANGE
                uid = lo + 2 * secrets.randbelow((hi - lo) // 2)
                config.update(uid=uid, verdict_uid=uid + 1)  # two uids: neither can signal the other
            cmd = ["unshare", *([] if as_root else USERNS_ARGS), *UNSHARE_ARGS, "--", *cmd]
            env.update(HOME="/tmp", TMPDIR="/tmp")
        else:
            env.update(HOME=str(work), TMPDIR=str(work))
        (host / "config.json").write_text(json.dumps(config))
        (host / "stdin").write_text(stdin)
        start = time.monotonic()
        with (
            open(host / "stdin", "rb") as fin,
            open(host / "stdout", "wb") as fout,
            open(host / "stderr", "wb") as ferr,
        ):
            # Without namespaces the run is its own process group (the harness kills it on its
            # deadline). With them it stays in the caller's group, so a reward worker killed as a
            # group takes the run with it; `--kill-child` then ends the pid namespace.
            proc = subprocess.Popen(
                cmd,
                stdin=fin,
                stdout=fout,
                stderr=ferr,
                cwd=str(work),
                env=env,
                close_fds=True,
                pass_fds=fds,
                start_new_session=not namespaces,
            )
            for fd in fds:
                os.close(fd)
            fds = []
            try:
                # the harness enforces wall_s itself; this is the backstop
                rc = proc.wait(timeout=limits.wall_s + 5.0)
            except subprocess.TimeoutExpired:
                _kill(proc, namespaces)
                rc = proc.wait()
        elapsed = time.monotonic() - start
        if not namespaces:
            # leftovers of the group (background children) die with the run
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        stdout = _read_capped(host / "stdout", limits.max_output_mb * _MB)
        stderr = _read_capped(host / "stderr", 64 * 1024)
        verdict = _read_capped(host / "verdict", 1024 * 1024) if tests is not None else ""
    finally:
        for fd in fds:
            os.close(fd)
        shutil.rmtree(host, ignore_errors=True)
    if rc < 0:  # killed by a signal before the harness could report (fallback group kill)
        rc = 128 - rc
    timed_out = rc == 124 or "dare-sandbox: wall-clock limit reached" in stderr or elapsed >= limits.wall_s
    sig = rc - 128 if rc > 128 else None
    result = SandboxResult(rc, stdout, stderr, timed_out, elapsed, "namespaces" if namespaces else "none", sig)
    return result, verdict


def run_program(
    source: str,
    stdin: str = "",
    limits: SandboxLimits | None = None,
    isolation: Isolation = "auto",
    python: str | None = None,
) -> SandboxResult:
    """Run `source` as a `__main__` program with `stdin`; returns its exit status and output."""
    limits = limits or SandboxLimits()
    return _run({"mode": "stdio", "source": source}, stdin, limits, _resolve_isolation(isolation), python)[0]


def run_tests(
    source: str,
    tests: list[str],
    limits: SandboxLimits | None = None,
    isolation: Isolation = "auto",
    python: str | None = None,
) -> tuple[list[bool], SandboxResult]:
    """Run `source`, then each test snippet (e.g. `assert f(2) == 4`) against its top-level names.

    The tests run in a separate verdict process that never executes `source` and calls the
    program's functions over a socket, data in and out (see `_sandbox_harness.py`). A test passes
    when it raises nothing there; tests after a crash, a timeout or a kill count as failed."""
    limits = limits or SandboxLimits()
    res, verdict = _run(
        {"mode": "assert", "source": source}, "", limits, _resolve_isolation(isolation), python, tests=list(tests)
    )
    passed = [False] * len(tests)
    for line in verdict.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) < len(tests) and parts[1] in ("0", "1"):
            passed[int(parts[0])] = parts[1] == "1"
    return passed, res


__all__ = [
    "SandboxLimits",
    "SandboxResult",
    "namespaces_available",
    "run_program",
    "run_tests",
]
