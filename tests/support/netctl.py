"""What the functional tests expect of a refused netctl command: it fails, with one line
on stderr a user can act on."""

from __future__ import annotations

from netd.lab import Lab


def netctl_fails(lab: Lab, host: str, *args: str) -> str:
    """Run netctl on `host`, assert it fails with one line on stderr; that line."""
    r = lab.netctl(host, *args, check=False)
    assert r.returncode != 0, f"netctl {' '.join(args)} should fail: {r.stdout}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]
