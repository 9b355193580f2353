"""`RewardRunner`: score a batch with several weighted rewards in worker processes, with a
per-call timeout, so that no reward can crash or stall a run.

    runner = RewardRunner([{"name": "countdown"}, {"name": "format", "weight": 0.1}],
                          num_workers=2, timeout_s=30)
    scores, metrics, components = runner.score(prompts, responses, ground_truths, extras)
    runner.close()                                 # or use it as a context manager

- `scores[i] = sum_k weight_k * score_k[i]`; `components[label_k]` holds each reward's raw
  scores, and `components["<label>/<key>"]` each numeric extra of its dicts (`acc`, flags).
- A reward that raises, returns something that is not a score, or kills its process gives 0 for
  that sample and counts in `reward/errors`; one that runs past `timeout_s` (one call: one
  sample, or one whole batch for a batched reward) gives 0, counts in `reward/timeouts`, and its
  worker process is killed with its whole process group (sandboxed programs included) and
  replaced. Each `score` call logs, per reward, the error count and its first `max_tracebacks`
  distinct tracebacks (and the first timeout). A score outside the spec's `bounds` (default
  [-1e4, 1e4]) or not finite is an error too.
- Processes a reward starts do not outlive its call: a worker is its own process group and the
  subreaper of everything it starts; after each call batch it kills and reaps every descendant,
  and closing the runner (or the driver's exit) kills the whole group.
- A worker's stdout and stderr go through a pipe to the driver's stderr, at most
  `max_output_bytes` per `score` call (then one truncation marker; the rest is counted, dropped,
  and reported in the log).
- Metrics: `reward/mean`, `reward/std`, `reward/errors`, `reward/timeouts`, `reward/time_s`,
  `reward/<label>/mean` and `reward/<label>/<key>` (mean of each numeric extra, e.g. `acc`,
  `parse_error`). Counts are (sample, reward) pairs.

Workers are long-lived `multiprocessing` processes (forkserver where available, else spawn; never
plain fork, which would copy a driver's threads and CUDA state), each loading the rewards once.
Work goes out in chunks of `chunk_size` samples; each result comes back as soon as it is ready, so
a timeout hits exactly the sample in progress and the rest of its chunk is sent again.
`num_workers=0` scores in the calling process (errors are still caught; no timeouts).
"""

from __future__ import annotations

import ctypes
import logging
import math
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import signal
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dare.rewards import base
from dare.rewards.spec import LoadedReward, RewardSpec, as_specs

logger = logging.getLogger("dare.rewards")

_OK, _ERR, _DONE = "ok", "err", "done"
PR_SET_CHILD_SUBREAPER = 36
_TRACEBACK_CHARS = 4000  # of each logged traceback (its tail)


def _plain(value: Any) -> Any:
    """Info values that cross the process boundary: numbers, strings, None; others as repr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)[:200]


def _absolute(spec: RewardSpec) -> RewardSpec:
    """The spec with an absolute plug-in path (workers may run in another directory)."""
    if spec.path is None:
        return spec
    path, _, func = spec.path.rpartition(":")
    return replace(spec, path=f"{Path(path).resolve()}:{func}")


def _descendants(root: int) -> list[int]:
    """Pids of every process below `root` (from /proc; empty where there is none)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(name))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _has_children() -> bool:
    """Whether this process has a child (cheap: /proc/self/task/*/children; True if unknown)."""
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                if f.read().strip():
                    return True
        return False
    except OSError:
        return True


def _end_descendants() -> None:
    """Kill and reap every process this worker started (it is their subreaper, so orphans and
    daemons that left the process group are found too)."""
    for _ in range(10):  # a fork bomb may add processes while we kill
        if not _has_children():
            return
        pids = _descendants(os.getpid())
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.005)
                if not _descendants(os.getpid()):
                    break
        if not pids:
            return


def _become_subreaper() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the process group kill still applies


