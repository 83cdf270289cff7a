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
  python3-scapy  # security-group tests: spoofed frames and ARP crafted from containers
)

setup() {
  if [ "$(id -u)" != 0 ]; then echo "bootstrap.sh: run as root (it installs packages and builds kernel objects)" >&2; exit 2; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
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
