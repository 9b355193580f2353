"""Ray start-up and worker groups (verl single-controller)."""

from __future__ import annotations

import os

import ray
from verl import DataProto
from verl.protocol import pad_dataproto_to_divisor, unpad_dataproto
from verl.single_controller.ray import RayClassWithInitArgs, RayResourcePool, RayWorkerGroup

from dare.config import ResourcesSpec


def start_ray(resources: ResourcesSpec) -> None:
    """Connect to `resources.ray_address`, or start a local Ray sized for the workers."""
    if ray.is_initialized():
        return
    env = {"TOKENIZERS_PARALLELISM": "false", "RAY_DEDUP_LOGS": "0"}
    if resources.ray_address:
        ctx = ray.init(address=resources.ray_address, runtime_env={"env_vars": env}, logging_level="ERROR")
        print(f"dare: connected to the Ray cluster at {ctx.address_info.get('gcs_address')}", flush=True)
        return
    groups = 2 if resources.rollout == "separate" else 1  # the rollout workers get their own bundles
    cpus = max(resources.num_workers * groups, os.cpu_count() or 1)
    # address="local": always a new instance of our own, never a cluster that happens to run on
    # this machine (`ray.init()` would join one started by `ray start` and then refuse num_cpus)
    ray.init(
        address="local", num_cpus=cpus, include_dashboard=False, runtime_env={"env_vars": env}, logging_level="ERROR"
    )


def worker_group(cls, resources: ResourcesSpec, name: str, **init_kwargs) -> RayWorkerGroup:
    """A group of `resources.num_workers` workers of `cls`, one per bundle.

    On CPU, verl's pool must be `use_gpu=False, max_colocate_count=1`: the default asks for 10
    CPUs per bundle and never gets placed on a small machine."""
    use_gpu = resources.device == "cuda"
    pool = RayResourcePool(
        process_on_nodes=[resources.num_workers],
        use_gpu=use_gpu,
        max_colocate_count=1,
        name_prefix=name,
    )
    threads = resources.num_threads or max(1, (os.cpu_count() or 1) // resources.num_workers)
    return RayWorkerGroup(
        resource_pool=pool,
        ray_cls_with_init=RayClassWithInitArgs(cls=cls, num_threads=threads, device=resources.device, **init_kwargs),
        name_prefix=name,
        device_name="cuda" if use_gpu else "cpu",
    )


def dp_call(method, data: DataProto, world_size: int) -> DataProto:
    """Call a DP_COMPUTE_PROTO method on a batch whose size need not divide the world size."""
    padded, pad = pad_dataproto_to_divisor(data, world_size)
    return unpad_dataproto(method(padded), pad)


__all__ = ["dp_call", "start_ray", "worker_group"]