def _worker_main(conn: mpc.Connection, specs: list[RewardSpec], output: mpc.Connection | None = None) -> None:
    """A worker: load rewards on first use, score the items of each task, send each result."""
    try:
        os.setsid()  # its own process group: a kill on timeout takes its children along
    except OSError:
        pass  # already a group leader
    _become_subreaper()
    base.TRIAL_IMPORT = False  # a plug-in that kills this process is reported as a dead worker
    if output is not None:  # stdout/stderr to the driver's capped reader
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(output.fileno(), 1)
        os.dup2(output.fileno(), 2)
        output.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    try:
        _serve(conn, specs)
    finally:
        _end_descendants()


def _serve(conn: mpc.Connection, specs: list[RewardSpec]) -> None:
    loaded: dict[int, LoadedReward] = {}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] == "stop":
            return
        _, task_id, spec_index, is_batched, items = msg
        try:
            _run_task(conn, specs, loaded, task_id, spec_index, is_batched, items)
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            _end_descendants()
        # after the cleanup: when the driver's `score` returns, nothing the batch started runs
        conn.send((_DONE, task_id, -1, None))


def _run_task(
    conn: mpc.Connection,
    specs: list[RewardSpec],
    loaded: dict[int, LoadedReward],
    task_id: int,
    spec_index: int,
    is_batched: bool,
    items: Any,
) -> None:
    """Score one task's items, sending each result as soon as it is ready."""
    try:
        if spec_index not in loaded:
            loaded[spec_index] = LoadedReward.from_spec(specs[spec_index])
        reward = loaded[spec_index]
    except BaseException:
        tb = traceback.format_exc()
        for pos in range(len(items) if not is_batched else 1):
            conn.send((_ERR, task_id, pos, tb))
        return
    if is_batched:
        prompts, responses, gts, extras = items
        try:
            out = reward.many(prompts, responses, gts, extras)
            conn.send((_OK, task_id, 0, [(s, {k: _plain(v) for k, v in info.items()}) for s, info in out]))
        except BaseException:
            conn.send((_ERR, task_id, 0, traceback.format_exc()))
        return
    for pos, (prompt, response, gt, extra) in enumerate(items):
        try:
            score, info = reward.one(prompt, response, gt, extra)
            conn.send((_OK, task_id, pos, (score, {k: _plain(v) for k, v in info.items()})))
        except BaseException:
            conn.send((_ERR, task_id, pos, traceback.format_exc()))


@dataclass
class _Task:
    """Samples `idxs` of reward `spec_index` (all of the batch, in one call, if batched)."""

    task_id: int
    spec_index: int
    batched: bool
    idxs: list[int]

    @property
    def n_messages(self) -> int:
        return 1 if self.batched else len(self.idxs)


