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
  replaced. The first traceback (and the first timeout) of each `score` call is logged.
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

import logging
import math
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import signal
import time
import traceback
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dare.rewards.spec import LoadedReward, RewardSpec, as_specs

logger = logging.getLogger("dare.rewards")

_OK, _ERR = "ok", "err"


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


def _worker_main(conn: mpc.Connection, specs: list[RewardSpec]) -> None:
    """A worker: load rewards on first use, score the items of each task, send each result."""
    try:
        os.setsid()  # its own process group: a kill on timeout takes its children along
    except OSError:
        pass  # already a group leader
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
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
            if spec_index not in loaded:
                loaded[spec_index] = LoadedReward.from_spec(specs[spec_index])
            reward = loaded[spec_index]
        except BaseException:
            tb = traceback.format_exc()
            for pos in range(len(items) if not is_batched else 1):
                conn.send((_ERR, task_id, pos, tb))
            continue
        if is_batched:
            prompts, responses, gts, extras = items
            try:
                out = reward.many(prompts, responses, gts, extras)
                conn.send((_OK, task_id, 0, [(s, {k: _plain(v) for k, v in info.items()}) for s, info in out]))
            except BaseException:
                conn.send((_ERR, task_id, 0, traceback.format_exc()))
            continue
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
    extra_keys: set[str] = field(default_factory=set)


def _kill_worker(w: _Worker) -> None:
    """SIGKILL the worker's process group (itself and anything it started), then reap it."""
    try:
        os.killpg(w.proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, TypeError):
        pass
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
        w.proc.join(timeout=max(0.0, deadline - time.monotonic()))
        if w.proc.is_alive():
            _kill_worker(w)
        else:
            w.conn.close()
    workers.clear()


class RewardRunner:
    """Fault-tolerant parallel scoring with weighted rewards (see the module docstring).

    Args:
        specs: `RewardSpec`s, dicts `{name|path, weight, args, label}` or reward names.
        num_workers: worker processes (0: score in this process, without timeouts).
        timeout_s: wall-clock limit of one reward call (one sample; a whole batch if batched).
        chunk_size: samples per message to a worker (per-sample rewards).
        start_method: multiprocessing start method (default forkserver, else spawn).

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
    ) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
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

    @staticmethod
    def _record_error(out: _Outcome, idxs: Sequence[int], tb: str) -> None:
        out.errors += len(idxs)
        if out.first_error is None:
            out.first_error = tb
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
        proc = self._ctx.Process(target=_worker_main, args=(child, self.specs), daemon=True, name="dare-reward")
        proc.start()
        child.close()
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
                if w.received >= task.n_messages:
                    w.task = None
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
            if out.first_error is not None and self.first_error is None:
                self.first_error = out.first_error
                logger.error(
                    "reward %r failed on %d sample(s) of this batch (scored 0); first traceback:\n%s",
                    label,
                    out.errors,
                    out.first_error,
                )
            if out.first_timeout is not None:
                logger.warning("%s (%d timeout(s) in this batch, scored 0)", out.first_timeout, out.timeouts)
        mean = sum(total) / n if n else 0.0
        metrics["reward/mean"] = mean
        metrics["reward/std"] = math.sqrt(sum((t - mean) ** 2 for t in total) / n) if n else 0.0
        metrics["reward/errors"] = float(errors)
        metrics["reward/timeouts"] = float(timeouts)
        metrics["reward/time_s"] = elapsed
        return total, metrics, components


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)  # bools count (as 0/1)


__all__ = ["RewardRunner"]
