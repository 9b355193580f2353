"""Ray start-up and worker groups (verl single-controller)."""

from __future__ import annotations

import os
import socket
import threading
import time

import ray
from ray.util.placement_group import NODE_ID_LABEL_KEY, placement_group, placement_group_table, remove_placement_group
from verl import DataProto
from verl.protocol import pad_dataproto_to_divisor, unpad_dataproto
from verl.single_controller.ray import RayClassWithInitArgs, RayResourcePool, RayWorkerGroup

from dare.config import ResourcesSpec
from dare.workers import platform  # noqa: F401  (verl's CPU platform, registered before verl picks one)

# how long the head node's port may take to accept a TCP connection (ray.init itself retries an
# unreachable address for minutes)
RAY_CONNECT_TIMEOUT_S = 20.0


def _tcp_reachable(host: str, port: int, timeout: float) -> str | None:
    """None if `host:port` accepts a connection within `timeout` seconds (name lookup included,
    which `create_connection`'s own timeout does not bound), else why not."""
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(str(e) or type(e).__name__)

    t = threading.Thread(target=attempt, daemon=True)  # daemon: a stuck lookup never blocks exit
    t.start()
    t.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"


def check_ray_address(address: str, timeout: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """Refuse a `resources.ray_address` that is malformed or whose host:port does not answer,
    within `timeout` seconds, instead of letting `ray.init` retry for minutes. "auto" (Ray finds
    the local cluster itself) is left to Ray."""
    if address == "auto":
        return
    scheme, sep, rest = address.partition("://")
    hostport = rest if sep else address
    host, colon, port = hostport.rpartition(":")
    host = host.strip("[]")  # [IPv6]:port
    if (sep and scheme != "ray") or not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"resources.ray_address: {address!r} is not a Ray address; expected 'auto', HOST:PORT or "
            "ray://HOST:PORT (or null to start Ray locally)"
        )
    why = _tcp_reachable(host, int(port), timeout)
    if why is not None:
        raise ValueError(
            f"resources.ray_address: cannot reach the Ray cluster at {address!r} ({host}:{port}: {why}); "
            "is the head node running (`ray start --head`) and the address right? Use null to start Ray locally"
        )


def start_ray(resources: ResourcesSpec) -> None:
    """Connect to `resources.ray_address` (checked with a bounded timeout first), or start a
    local Ray sized for the workers."""
    if resources.ray_address:  # checked even when this process already has a Ray session
        check_ray_address(resources.ray_address)
    if ray.is_initialized():
        return
    env = {"TOKENIZERS_PARALLELISM": "false", "RAY_DEDUP_LOGS": "0"}
    if resources.ray_address:
        ctx = ray.init(address=resources.ray_address, runtime_env={"env_vars": env}, logging_level="ERROR")
        print(f"dare: connected to the Ray cluster at {ctx.address_info.get('gcs_address')}", flush=True)
        return
    # separate rollout / reference workers get their own bundles
    groups = 1 + (resources.rollout == "separate") + (getattr(resources, "reference", "colocated") == "separate")
    cpus = max(resources.num_workers * groups, os.cpu_count() or 1)
    # address="local": always a new instance of our own, never a cluster that happens to run on
    # this machine (`ray.init()` would join one started by `ray start` and then refuse num_cpus)
    ray.init(
        address="local", num_cpus=cpus, include_dashboard=False, runtime_env={"env_vars": env}, logging_level="ERROR"
    )