class _OutputCap:
    """The byte budget of the workers' stdout/stderr in one `score` call (shared by the reader
    threads); what is over it is counted and dropped."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lock = threading.Lock()
        self.used = 0
        self.dropped = 0
        self.reported = 0  # of `dropped`, what `new_drops` has returned

    def reset(self) -> None:
        """A new `score` call: a fresh budget."""
        with self.lock:
            self.used = self.dropped = self.reported = 0

    def new_drops(self) -> int:
        """Bytes dropped since the last call. The budget is kept: output of this call that arrives
        after it returned (the reader threads run on) still counts against it."""
        with self.lock:
            new, self.reported = self.dropped - self.reported, self.dropped
        return new

    def take(self, chunk: bytes) -> bytes:
        """The part of `chunk` that may be printed (plus the marker when the budget runs out)."""
        with self.lock:
            shown = chunk[: max(0, self.limit - self.used)]
            self.used += len(shown)
            lost = len(chunk) - len(shown)
            first_drop = lost > 0 and self.dropped == 0
            self.dropped += lost
        if first_drop:
            shown += (
                f"\n[dare.rewards: reward output over {self.limit} bytes in this batch; the rest is dropped]\n".encode()
            )
        return shown


def _pump(fd: int, cap: _OutputCap) -> None:
    """Copy a worker's output to this process's stderr within the cap, until every writer closed."""
    try:
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return
            shown = cap.take(chunk)
            if shown:
                try:
                    sys.stderr.write(shown.decode("utf-8", errors="replace"))
                    sys.stderr.flush()
                except (OSError, ValueError):
                    pass
    except OSError:
        return
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


@dataclass
class _Worker:
    proc: Any  # multiprocessing.Process (of the chosen context)
    conn: mpc.Connection
    task: _Task | None = None
    received: int = 0
    deadline: float = math.inf


@dataclass
class _Outcome:
    """Per reward: score and info per sample (None until scored), error/timeout counts."""

    scores: list[float | None]
    infos: list[dict[str, Any] | None]
    errors: int = 0
    timeouts: int = 0
    first_error: str | None = None
    first_timeout: str | None = None
    # distinct tracebacks, in order of first occurrence (at most the runner's max_tracebacks)
    tracebacks: list[str] = field(default_factory=list)
    extra_keys: set[str] = field(default_factory=set)


def _kill_group(pid: int | None, reaped: bool = False) -> None:
    """SIGKILL what a worker started (its descendants, also those that left its group), then its
    process group (itself, and what is left of the group after the worker died). Once the worker
    is reaped its pid may be reused, so only the group is killed (a pid stays reserved while a
    group of that id has members)."""
    if pid is None:
        return
    for child in [] if reaped else _descendants(pid):
        try:
            os.kill(child, signal.SIGKILL)
        except OSError:
            pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, TypeError):
        pass


def _kill_worker(w: _Worker) -> None:
    """Kill the worker, everything it started, and its process group, then reap it."""
    _kill_group(w.proc.pid, reaped=w.proc.exitcode is not None)
    try:
        w.proc.kill()
    except (ProcessLookupError, AttributeError, ValueError):
        pass
    w.proc.join(timeout=10)
    w.conn.close()


def _shutdown(workers: list[_Worker]) -> None:
    for w in workers:
        if w.proc.is_alive() and w.task is None:
            try:
                w.conn.send(("stop",))
            except (OSError, ValueError):
                pass
    deadline = time.monotonic() + 2.0
    for w in workers:
        # the sentinel is ready when the worker exits, before it is reaped: its pid is still ours
        mpc.wait([w.proc.sentinel], timeout=max(0.0, deadline - time.monotonic()))
        _kill_worker(w)  # the group outlives its leader: nothing of it may
    workers.clear()


class RewardRunner:
    """Fault-tolerant parallel scoring with weighted rewards (see the module docstring).

    Args:
        specs: `RewardSpec`s, dicts `{name|path, weight, args, label}` or reward names.
        num_workers: worker processes (0: score in this process, without timeouts).
        timeout_s: wall-clock limit of one reward call (one sample; a whole batch if batched).
        chunk_size: samples per message to a worker (per-sample rewards).
        start_method: multiprocessing start method (default forkserver, else spawn).
        max_tracebacks: distinct tracebacks logged per reward and `score` call.
        max_output_bytes: workers' stdout/stderr shown per `score` call (the rest is dropped).

    Raises:
        RewardLoadError: a spec that does not load (checked here, before any worker starts).
    """

    def __init__(
        self,
        specs: Sequence[RewardSpec | Mapping[str, Any] | str],
        num_workers: int = 2,
        timeout_s: float = 30.0,
        chunk_size: int = 8,
        start_method: str | None = None,
        max_tracebacks: int = 3,
        max_output_bytes: int = 64 * 1024,
    ) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if max_tracebacks < 1 or max_output_bytes < 0:
            raise ValueError(
                f"max_tracebacks must be >= 1 and max_output_bytes >= 0, got {max_tracebacks}, {max_output_bytes}"
            )
        self.max_tracebacks = max_tracebacks
        self._output = _OutputCap(max_output_bytes)
        self.specs = [_absolute(s) for s in as_specs(specs)]
        self.rewards = [LoadedReward.from_spec(s) for s in self.specs]
        self.num_workers = num_workers
        self.timeout_s = float(timeout_s)
        self.chunk_size = chunk_size
        if start_method is None:
            start_method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        self._ctx = mp.get_context(start_method)
        if start_method == "forkserver":
            # workers fork from a server that has imported dare once (no per-worker import cost)
            self._ctx.set_forkserver_preload(["dare.rewards"])
        self._workers: list[_Worker] = []
        self._next_task = 0
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)
        # the first traceback of the last `score` call (None if no reward failed)
        self.first_error: str | None = None
        # per reward label: (error count, distinct tracebacks) of the last `score` call
        self.error_summary: dict[str, tuple[int, list[str]]] = {}

    @property
    def labels(self) -> list[str]:
        return [s.key for s in self.specs]

    @property
    def weights(self) -> dict[str, float]:
        return {s.key: float(s.weight) for s in self.specs}

    def worker_pids(self) -> list[int]:
        """Pids of the live worker processes."""
        return [w.proc.pid for w in self._workers if w.proc.is_alive()]

    def close(self) -> None:
        """Stop the workers (idle ones are asked, busy or stuck ones killed)."""
        self._finalizer()

    def __enter__(self) -> RewardRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- scoring -----------------------------------------------------------------------------

    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        ground_truths: Sequence[Any] | None = None,
        extras: Sequence[Mapping[str, Any]] | None = None,
    ) -> tuple[list[float], dict[str, float], dict[str, list[float]]]:
        """Score a batch: `(total scores [B], metrics, components {label: [B]})`. Never raises
        because of a reward."""
        n = len(prompts)
        gts = list(ground_truths) if ground_truths is not None else [None] * n
        ext = [dict(e) for e in extras] if extras is not None else [{} for _ in range(n)]
        if not (len(responses) == len(gts) == len(ext) == n):
            raise ValueError(
                f"batch lengths differ: prompts {n}, responses {len(responses)}, "
                f"ground_truths {len(gts)}, extras {len(ext)}"
            )
        batch = (list(prompts), list(responses), gts, ext)
        start = time.monotonic()
        self._output.reset()
        outcomes = [_Outcome([None] * n, [None] * n) for _ in self.rewards]
        if n:
            if self.num_workers == 0:
                self._score_inline(batch, outcomes)
            else:
                self._score_workers(batch, outcomes)
        return self._collect(outcomes, n, time.monotonic() - start)

    def _score_inline(self, batch: tuple[list, list, list, list], outcomes: list[_Outcome]) -> None:
        prompts, responses, gts, ext = batch
        for reward, out in zip(self.rewards, outcomes):
            if reward.batched:
                try:
                    for i, (s, info) in enumerate(reward.many(prompts, responses, gts, ext)):
                        out.scores[i], out.infos[i] = s, info
                except Exception:
                    self._record_error(out, range(len(prompts)), traceback.format_exc())
                continue
            for i in range(len(prompts)):
                try:
                    out.scores[i], out.infos[i] = reward.one(prompts[i], responses[i], gts[i], ext[i])
                except Exception:
                    self._record_error(out, [i], traceback.format_exc())

    def _record_error(self, out: _Outcome, idxs: Sequence[int], tb: str) -> None:
        out.errors += len(idxs)
        if out.first_error is None:
            out.first_error = tb
        if len(out.tracebacks) < self.max_tracebacks and tb not in out.tracebacks:
            out.tracebacks.append(tb)
        for i in idxs:
            out.scores[i], out.infos[i] = 0.0, {}

    @staticmethod
    def _record_timeout(out: _Outcome, idxs: Sequence[int], what: str) -> None:
        out.timeouts += len(idxs)
        if out.first_timeout is None:
            out.first_timeout = what
        for i in idxs:
            out.scores[i], out.infos[i] = 0.0, {}

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        out_read, out_write = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=_worker_main, args=(child, self.specs, out_write), daemon=True, name="dare-reward"
        )
        proc.start()
        child.close()
        out_write.close()
        # the reader owns the descriptor from here (it closes it at EOF: every writer is gone)
        fd = os.dup(out_read.fileno())
        out_read.close()
        threading.Thread(target=_pump, args=(fd, self._output), daemon=True, name="dare-reward-output").start()
        w = _Worker(proc, parent)
        self._workers.append(w)
        return w

    def _retire(self, w: _Worker) -> None:
        _kill_worker(w)
        self._workers.remove(w)

    def _make_tasks(self, n: int) -> deque[_Task]:
        tasks: deque[_Task] = deque()
        for si, reward in enumerate(self.rewards):
            groups = (
                [list(range(n))]
                if reward.batched
                else [list(range(a, min(a + self.chunk_size, n))) for a in range(0, n, self.chunk_size)]
            )
            for idxs in groups:
                tasks.append(_Task(self._next_task, si, reward.batched, idxs))
                self._next_task += 1
        return tasks

    def _send(self, w: _Worker, task: _Task, batch: tuple[list, list, list, list]) -> None:
        prompts, responses, gts, ext = batch
        if task.batched:
            items: Any = (
                [prompts[i] for i in task.idxs],
                [responses[i] for i in task.idxs],
                [gts[i] for i in task.idxs],
                [ext[i] for i in task.idxs],
            )
        else:
            items = [(prompts[i], responses[i], gts[i], ext[i]) for i in task.idxs]
        w.task, w.received = task, 0
        w.deadline = time.monotonic() + self.timeout_s
        w.conn.send(("task", task.task_id, task.spec_index, task.batched, items))

    def _score_workers(self, batch: tuple[list, list, list, list], outcomes: list[_Outcome]) -> None:
        for w in [w for w in self._workers if not w.proc.is_alive()]:
            self._retire(w)
        tasks = self._make_tasks(len(batch[0]))
        while tasks or any(w.task is not None for w in self._workers):
            # hand out work, starting workers as needed
            while tasks:
                idle = next((w for w in self._workers if w.task is None), None)
                if idle is None and len(self._workers) < self.num_workers:
                    idle = self._spawn()
                if idle is None:
                    break
                task = tasks.popleft()
                try:
                    self._send(idle, task, batch)
                except (OSError, ValueError):  # a worker that died while idle
                    tasks.appendleft(task)
                    self._retire(idle)
            busy = [w for w in self._workers if w.task is not None]
            if not busy:
                continue
            wait_s = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            ready = set(mpc.wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=wait_s))
            for w in busy:
                if w.conn in ready or w.proc.sentinel in ready:
                    self._drain(w, outcomes, tasks)
            now = time.monotonic()
            for w in [w for w in self._workers if w.task is not None and now >= w.deadline]:
                self._on_timeout(w, outcomes, tasks)

    def _drain(self, w: _Worker, outcomes: list[_Outcome], tasks: deque[_Task]) -> None:
        """Read every result the worker has sent; handle its death if it died."""
        try:
            while w.task is not None and w.conn.poll():
                kind, task_id, pos, payload = w.conn.recv()
                task = w.task
                if task_id != task.task_id:
                    continue
                if kind == _DONE:  # the worker has cleaned up after the task
                    w.task = None
                    break
                out = outcomes[task.spec_index]
                if task.batched:
                    if kind == _OK:
                        for i, (s, info) in zip(task.idxs, payload):
                            out.scores[i], out.infos[i] = s, info
                    else:
                        self._record_error(out, task.idxs, payload)
                else:
                    i = task.idxs[pos]
                    if kind == _OK:
                        out.scores[i], out.infos[i] = payload
                    else:
                        self._record_error(out, [i], payload)
                w.received += 1
                w.deadline = time.monotonic() + self.timeout_s
        except (EOFError, OSError):
            pass
        if w.task is not None and not w.proc.is_alive():
            w.proc.join(timeout=1)
            self._fail_current(w, outcomes, tasks, timeout=False)

    def _fail_current(self, w: _Worker, outcomes: list[_Outcome], tasks: deque[_Task], timeout: bool) -> None:
        """The item in progress fails (timeout or dead worker); the rest of its task is sent again."""
        task = w.task
        assert task is not None
        done = w.received
        if done >= task.n_messages:  # every result is in; it died or hung cleaning up
            w.task = None
            self._retire(w)
            return
        current = task.idxs if task.batched else [task.idxs[done]]
        rest = [] if task.batched else task.idxs[done + 1 :]
        out = outcomes[task.spec_index]
        label = self.specs[task.spec_index].key
        if timeout:
            what = f"reward {label!r} timed out after {self.timeout_s:g} s on sample(s) {current[:8]}"
            self._record_timeout(out, current, what)
        else:
            code = w.proc.exitcode
            self._record_error(
                out, current, f"reward {label!r}: worker process died (exit code {code}) on sample(s) {current[:8]}"
            )
        w.task = None
        self._retire(w)
        if rest:
            tasks.appendleft(_Task(self._next_task, task.spec_index, False, rest))
            self._next_task += 1

    def _on_timeout(self, w: _Worker, outcomes: list[_Outcome], tasks: deque[_Task]) -> None:
        self._drain(w, outcomes, tasks)  # results that arrived just in time still count
        if w.task is not None:
            self._fail_current(w, outcomes, tasks, timeout=True)

    # -- results -------------------------------------------------------------------------------

    def _collect(
        self, outcomes: list[_Outcome], n: int, elapsed: float
    ) -> tuple[list[float], dict[str, float], dict[str, list[float]]]:
        components: dict[str, list[float]] = {}
        metrics: dict[str, float] = {}
        total = [0.0] * n
        errors = timeouts = 0
        self.first_error = None
        self.error_summary = {}
        for spec, out in zip(self.specs, outcomes):
            label = spec.key
            scores = [0.0 if s is None else float(s) for s in out.scores]
            components[label] = scores
            for i, s in enumerate(scores):
                total[i] += float(spec.weight) * s
            metrics[f"reward/{label}/mean"] = sum(scores) / n if n else 0.0
            keys = sorted({k for info in out.infos if info for k, v in info.items() if _numeric(v)})
            for k in keys:
                col = [float(info[k]) if info and _numeric(info.get(k)) else 0.0 for info in out.infos]
                components[f"{label}/{k}"] = col
                metrics[f"reward/{label}/{k}"] = sum(col) / n
            errors += out.errors
            timeouts += out.timeouts
            if out.first_error is not None:
                if self.first_error is None:
                    self.first_error = out.first_error
                self.error_summary[label] = (out.errors, list(out.tracebacks))
                shown = "\n".join(
                    f"--- traceback {k + 1} of {len(out.tracebacks)} ---\n{tb[-_TRACEBACK_CHARS:]}"
                    for k, tb in enumerate(out.tracebacks)
                )
                more = "" if len(out.tracebacks) < self.max_tracebacks else f" (at most {self.max_tracebacks} shown)"
                logger.error(
                    "reward %r failed on %d sample(s) of this batch (scored 0); %d distinct traceback(s)%s:\n%s",
                    label,
                    out.errors,
                    len(out.tracebacks),
                    more,
                    shown,
                )
            if out.first_timeout is not None:
                logger.warning("%s (%d timeout(s) in this batch, scored 0)", out.first_timeout, out.timeouts)
        dropped = self._output.new_drops()
        if dropped:
            logger.warning(
                "reward workers printed %d byte(s) over the %d-byte cap of this batch (dropped)",
                dropped,
                self._output.limit,
            )
        metrics["reward/output_dropped_bytes"] = float(dropped)
        mean = sum(total) / n if n else 0.0
        metrics["reward/mean"] = mean
        metrics["reward/std"] = math.sqrt(sum((t - mean) ** 2 for t in total) / n) if n else 0.0
        metrics["reward/errors"] = float(errors)
        metrics["reward/timeouts"] = float(timeouts)
        metrics["reward/time_s"] = elapsed
        return total, metrics, components


_FLOAT32_MAX = 3.4028234663852886e38


def _numeric(v: Any) -> bool:
    """An info value kept as a metric column: finite, and finite in float32 (bools count as 0/1)."""
    try:
        return isinstance(v, (int, float)) and math.isfinite(v) and abs(v) <= _FLOAT32_MAX
    except OverflowError:  # an int too large for a float
        return False


__all__ = ["RewardRunner"]
