"""Docker and Podman container names as netd container references.

`netctl attach web --network blue` with `web` a container of a Docker-compatible engine
on this host: netd asks the engine's API (DOCKER_HOST, /run/docker.sock, then
/run/podman/podman.sock; whichever answers for the name) for the container's PID and
attaches its network namespace, naming the endpoint after the container, so a
container recreated under the same name gets its address back.
"""

from __future__ import annotations

import logging
import os

from netd.container import ContainerRef
from netd.errors import InvalidInput, NotFound
from netd.model import check_name
from netd.runtimes.client import ApiError, EngineClient

log = logging.getLogger(__name__)

ENGINE_SOCKETS = ("/run/docker.sock", "/run/podman/podman.sock")
LOOKUP_TIMEOUT = 3.0


def engine_hosts(environ: dict[str, str] | None = None) -> list[str]:
    env = os.environ if environ is None else environ
    hosts = []
    docker_host = env.get("DOCKER_HOST", "")
    if docker_host.startswith("unix://"):
        hosts.append(docker_host[len("unix://"):])
    hosts += [h for h in ENGINE_SOCKETS if h not in hosts]
    return hosts


def find_container(ref: str, hosts: list[str] | None = None) -> ContainerRef | None:
    """The running container named (or with the id) `ref` on a local engine, None when
    no engine knows it. NotFound when it exists but does not run."""
    for host in engine_hosts() if hosts is None else hosts:
        if not os.path.exists(host):
            continue
        try:
            info = EngineClient(host, timeout=LOOKUP_TIMEOUT).container(ref)
        except (OSError, ApiError) as exc:
            log.debug("container engine at %s: %s", host, exc)
            continue
        if info is None:
            continue
        name = str(info.get("Name") or ref).lstrip("/")
        pid = int((info.get("State") or {}).get("Pid") or 0)
        if pid <= 0:
            raise NotFound(f"container {name} is not running; start it first")
        try:
            check_name(name, "container name")
        except InvalidInput:
            name = str(info.get("Id", ""))[:12] or ref
        return ContainerRef(ref=ref, name=name, netns=f"/proc/{pid}/ns/net")
    return None
