"""A miniature `ebsdnet bench`: every method runs on a 3×3 map and the 9 real patterns."""

import json

from ebsdnet.bench import CONDITIONS, Condition, run_bench


def test_bench_runs_every_method_and_writes_its_reports(tmp_path):
    import os

    cache_dir = os.environ.get("NUMBA_CACHE_DIR")
    conditions = (Condition("noise-free", None), CONDITIONS[-1])  # + the 9 real patterns
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# b\n\n<!-- bench -->\nold\n<!-- /bench -->\n")
    report = run_bench(
        tmp_path / "out", quick=True, conditions=conditions, map_size=3,
        resolutions=(8.0,), benchmarks_md=md, compiled=False,
    )  # fmt: skip
    methods = {r["method"] for r in report["results"]}
    assert methods == {
        "ebsdnet CNN",
        "ebsdnet CNN + refinement",
        "PyEBSDIndex Hough",
        "kikuchipy DI 8.0°",
        "kikuchipy DI 8.0° + refinement",
        "CNN + kikuchipy refinement",
    }
    by = {(r["condition"], r["method"]): r for r in report["results"]}
    for condition in conditions:
        for method in methods:
            row = by[(condition.name, method)]
            assert row["n"] == 9  # 3×3 map, 9 real patterns
            assert row["patterns_per_s"] > 0 and row["errors"]["mean"] >= 0
    # Refinement finds the simulated truth; on this map the CNN alone cannot be that close.
    assert by[("noise-free", "ebsdnet CNN + refinement")]["errors"]["mean"] < 0.05
    assert by[("noise-free", "ebsdnet CNN")]["errors"]["mean"] > 0.1
    out = tmp_path / "out"
    assert json.loads((out / "bench.json").read_text())["quick"] is True
    assert (out / "error_vs_dose.png").stat().st_size > 1000
    # PyEBSDIndex's redirection of numba's cache must not reach child processes.
    assert os.environ.get("NUMBA_CACHE_DIR") == cache_dir
    text = md.read_text()
    assert "old" not in text and "PyEBSDIndex Hough" in text and text.startswith("# b")


def test_timing_keeps_the_fastest_of_the_repeats():
    import time

    from ebsdnet.bench import _timed

    pauses = iter([0.05, 0.01, 0.03])
    calls = []

    def step():
        time.sleep(next(pauses))
        calls.append(1)
        return len(calls)

    value, seconds, peak = _timed(step, repeats=3)
    assert value == 3 and len(calls) == 3
    assert 0.01 <= seconds < 0.03 and peak >= 0
