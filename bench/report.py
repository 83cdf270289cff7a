"""One Markdown report with PNG plots from the benchmarks, in one command.

    .venv/bin/python -m bench.report [--out bench-report] [--from DIR]
        [--only datapath,attach,converge]
        [--datapath-args "..."] [--attach-args "..."] [--converge-args "..."]

Without `--from`, it runs each benchmark (`python -m bench.<name> --json`, as root, one
after another, with progress on the terminal) and keeps their JSON in the output
directory as `<name>.json`; with `--from DIR` it reads those files instead (a benchmark
whose file is missing is listed as not run). Then it writes `report.md` and beside it:

* `throughput.png`: iperf3 median per path (driver/backend) with min-max bars, the
  same-run baselines (underlay, hand-built VXLAN) drawn apart, and each path's ratio
  to the underlay;
* `attach.png`: attach and detach latency (median, p99) against the endpoints on the host;
* `convergence.png`: attach-to-first-reply (median, p90, p99) against the host count.

Figures are only comparable within one run (bench/README.md): the report names the run's
machine and time, and never compares with another run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCHMARKS = ("datapath", "attach", "converge")
QUICK_ARGS = {
    "datapath": "--seconds 4 --repeat 2",
    "attach": "--count 400 --step 100",
    "converge": "--hosts 2,5,10 --samples 30",
}
BASELINES = ("underlay", "hand-built")


def run_benchmark(name: str, args: str, out: Path) -> Path:
    """`python -m bench.<name> --json ARGS`, its JSON kept as out/<name>.json."""
    target = out / f"{name}.json"
    cmd = [sys.executable, "-m", f"bench.{name}", "--json", *shlex.split(args)]
    print(f"running {' '.join(cmd[1:])} ...", file=sys.stderr, flush=True)
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"bench.{name} failed ({result.returncode}): {result.stderr[-800:]}")
    target.write_text(json.dumps(json_of(result.stdout), indent=2))
    return target


def json_of(stdout: str) -> Any:
    """The JSON document a benchmark printed, after any progress lines it printed first
    (the document starts at the first line beginning with `{` or `[`)."""
    lines = stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(("{", "["))), None)
    if start is None:
        raise SystemExit("the benchmark printed no JSON")
    return json.loads("\n".join(lines[start:]))


def load(directory: Path) -> dict[str, Any]:
    """Each benchmark's recorded JSON in `directory` (missing ones left out)."""
    found: dict[str, Any] = {}
    for name in BENCHMARKS:
        path = directory / f"{name}.json"
        if path.exists():
            found[name] = json.loads(path.read_text())
    return found


# --- plots -----------------------------------------------------------------------------
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_throughput(data: dict[str, Any], path: Path) -> list[tuple[str, Any, Any, Any, Any]]:
    rows = {name: r for name, r in data.get("rows", {}).items() if "median_mbit_s" in r}
    plt = _pyplot()
    names = list(rows)
    medians = [rows[n]["median_mbit_s"] for n in names]
    low = [m - rows[n].get("min_mbit_s", m) for n, m in zip(names, medians, strict=True)]
    high = [rows[n].get("max_mbit_s", m) - m for n, m in zip(names, medians, strict=True)]
    colors = ["#999999" if n in BASELINES else "#1f77b4" for n in names]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names) + 2), 4.5))
    ax.bar(names, medians, yerr=[low, high], color=colors, capsize=4)
    underlay = rows.get("underlay", {}).get("median_mbit_s")
    for i, n in enumerate(names):
        if underlay and n != "underlay":
            ax.annotate(f"{medians[i] / underlay:.2f}x", (i, medians[i]), ha="center",
                        va="bottom", fontsize=8, xytext=(0, 3), textcoords="offset points")
    ax.set_ylabel("Mbit/s (median, min-max)")
    ax.set_title("iperf3 TCP container to container across 2 hosts\n"
                 "(grey: same-run baselines; labels: ratio to the underlay)", fontsize=10)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [(n, rows[n]["median_mbit_s"], f"{rows[n].get('min_mbit_s')}-"
             f"{rows[n].get('max_mbit_s')}", rows[n].get("vs_underlay", ""),
             rows[n].get("vs_hand-built", "")) for n in names]


def _upper(rng: str) -> int:
    first, _, last = rng.partition("-")
    return max(int(first), int(last or first))