class NodeSpreadPool(RayResourcePool):
    """verl's resource pool over `nodes` distinct nodes: one STRICT_PACK placement group of
    `per_node` worker bundles on each. verl's own pool makes one group per entry of
    `process_on_nodes` but lets Ray put two of them on one node; here a STRICT_SPREAD reservation
    of one node-sized bundle per node first picks distinct nodes (or fails, naming what is
    missing), then each node's group is pinned to its node (Ray's node-id label) and checked to be there.

    With `node_ids` (one per group, in rank order) the nodes are given instead of picked: a group
    that serves another one rank for rank (the separate reference) goes on its partner's nodes."""

    def __init__(
        self, nodes: int, per_node: int, use_gpu: bool, name_prefix: str, timeout_s: float,
        node_ids: list[str] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(process_on_nodes=[per_node] * nodes, use_gpu=use_gpu, max_colocate_count=1,
                         name_prefix=name_prefix)  # fmt: skip
        self.nodes, self.per_node, self.timeout_s, self.node_ids = nodes, per_node, timeout_s, node_ids

    def _bundle(self) -> dict[str, int]:
        return {"CPU": 1, **({"GPU": 1} if self.use_gpu else {})}

    def _pick_nodes(self) -> list[str]:
        node_bundle = {k: v * self.per_node for k, v in self._bundle().items()}
        probe = placement_group([node_bundle] * self.nodes, strategy="STRICT_SPREAD", name=f"{self.name_prefix}nodes")
        if not probe.wait(self.timeout_s):
            remove_placement_group(probe)
            alive = [n["Resources"] for n in ray.nodes() if n["Alive"]]
            raise RuntimeError(
                f"resources.nodes: {self.nodes} nodes with {node_bundle} free each are not in the Ray cluster "
                f"(alive nodes' resources: {alive})"
            )
        node_ids = list(placement_group_table(probe)["bundles_to_node_id"].values())
        remove_placement_group(probe)
        return node_ids

    def _no_room(self, pgs: list, node_ids: list[str]) -> RuntimeError:
        """The error for given nodes (`node_ids`) of which one cannot take its group in time."""
        ready = [pg.wait(0) for pg in pgs]
        i = ready.index(False)
        total = next((n["Resources"] for n in ray.nodes() if n["NodeID"] == node_ids[i]), "not alive")
        ranks = f"{i * self.per_node}..{(i + 1) * self.per_node - 1}"
        return RuntimeError(
            f"{self.name_prefix} ranks {ranks} go on node {node_ids[i]}"
            f"{', the node of the ranks they serve,' if self.node_ids is not None else ''} which has no room for {self.per_node} more worker(s) of {self._bundle()} within {self.timeout_s:g} s "
            f"(the node's resources: {total})"
        )

    def get_placement_groups(self, strategy: str = "STRICT_PACK", name: str | None = None, device_name: str = "cuda"):
        if self.pgs is not None:
            return self.pgs
        node_ids = list(self.node_ids) if self.node_ids is not None else self._pick_nodes()
        pgs = [
            placement_group(
                [self._bundle()] * self.per_node,
                strategy="STRICT_PACK",
                name=f"{self.name_prefix}node{i}",
                bundle_label_selector=[{NODE_ID_LABEL_KEY: node_id}] * self.per_node,
            )  # fmt: skip
            for i, node_id in enumerate(node_ids)
        ]
        deadline = time.monotonic() + self.timeout_s
        if not all(pg.wait(max(0.0, deadline - time.monotonic())) for pg in pgs):
            error = self._no_room(pgs, node_ids)
            for pg in pgs:
                remove_placement_group(pg)
            raise error
        landed = [placement_group_table(pg)["bundles_to_node_id"][0] for pg in pgs]
        if landed != node_ids:  # a node label selector Ray did not honour: never run misplaced
            for pg in pgs:
                remove_placement_group(pg)
            raise RuntimeError(f"resources.nodes: worker groups landed on nodes {landed}, expected {node_ids}")
        self.pgs = pgs  # node order = rank order: rank 0 (MASTER_ADDR) on the first node
        return pgs


def _node_id(_worker) -> str:
    return ray.get_runtime_context().get_node_id()


def worker_nodes(group: RayWorkerGroup) -> list[str]:
    """The Ray node id of each rank of a worker group, asked of the workers themselves (Ray's state
    API would need the dashboard)."""
    return ray.get([w.__ray_call__.remote(_node_id) for w in group.workers])


def _node_runs(on_nodes: list[str]) -> list[str]:
    """One node id per group of consecutive ranks on one node, all groups the same size."""
    runs = [n for i, n in enumerate(on_nodes) if i == 0 or on_nodes[i - 1] != n]
    per_node = len(on_nodes) // len(runs)
    if len(set(runs)) != len(runs) or on_nodes != [n for n in runs for _ in range(per_node)]:
        raise ValueError(f"ranks must be node by node, the same number on each node; got nodes {on_nodes}")
    return runs


def worker_group(
    cls, resources: ResourcesSpec, name: str, on_nodes: list[str] | None = None, **init_kwargs
) -> RayWorkerGroup:
    """A group of `resources.num_workers` workers of `cls`, one per bundle, on `resources.nodes`
    nodes (num_workers / nodes per node; ranks node by node, rank 0's node address is every
    rank's MASTER_ADDR for gloo / NCCL).

    `on_nodes` (a node id per rank, e.g. `worker_nodes(actor)`) puts rank i on node `on_nodes[i]`
    instead: a group that serves another rank for rank stays on its partner's nodes, or fails
    naming the node that lacks room.

    On CPU, verl's pool must be `use_gpu=False, max_colocate_count=1`: the default asks for 10
    CPUs per bundle and never gets placed on a small machine."""
    use_gpu = resources.device == "cuda"
    nodes = getattr(resources, "nodes", 1)
    if resources.num_workers % nodes:
        raise ValueError(f"resources.nodes: {resources.num_workers} workers do not split evenly over {nodes} nodes")
    per_node = resources.num_workers // nodes
    if on_nodes is not None:
        if len(on_nodes) != resources.num_workers:
            raise ValueError(f"{name}: {len(on_nodes)} nodes given for {resources.num_workers} workers")
        runs = _node_runs(list(on_nodes))
        per_node = resources.num_workers // len(runs)
        pool = NodeSpreadPool(len(runs), per_node, use_gpu, name, RAY_CONNECT_TIMEOUT_S, node_ids=runs)
    elif nodes > 1:
        pool = NodeSpreadPool(nodes, per_node, use_gpu, name, RAY_CONNECT_TIMEOUT_S)
    else:
        pool = RayResourcePool(
            process_on_nodes=[resources.num_workers],
            use_gpu=use_gpu,
            max_colocate_count=1,
            name_prefix=name,
        )
    threads = resources.num_threads or max(1, (os.cpu_count() or 1) // per_node)
    group = RayWorkerGroup(
        resource_pool=pool,
        ray_cls_with_init=RayClassWithInitArgs(cls=cls, num_threads=threads, device=resources.device, **init_kwargs),
        name_prefix=name,
        device_name="cuda" if use_gpu else "cpu",
    )
    group.dare_pool = pool  # for `release`
    if on_nodes is not None and (landed := worker_nodes(group)) != list(on_nodes):  # verl orders ranks by node IP
        release(group)
        raise RuntimeError(f"{name}: ranks landed on nodes {landed}, expected {list(on_nodes)}")
    return group


def release(group: RayWorkerGroup | None, wait_s: float = 30.0) -> None:
    """Kill a group's workers and free its placement groups, and wait until the worker names are
    free again, so a caller in the same process (a notebook, a test, a retry) can start the run
    again in the same Ray session."""
    if group is None:
        return
    for worker in group.workers:
        ray.kill(worker, no_restart=True)
    for pg in getattr(getattr(group, "dare_pool", None), "pgs", None) or []:
        ray.util.remove_placement_group(pg)
    deadline = time.monotonic() + wait_s
    for name in group.worker_names:
        while time.monotonic() < deadline:
            try:
                ray.get_actor(name)
            except ValueError:  # gone
                break
            time.sleep(0.05)


def dp_call(method, data: DataProto, world_size: int) -> DataProto:
    """Call a DP_COMPUTE_PROTO method on a batch whose size need not divide the world size."""
    padded, pad = pad_dataproto_to_divisor(data, world_size)
    return unpad_dataproto(method(padded), pad)


__all__ = [
    "RAY_CONNECT_TIMEOUT_S",
    "check_ray_address",
    "dp_call",
    "release",
    "start_ray",
    "worker_group",
    "worker_nodes",
]
