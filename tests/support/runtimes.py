"""A simulated host's private mount namespace, shared by its netd and its runtime.

A container runtime keeps its state under fixed paths (/run/docker, /run/containerd,
/var/lib/cni, /run/netns of podman...) and hands netd namespace paths that live in its
own mount namespace (Docker's SandboxKey, podman's CNI_NETNS). So each simulated host
gets one long-lived holder process in the host's netns and a new mount namespace (a
slave of ours: netns the test creates still appear in it) with private tmpfs over
those paths; netd, dockerd, podman and the plugins all run inside it (`enter`). Files
outside those paths (the lab dir, netd's socket) are shared with the test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from netd.lab import Lab, console_script

PRIVATE_DIRS = ("/run/docker", "/etc/docker", "/run/containerd", "/var/lib/cni",
                "/var/lib/containers", "/run/containers", "/run/runc", "/run/libpod",
                "/etc/cni/net.d", "/run/crun", "/dev/shm")


class HostNamespace:
    """The holder of one simulated host's mount namespace."""

    def __init__(self, lab: Lab, host: str) -> None:
        self.lab = lab
        self.host = lab.hosts[host]
        self.dir = lab.dir / f"{host}-rt"
        self.dir.mkdir(exist_ok=True)
        self._procs: list[subprocess.Popen[bytes]] = []
        self.holder: subprocess.Popen[bytes] | None = None
        self.netd_env: dict[str, str] = {}  # added to netd's environment (DOCKER_HOST)
        self.netd_args: list[str] = []  # added to netd's command line (--docker-plugin)

    def start(self) -> HostNamespace:
        mounts = " && ".join(
            f"mkdir -p {d} && mount -t tmpfs -o mode=755 rt-{self.host.name} {d}"
            for d in PRIVATE_DIRS)
        script = f"{mounts} && echo ready && exec sleep 100000"
        self.holder = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.host.netns}", "unshare", "-m",
             "--propagation", "slave", "sh", "-c", script],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline()
        if line.strip() != b"ready":
            err = self.holder.stderr.read() if self.holder.stderr else b""
            raise RuntimeError(f"host namespace for {self.host.name}: {err.decode()[-500:]}")
        return self

    @property
    def pid(self) -> int:
        assert self.holder is not None
        return self.holder.pid

    def enter(self, *cmd: str) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-m", "-n", *cmd]

    def run(self, *cmd: str, check: bool = True, timeout: float = 60,
            env: dict[str, str] | None = None, input: str | None = None
            ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.enter(*cmd), capture_output=True, text=True,
                                timeout=timeout, env=env, input=input)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): "
                               f"{result.stderr.strip()[-800:]}")
        return result

    def spawn(self, cmd: Sequence[str], log_name: str,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.dir / log_name, "ab")  # noqa: SIM115 - closed with the lab
        self.lab._logs.append(log)
        proc = subprocess.Popen(self.enter(*cmd), stdout=log, stderr=subprocess.STDOUT,
                                env=env)
        self._procs.append(proc)
        return proc

    def start_netd(self, wait: float = 20.0) -> None:
        """The host's netd, inside this mount namespace (lab.stop_netd stops it)."""
        host, lab = self.host, self.lab
        cmd = [
            console_script("netd"), "--host", host.name, "--underlay-ip", host.underlay_ip,
            "--store", lab.store_url, *lab.store_args, "--socket", str(host.socket),
            "--state-dir", str(host.state_dir), "--host-ttl", str(lab.host_ttl),
            "--resync-interval", str(lab.resync_interval), "--log-level", "info",
            *self.netd_args,
        ]
        with contextlib.suppress(FileNotFoundError):
            host.socket.unlink()
        log = open(host.log, "ab")  # noqa: SIM115
        lab._logs.append(log)
        host.proc = subprocess.Popen(self.enter(*cmd), stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **self.netd_env})
        deadline = time.monotonic() + wait
        while not host.socket.exists():
            if host.proc.poll() is not None:
                raise RuntimeError(f"netd on {host.name} exited: {host.log.read_text()[-800:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"netd on {host.name} did not open its socket")
            time.sleep(0.05)

    def members(self) -> list[int]:
        """PIDs of every process still in this mount namespace besides the holder."""
        try:
            mine = os.stat(f"/proc/{self.pid}/ns/mnt").st_ino
        except OSError:
            return []
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == self.pid:
                continue
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}/ns/mnt").st_ino == mine:
                    found.append(int(entry))
        return found

    def close(self) -> None:
        for proc in reversed(self._procs):
            Lab._terminate(proc)
        if self.holder is None:
            return
        for pid in self.members():  # left behind by what we started (shims, conmon)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        Lab._terminate(self.holder, signal.SIGKILL)
        self.holder = None


def remove_cgroups(name: str, wait: float = 5.0) -> None:
    """rmdir a cgroup parent (and its children) from every hierarchy, waiting a little
    for the last processes in it (conmon, shims) to finish dying."""
    root = Path("/sys/fs/cgroup")
    deadline = time.monotonic() + wait
    # container processes left by a runtime that died (they live in their own mount
    # namespace, so HostNamespace.close does not see them): the name is this lab's
    for procs in [*root.glob(f"*/{name}/**/cgroup.procs"), *root.glob(f"{name}/**/cgroup.procs")]:
        with contextlib.suppress(OSError, ValueError):
            for pid in procs.read_text().split():
                with contextlib.suppress(OSError):
                    os.kill(int(pid), signal.SIGKILL)
    while True:
        left = []
        for top in [*root.glob(f"*/{name}"), root / name]:
            if not top.is_dir():
                continue
            for path in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if path.is_dir():
                    with contextlib.suppress(OSError):
                        path.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()
            if top.is_dir():
                left.append(top)
        if not left or time.monotonic() > deadline:
            return
        time.sleep(0.1)


def busybox_rootfs(directory: Path) -> Path:
    """A busybox-static root filesystem (no registry): /bin/busybox and its applets."""
    rootfs = directory / "rootfs"
    (rootfs / "bin").mkdir(parents=True, exist_ok=True)
    for sub in ("etc", "proc", "sys", "dev", "tmp", "run", "root"):
        (rootfs / sub).mkdir(exist_ok=True)
    busybox = rootfs / "bin" / "busybox"
    busybox.write_bytes(Path("/bin/busybox").read_bytes())
    busybox.chmod(0o755)
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        link = rootfs / "bin" / applet
        if applet != "busybox" and not link.exists():
            link.symlink_to("busybox")
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\n")
    return rootfs
