"""verl's platform for a machine without an accelerator: `PlatformCPU`, registered as "cpu".

verl 0.9.1 picks its device platform once per process (`verl.plugin.platform.get_platform`) by
probing the registered platforms in order (nvidia, huawei, amd) and, when none is there, falls
back to "nvidia" with three warnings ("No supported accelerator detected ...", "Platform 'nvidia'
... is registered but not available", "Requested device cpu does not match current platform
device cuda") -- in the driver and again in every Ray worker. Registering a CPU platform is verl's
own extension point (`PlatformRegistry.register`): it is probed last and is always available, so
a machine with an accelerator still gets that accelerator's platform, and one without gets "cpu"
(torch.cpu, gloo, Ray resource "CPU") instead of a CUDA platform it cannot use.

Importing `dare.workers` registers it, which happens in the driver (the trainer imports the
worker classes) and in each Ray worker (unpickling a worker class imports its module) before verl
first asks for the platform. See /work/shared/reference/dependencies.md ("FSDP worker / engine
path on CPU").
"""

from __future__ import annotations

from contextlib import contextmanager
from types import ModuleType
from typing import Any

import torch
from verl.plugin.platform import PlatformBase, PlatformRegistry


@PlatformRegistry.register(platform="cpu")
class PlatformCPU(PlatformBase):
    """The host CPU as verl's platform: device "cpu", collective backend gloo, Ray resource "CPU";
    profiling, allocator and IPC hooks are no-ops."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> ModuleType:
        return torch.cpu

    def is_available(self) -> bool:
        return True  # the last resort of verl's probe: a host always has its CPU

    def current_device(self) -> int:
        return 0

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        pass

    def synchronize(self, device_index: int | None = None) -> None:
        pass

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        pass

    def empty_cache(self) -> None:
        pass

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        # what verl's worker sets and reads for its rank's devices; the name the nvidia fallback
        # used before, so a CPU worker's environment is unchanged
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        pass

    def profiler_stop(self) -> None:
        pass

    def ray_resource_name(self) -> str:
        return "CPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None


__all__ = ["PlatformCPU"]
