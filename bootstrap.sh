#!/usr/bin/env bash
# netd's one entry point on a fresh Debian 12 machine, as root:
#   ./bootstrap.sh          set up (system packages, .venv, netd installed) and run the demo
#   ./bootstrap.sh setup    set up only
#   ./bootstrap.sh test     set up, then run the whole test suite
set -euo pipefail
cd "$(dirname "$0")"
action="${1:-demo}"
shift || true

APT_PACKAGES=(
  python3 python3-venv python3-dev gcc
  iproute2 iputils-ping ethtool procps psmisc kmod
  etcd-server etcd-client
  nftables iperf3 tcpdump tshark
  # container runtimes (docs/runtimes.md); docker.io must not start dockerd here: see setup()
  docker.io podman containernetworking-plugins busybox-static runc
  # openflow driver: Open vSwitch (tests run a private instance per host namespace;
  # setup() keeps the package from starting one in the root namespace)
  openvswitch-switch openvswitch-common
  python3-scapy  # security-group tests: spoofed frames and ARP crafted from containers
)

setup() {
  if [ "$(id -u)" != 0 ]; then echo "bootstrap.sh: run as root (it installs packages and builds kernel objects)" >&2; exit 2; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  # packages that would start a daemon in the root namespace (docker.io, openvswitch-switch)
  # must not: tests run dockerd and OVS inside their own namespaces
  local made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
  if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
  if command -v systemctl >/dev/null && systemctl is-active --quiet docker 2>/dev/null; then
    systemctl stop docker.socket docker containerd || true
  fi
  if [ -s /run/docker.pid ]; then kill "$(cat /run/docker.pid)" 2>/dev/null || true; fi
  # an OVS started anyway (no policy-rc.d honoured) is stopped by its pid files
  for pidfile in /var/run/openvswitch/ovs-vswitchd.pid /var/run/openvswitch/ovsdb-server.pid; do
    if [ -s "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
  done
  # Debian starts the packaged etcd as a service; netd's tests and demo run their own members.
  if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then systemctl stop etcd || true; fi
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[test]'
}

case "$action" in
  setup) setup ;;
  demo) setup; exec .venv/bin/netctl demo "$@" ;;
  test)
    setup
    .venv/bin/ruff check .
    .venv/bin/mypy
    set +e
    .venv/bin/pytest -q "$@"
    rc=$?
    set -e
    if [ "$rc" = 5 ]; then echo "bootstrap.sh: pytest collected no tests" >&2; exit 1; fi
    exit "$rc"
    ;;
  *) echo "usage: $0 [setup|demo|test] [args...]" >&2; exit 2 ;;
esac
