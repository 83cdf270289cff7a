"""Security groups: not available yet (nothing creates them until the security-group
work lands), so an attach naming one is refused up front instead of failing later."""

from __future__ import annotations

from netd.errors import Unsupported


def refuse_groups(groups: tuple[str, ...]) -> None:
    if groups:
        raise Unsupported(
            f"security groups are not available yet (asked for {', '.join(groups)}); "
            "attach without --sg"
        )
