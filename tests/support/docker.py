"""dockerd inside a simulated host (its netns and private mount namespace), beside a
netd serving the Docker plugin (`netd --docker-plugin`). Debian's docker CLI (20.10,
/usr/bin/docker) talks to it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from netd.lab import Lab
from tests.support.runtimes import HostNamespace, busybox_rootfs, remove_cgroups

DOCKER_CLI = "/usr/bin/docker"  # 20.10: the docker 28 CLI refuses --mac-address on API 1.41
IMAGE = "local/busybox"
PLUGIN_SOCKET = Path("/run/docker/plugins/netd.sock")  # in the host's mount namespace


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class DockerHost:
    """One simulated host running netd (serving the Docker plugin) and dockerd."""

    def __init__(self, lab: Lab, host: str) -> None:
        self.lab = lab
        self.ns = HostNamespace(lab, host)
        self.dir = self.ns.dir
        self.socket = self.dir / "docker.sock"
        self.cgroup = f"{lab.prefix}-{host}-docker"
        self.dockerd: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return self.ns.host.name

    def start(self) -> DockerHost:
        self.ns.netd_env = {"DOCKER_HOST": f"unix://{self.socket}"}  # names as references
        self.ns.netd_args = ["--docker-plugin", str(PLUGIN_SOCKET),
                             "--docker-host", f"unix://{self.socket}"]
        self.ns.start()
        self.start_netd()
        self.start_dockerd()
        return self

    def start_netd(self, wait: float = 20.0) -> None:
        """netd with its Docker plugin; returns once the plugin socket serves."""
        before = self._plugin_inode()  # a killed netd leaves its socket behind
        self.ns.start_netd(wait)
        deadline = time.monotonic() + wait
        while self._plugin_inode() in ("", before):
            proc = self.ns.host.proc
            if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
                raise RuntimeError("netd's Docker plugin did not start: "
                                   + self.ns.host.log.read_text()[-1000:])
            time.sleep(0.05)

    def _plugin_inode(self) -> str:
        result = self.ns.run("stat", "-c", "%i", str(PLUGIN_SOCKET), check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    def kill_netd(self) -> None:
        self.lab.stop_netd(self.name, kill=True)

    def start_dockerd(self, wait: float = 30.0) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        self.dockerd = self.ns.spawn([
            "dockerd", "--data-root", str(self.dir / "docker-data"),
            # the private tmpfs: sandboxes land in /run/docker/netns, where netd accepts them
            "--exec-root", "/run/docker",
            "--pidfile", str(self.dir / "docker.pid"), "-H", f"unix://{self.socket}",
            "--iptables=false", "--ip6tables=false", "--bridge=none",
            "--cgroup-parent", self.cgroup, "--shutdown-timeout", "2", "--log-level", "info",
        ], "dockerd.log")
        deadline = time.monotonic() + wait
        while not self._answers():
            if self.dockerd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("dockerd did not start: "
                                   + (self.dir / "dockerd.log").read_text()[-1000:])
            time.sleep(0.2)

    def _answers(self) -> bool:
        try:
            return self.docker("version", check=False, timeout=5).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def stop_dockerd(self) -> None:
        """Stop dockerd and wait for the containerd it manages (a new dockerd's own
        would time out on its locked database)."""
        if self.dockerd is not None and self.dockerd.poll() is None:
            self.dockerd.send_signal(signal.SIGTERM)
            try:
                self.dockerd.wait(40)
            except subprocess.TimeoutExpired:
                self.dockerd.kill()
                self.dockerd.wait()
        self.dockerd = None
        deadline = time.monotonic() + 10
        while True:
            left = [pid for pid in self.ns.members() if _comm(pid) == "containerd"]
            if not left:
                return
            if time.monotonic() > deadline:
                for pid in left:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 5
            time.sleep(0.1)

    def docker(self, *args: str, check: bool = True, timeout: float = 90
               ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([DOCKER_CLI, "-H", f"unix://{self.socket}", *args],
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} on {self.name} failed: "
                               f"{result.stderr.strip()[-800:]}")
        return result

    def import_busybox(self) -> None:
        rootfs = busybox_rootfs(self.lab.dir)
        tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True,
                             check=True).stdout
        result = subprocess.run([DOCKER_CLI, "-H", f"unix://{self.socket}", "import", "-",
                                 IMAGE], input=tar, capture_output=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"docker import: {result.stderr.decode()[-500:]}")

    def close(self) -> None:
        if self.dockerd is not None and self.dockerd.poll() is None:
            ids = self.docker("ps", "-aq", check=False, timeout=30).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False, timeout=90)
        self.stop_dockerd()
        self.ns.close()  # the plugin and whatever dockerd left behind
        remove_cgroups(self.cgroup)
