"""Policy: security groups, anti-spoofing and tenant separation, computed once and
enforced in the kernel.

* `rules`: groups and rules from user input (validation, rule ids).
* `model`: the computed policy, typed: per local endpoint its allowed IP/MAC and its
  resolved rules, per group its member addresses (what drivers that enforce policy
  themselves, e.g. openflow, read from `HostState.policy`).
* `compute`: pure, from the store's records and this host (beside netd.calc).
* `nft`: renders the policy of the kernel drivers' ports into netd's own nftables
  tables and applies it atomically; `worker`: its own reconcile thread.

The design (why bridge-family anti-spoofing plus inet-family conntrack through
br_netfilter) is in docs/policy.md.
"""
