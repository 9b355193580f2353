"""A CPU start is quiet: dare registers verl's CPU platform (`dare.workers.platform`), so neither
the driver nor its Ray workers log verl's "No supported accelerator detected ... Falling back to
'nvidia'" warnings, and both run on verl's "cpu" platform (gloo, Ray resource CPU)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the platform of a machine without a GPU")

# verl's three fallback warnings (verl/plugin/platform/platform_manager.py, single_controller/ray/base.py)
WARNINGS = ("No supported accelerator detected", "is registered but not available", "does not match current platform")


def _run(script: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=timeout
    )


def _assert_quiet(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
    for warning in WARNINGS:
        assert warning not in proc.stderr, proc.stderr[-3000:]
        assert warning not in proc.stdout, proc.stdout[-3000:]


def test_driver_imports_pick_the_cpu_platform_without_warnings():
    proc = _run(
        """
        import dare.trainer.pipeline, dare.workers.actor, dare.workers.rollout
        from verl.utils.device import get_device_name, get_nccl_backend, get_resource_name
        print(get_device_name(), get_nccl_backend(), get_resource_name())
        """,
        timeout=300,
    )
    _assert_quiet(proc)
    assert proc.stdout.split() == ["cpu", "gloo", "CPU"]


def test_ray_workers_pick_the_cpu_platform_without_warnings():
    proc = _run(
        """
        import ray
        from dare.config import ResourcesSpec
        from dare.trainer.runtime import release, start_ray, worker_group
        from dare.workers.rollout import RolloutWorker

        def device(worker):
            from verl.utils.device import get_device_name

            return get_device_name()

        resources = ResourcesSpec(num_workers=1, num_threads=1)
        start_ray(resources)
        group = worker_group(RolloutWorker, resources, name="quiet_start")
        try:
            print(*ray.get([w.__ray_call__.remote(device) for w in group.workers]))
        finally:
            release(group)
            ray.shutdown()
        """,
        timeout=600,
    )
    _assert_quiet(proc)  # the workers' log lines reach the driver's stderr
    assert proc.stdout.split() == ["cpu"]