def plot_attach(data: dict[str, Any], path: Path) -> list[tuple[str, Any, Any, Any]]:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = []
    for kind, style in (("attach", "-"), ("detach", "--")):
        buckets = data.get(f"{kind}_buckets") or []
        xs = [_upper(b["range"]) for b in buckets]
        for stat in ("median_ms", "p99_ms"):
            ax.plot(xs, [b[stat] for b in buckets], style, marker="o",
                    label=f"{kind} {stat.removesuffix('_ms')}")
        rows += [(f"{kind} {b['range']}", b["median_ms"], b["p99_ms"], b.get("daemon_cpu_ms"))
                 for b in buckets]
    ax.set_xlabel("endpoints on the host")
    ax.set_ylabel("ms per request")
    ax.set_title(f"attach / detach through the API ({data.get('store', '?')} store)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return rows


def plot_convergence(data: list[dict[str, Any]], path: Path) -> list[tuple[Any, ...]]:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    hosts = [r["hosts"] for r in data]
    for stat in ("median_ms", "p90_ms", "p99_ms"):
        ax.plot(hosts, [r["from_send"].get(stat) for r in data], marker="o",
                label=stat.removesuffix("_ms"))
    ax.set_xlabel("hosts")
    ax.set_ylabel("ms from attach request to first reply")
    ax.set_title("convergence: attach on one host, ping from another")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [(r["hosts"], r["from_send"].get("median_ms"), r["from_send"].get("p90_ms"),
             r["from_send"].get("p99_ms"), r["from_send"].get("failures")) for r in data]


# --- the report ------------------------------------------------------------------------
def _md_table(rows: list[tuple[Any, ...]], headers: list[str]) -> list[str]:
    def cell(value: Any) -> str:
        return "" if value is None else str(value)

    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(cell(c) for c in row) + " |" for row in rows)]


def write_report(results: dict[str, Any], out: Path, when: str | None = None) -> Path:
    """report.md and its plots in `out` from the benchmarks' JSON."""
    out.mkdir(parents=True, exist_ok=True)
    when = when or datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# netd benchmark report", "",
        f"{when}, {platform.node()} ({os.cpu_count()} cores, {platform.machine()}). "
        "Figures compare only within this run.", "",
    ]
    if "datapath" in results:
        rows = plot_throughput(results["datapath"], out / "throughput.png")
        lines += ["## Throughput per driver and backend", "",
                  "![throughput](throughput.png)", "",
                  *_md_table(rows, ["path", "median Mbit/s", "min-max", "vs underlay",
                                    "vs hand-built"]), ""]
        failed = {n: r["errors"] for n, r in results["datapath"].get("rows", {}).items()
                  if r.get("errors")}
        lines += [f"- {n}: {len(e)} failed run(s): {str(e[0])[:160]}" for n, e in failed.items()]
    if "attach" in results:
        rows = plot_attach(results["attach"], out / "attach.png")
        a = results["attach"]
        lines += ["## Attach latency against endpoints", "", "![attach](attach.png)", "",
                  *_md_table(rows, ["bucket", "median ms", "p99 ms", "netd cpu ms/req"]), "",
                  f"{a.get('count')} containers, {a.get('failures', 0)} failed requests.", ""]
    if "converge" in results:
        rows = plot_convergence(results["converge"], out / "convergence.png")
        lines += ["## Convergence against host count", "", "![convergence](convergence.png)",
                  "", *_md_table(rows, ["hosts", "median ms", "p90 ms", "p99 ms",
                                        "failures"]), ""]
    missing = [n for n in BENCHMARKS if n not in results]
    if missing:
        lines += ["## Not run", "", *(f"- {n}" for n in missing), ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-report"))
    parser.add_argument("--from", dest="source", type=Path,
                        help="read <name>.json recorded here instead of running")
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help="comma-separated benchmarks to run")
    for name in BENCHMARKS:
        parser.add_argument(f"--{name}-args", default=QUICK_ARGS[name],
                            help=f"arguments for bench.{name} (default: {QUICK_ARGS[name]})")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.source is None:
        chosen = [n for n in args.only.split(",") if n]
        unknown = set(chosen) - set(BENCHMARKS)
        if unknown:
            parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
        for i, name in enumerate(chosen, 1):
            print(f"[{i}/{len(chosen)}] {name}", file=sys.stderr, flush=True)
            run_benchmark(name, getattr(args, f"{name}_args"), args.out)
        source = args.out
    else:
        source = args.source
    report = write_report(load(source), args.out)
    print(f"report written: {report}")


if __name__ == "__main__":
    main()
