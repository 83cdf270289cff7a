"""bench.report writes its Markdown report and PNG plots from recorded benchmark JSON."""

from __future__ import annotations

import json
from pathlib import Path

from bench import report

DATAPATH = {"rows": {
    "underlay": {"runs": [9000, 9400], "median_mbit_s": 9200, "min_mbit_s": 9000,
                 "max_mbit_s": 9400, "retransmits_median": 0, "errors": []},
    "hand-built": {"runs": [5000], "median_mbit_s": 5000, "min_mbit_s": 5000,
                   "max_mbit_s": 5000, "vs_underlay": 0.54, "retransmits_median": 0,
                   "errors": []},
    "fastdp": {"runs": [4900], "median_mbit_s": 4900, "min_mbit_s": 4800, "max_mbit_s": 5000,
               "vs_underlay": 0.53, "vs_hand-built": 0.98, "retransmits_median": 1,
               "errors": []},
    "sleeve": {"runs": [], "errors": ["iperf3 did not connect"]},
}, "shape_differences": []}
ATTACH = {"store": "embedded", "count": 200, "failures": 0,
          "attach_buckets": [{"range": "1-100", "n": 100, "median_ms": 20.1, "p99_ms": 40.0,
                              "max_ms": 50.0, "daemon_cpu_ms": 5.0},
                             {"range": "101-200", "n": 100, "median_ms": 22.4, "p99_ms": 45.0,
                              "max_ms": 60.0, "daemon_cpu_ms": 5.5}],
          "detach_buckets": [{"range": "200-101", "n": 100, "median_ms": 15.0, "p99_ms": 30.0,
                              "max_ms": 31.0, "daemon_cpu_ms": 4.0}]}
CONVERGE = [{"hosts": n, "from_send": {"n": 30, "median_ms": 100 + n, "p90_ms": 150 + n,
                                       "p99_ms": 200 + n, "max_ms": 300, "failures": 0}}
            for n in (2, 5, 10)]


def record(directory: Path, **results: object) -> Path:
    directory.mkdir()
    for name, value in results.items():
        (directory / f"{name}.json").write_text(json.dumps(value))
    return directory


def test_report_and_plots_from_recorded_json(tmp_path: Path) -> None:
    source = record(tmp_path / "rec", datapath=DATAPATH, attach=ATTACH, converge=CONVERGE)
    out = tmp_path / "out"
    report.main(["--from", str(source), "--out", str(out)])
    text = (out / "report.md").read_text()
    for section in ("## Throughput per driver and backend", "## Attach latency against "
                    "endpoints", "## Convergence against host count"):
        assert section in text
    assert "| fastdp | 4900 | 4800-5000 | 0.53 | 0.98 |" in text
    assert "sleeve: 1 failed run(s): iperf3 did not connect" in text
    assert "| 10 | 110 | 160 | 210 | 0 |" in text
    assert "Not run" not in text
    for png in ("throughput.png", "attach.png", "convergence.png"):
        assert f"]({png})" in text
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_missing_benchmarks_are_listed_as_not_run(tmp_path: Path) -> None:
    source = record(tmp_path / "rec", converge=CONVERGE)
    out = tmp_path / "out"
    path = report.write_report(report.load(source), out, when="then")
    text = path.read_text()
    assert "## Not run" in text and "- datapath" in text and "- attach" in text
    assert not (out / "throughput.png").exists() and (out / "convergence.png").exists()


def test_progress_lines_before_the_json_are_skipped() -> None:
    printed = "  round 1/1 underlay: {'mbit_s': 2867}\n" + json.dumps(DATAPATH, indent=2)
    assert report.json_of(printed) == DATAPATH
