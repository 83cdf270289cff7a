"""Rootful podman (CNI backend) inside a simulated host's mount namespace, with
netd-cni as its network plugin. Every path podman writes is private to the host:
--root/--runroot in the lab dir, the rest on the holder's tmpfs (tests.support.runtimes).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from netd.lab import Lab
from tests.support.runtimes import HostNamespace, busybox_rootfs, remove_cgroups

IMAGE = "localhost/busybox"
CNI_DIR = Path("/etc/cni/net.d")  # private tmpfs inside the host namespace


class PodmanHost:
    """One simulated host running netd and (on demand) podman."""

    def __init__(self, lab: Lab, host: str) -> None:
        self.lab = lab
        self.ns = HostNamespace(lab, host)
        self.dir = self.ns.dir
        self.cgroup = f"{lab.prefix}-{host}-podman"
        self.conf = self.dir / "containers.conf"
        self.api_socket = self.dir / "podman.sock"

    def start(self) -> PodmanHost:
        self.ns.netd_env = {"DOCKER_HOST": f"unix://{self.api_socket}"}  # names as references
        self.ns.start()
        self.ns.start_netd()
        self.conf.write_text(
            "[containers]\n"
            'default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'tmp_dir = "{self.dir / "podman-tmp"}"\n'
            "[network]\n"
            'network_backend = "cni"\n'
            f'cni_plugin_dirs = ["{Path(sys.executable).parent}", "/usr/lib/cni"]\n'
            f'network_config_dir = "{CNI_DIR}"\n'
        )
        return self

    def _command(self, *args: str) -> list[str]:
        return ["env", f"CONTAINERS_CONF={self.conf}", "podman",
                "--root", str(self.dir / "podman-root"), "--runroot",
                str(self.dir / "podman-run"), "--cgroup-manager", "cgroupfs",
                "--storage-driver", "vfs", *args]

    def start_api(self, wait: float = 20.0) -> None:
        """`podman system service`: the Docker-compatible API netd asks for names."""
        proc = self.ns.spawn(self._command("system", "service", "--time=0",
                                           f"unix://{self.api_socket}"), "podman-api.log")
        deadline = time.monotonic() + wait
        while not self.api_socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("podman system service did not start: "
                                   + (self.dir / "podman-api.log").read_text()[-800:])
            time.sleep(0.05)

    def podman(self, *args: str, check: bool = True, timeout: float = 90,
               input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        cmd = self._command(*args)
        if input is not None:
            raw = subprocess.run(self.ns.enter(*cmd), input=input, capture_output=True,
                                 timeout=timeout)
            result = subprocess.CompletedProcess(raw.args, raw.returncode,
                                                 raw.stdout.decode(), raw.stderr.decode())
        else:
            result = self.ns.run(*cmd, check=False, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)} on {self.ns.host.name} failed: "
                               f"{result.stderr.strip()[-800:]}")
        return result

    def run_container(self, name: str, network: str, *extra: str
                      ) -> subprocess.CompletedProcess[str]:
        return self.podman("run", "-d", "--name", name, "--network", network,
                           "--cgroup-parent", f"/{self.cgroup}", *extra, IMAGE,
                           "sleep", "100000", check=False)

    def add_network(self, name: str, network: str | None = None) -> None:
        """A CNI conflist naming netd-cni, in the host's private config dir."""
        config = {"cniVersion": "1.0.0", "name": name, "plugins": [{
            "type": "netd-cni", "network": network or name,
            "socket": str(self.ns.host.socket), "capabilities": {"ips": True},
        }]}
        path = CNI_DIR / f"{name}.conflist"
        self.ns.run("sh", "-c", f"cat > {path}", input=json.dumps(config))

    def import_busybox(self) -> None:
        rootfs = busybox_rootfs(self.lab.dir)
        tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True,
                             check=True).stdout
        self.podman("import", "-", IMAGE, input=tar)

    def close(self) -> None:
        if self.ns.holder is not None:
            self.podman("rm", "-f", "-t", "0", "--all", check=False)
        self.ns.close()
        remove_cgroups(self.cgroup)
