"""``ebsdnet bench``: ebsdnet beside kikuchipy dictionary indexing and PyEBSDIndex Hough.

Every method indexes the same patterns in the same process, one after the
other, and is scored against the known truth by the symmetry-reduced
disorientation. Test maps are simulated Ni polycrystals (Voronoi grains with
small orientation gradients) on a fixed detector background, saved as real
h5ebsd files and loaded back, under several conditions; the nine real Ni
patterns shipped with kikuchipy are scored against their stored reference
orientations.

Methods:

- ``ebsdnet CNN``: :func:`ebsdnet.index` with ``refine=False``;
- ``ebsdnet CNN + refinement``: :func:`ebsdnet.index` (the default);
- either with ``, compiled``: the same through ``torch.compile``, as ``index``
  runs maps of ``COMPILE_MIN_PATTERNS`` patterns and more (compile timed apart);
- ``kikuchipy DI <r>°``: :meth:`EBSD.dictionary_indexing` against a dictionary
  simulated at resolution ``r`` with kikuchipy (build time reported apart);
- ``kikuchipy DI <r>° + refinement``: its :meth:`EBSD.refine_orientation`
  (Nelder–Mead) from the dictionary answer;
- ``CNN + kikuchipy refinement``: the same kikuchipy refinement started from
  the ebsdnet CNN's answers;
- ``PyEBSDIndex Hough``: :meth:`EBSD.hough_indexing` (numba warmed up first).

Timings are wall time of the indexing step per pattern, including each
method's own pattern conditioning (kikuchipy: static and dynamic background
removal; ebsdnet: :func:`~ebsdnet.preprocess.preprocess`) and, for ebsdnet,
loading the model. ebsdnet's and Hough's steps are timed ``repeats`` times and
the fastest run counts: on a shared 2-core machine Hough's single runs moved by
20–50% between bench runs (ebsdnet's less), which made single-run ratios noise.
Dictionary indexing and kikuchipy's refinement, ten times slower, run once.
Peak memory is the highest resident-set size above the level before the step,
sampled every 10 ms. Patterns a method leaves not indexed count with the
orientation it reports.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ebsdnet.indexing import COMPILE_MIN_PATTERNS
from ebsdnet.metrics import error_summary
from ebsdnet.report import machine, write_section
from ebsdnet.rotations import disorientation_deg

__all__ = ["CONDITIONS", "Condition", "kikuchipy_dictionary", "run_bench"]

log = logging.getLogger(__name__)

ENERGY_KV = 20.0  # kikuchipy's shipped Ni master pattern
TRUST_REGION_DEG = (2.0, 2.0, 2.0)  # kikuchipy refinement's Euler-angle bounds


@dataclass(frozen=True)
class Condition:
    """One test map: a dose (``None``: noise-free) and the PC's offset from the model's nominal.

    ``stated_pc_error`` is added to the PC written into the file (a roughly known PC);
    such maps also get the row ``ebsdnet … + PC refinement`` (``--refine-pc``).
    """

    name: str
    dose: float | None
    pc_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    real: bool = False
    stated_pc_error: tuple[float, float, float] = (0.0, 0.0, 0.0)


CONDITIONS = (
    Condition("noise-free", None),
    Condition("moderate noise (dose 100)", 100.0),
    Condition("PC off nominal by 0.02 (dose 100)", 100.0, (0.02, -0.02, 0.02)),
    Condition("stated PC wrong by 0.01 (dose 100)", 100.0, stated_pc_error=(0.01, -0.01, 0.01)),
    Condition("low dose (30)", 30.0),
    Condition("very low dose (15)", 15.0),
    Condition("9 real Ni patterns (kikuchipy)", None, real=True),
)


@dataclass
class Result:
    condition: str
    method: str
    n: int
    seconds: float
    peak_mb: float
    errors: dict = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.n / max(self.seconds, 1e-9)


class PeakMemory:
    """Highest resident-set size above the starting level while the block runs (MB)."""

    def __enter__(self) -> PeakMemory:
        import psutil

        self._process = psutil.Process()
        self._base = self._process.memory_info().rss
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.01):
            rss = self._process.memory_info().rss
            self.peak_mb = max(self.peak_mb, (rss - self._base) / 2**20)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _timed(fn, repeats: int = 1):
    """Run ``fn()`` ``repeats`` times; return its last value, the fastest run's seconds
    and the highest peak memory (MB) of any run."""
    fastest, peak = math.inf, 0.0
    for _ in range(repeats):
        with PeakMemory() as memory:
            t0 = time.perf_counter()
            value = fn()
            fastest = min(fastest, time.perf_counter() - t0)
        peak = max(peak, memory.peak_mb)
    return value, fastest, peak


def _import_pyebsdindex() -> None:
    """Import PyEBSDIndex without letting it redirect numba's cache for child processes.

    Its modules point ``NUMBA_CACHE_DIR`` at a folder of their own on import.
    Processes started afterwards (subprocesses, DDP workers) then share that
    folder for every numba function (orix's, kikuchipy's), and one killed or
    racing while writing it leaves a cache that crashes the next reader
    (measured here: SIGSEGV). This process keeps PyEBSDIndex's setting; the
    environment its children inherit is restored.
    """
    saved = os.environ.get("NUMBA_CACHE_DIR")
    import pyebsdindex.ebsd_index  # noqa: F401  (imports the modules that set it)

    if saved is None:
        os.environ.pop("NUMBA_CACHE_DIR", None)
    else:
        os.environ["NUMBA_CACHE_DIR"] = saved


def _kikuchipy_conditioned(signal):
    """kikuchipy's usual conditioning: static, then dynamic background removal."""
    s = signal.deepcopy()
    s.change_dtype("float32")
    if s.static_background is not None:
        s.remove_static_background(show_progressbar=False)
    s.remove_dynamic_background(show_progressbar=False)
    return s


def _test_maps(conditions, size: int, model_pc: tuple[float, float, float], mp, workdir: Path):
    """Yield ``(condition, signal loaded from an h5ebsd file, truth quaternions)``."""
    import kikuchipy as kp

    from ebsdnet.projector import DetectorGeometry
    from ebsdnet.synthetic import simulate_map

    grains = max(1, size * size // 80)
    for i, condition in enumerate(conditions):
        if condition.real:
            signal = kp.data.nickel_ebsd_small()
        else:
            pc = np.add(model_pc, condition.pc_offset)
            stated = pc + np.asarray(condition.stated_pc_error)
            generated = simulate_map(
                (size, size), n_grains=grains, geometry=DetectorGeometry(pc=tuple(pc)),
                dose=condition.dose, seed=100 + i, master_pattern=mp, file_pc=stated,
            )  # fmt: skip
            path = workdir / f"map{i}.h5"
            generated.save(path)
            signal = kp.load(path)
            signal.xmap = generated.xmap
        yield condition, signal, torch.tensor(signal.xmap.rotations.data)


def kikuchipy_dictionary(kp_mp, detector, resolution: float):
    """kikuchipy's dictionary of master pattern ``kp_mp`` on ``detector``: its patterns of a
    ``resolution``° sampling of the fundamental zone, computed (an ``EBSD`` signal)."""
    from orix.sampling import get_sample_fundamental

    rotations = get_sample_fundamental(resolution, point_group=kp_mp.phase.point_group)
    return kp_mp.get_patterns(
        rotations, detector, energy=ENERGY_KV, compute=True, show_progressbar=False
    )


def _best_rotations(xmap) -> np.ndarray:
    """Each point's best quaternion ``(N, 4)`` (dictionary indexing may keep several)."""
    return np.asarray(xmap.rotations.data).reshape(xmap.size, -1, 4)[:, 0]


def _all_indexed(xmap, phase_list):
    """The map's best rotation per point, every point in phase 0 (a start for refinement)."""
    from orix.crystal_map import CrystalMap
    from orix.quaternion import Rotation

    return CrystalMap(
        rotations=Rotation(_best_rotations(xmap)),
        phase_id=np.zeros(xmap.size, dtype=int),
        x=xmap.x,
        y=xmap.y,
        phase_list=phase_list,
    )


def _quiet(fn):
    """Run a kikuchipy/PyEBSDIndex call without its console output."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn()


class _Bench:
    """State shared across conditions: model, master patterns, dictionaries, results."""

    def __init__(
        self, model: str, resolutions: tuple[float, ...], compiled: bool, repeats: int
    ) -> None:
        from orix.crystal_map import PhaseList

        from ebsdnet.cards import load_model
        from ebsdnet.projector import DetectorGeometry, MasterPattern

        _import_pyebsdindex()
        self.model = model
        _, card = load_model(model)
        self.point_group = card["point_group"]
        self.nominal = DetectorGeometry(shape=tuple(card["shape"]), pc=tuple(card["pc_nominal"]))
        self.mp = MasterPattern.nickel()
        self.kp_mp = self.mp.to_kikuchipy()  # every method reads the same master pattern
        self.phase_list = PhaseList(self.kp_mp.phase)
        self.resolutions = resolutions
        self.dictionaries: dict[tuple, object] = {}
        self.build_seconds: dict[str, float] = {}
        self.results: list[Result] = []
        self.hough_warmed = False
        self.compiled = compiled
        self.repeats = repeats
        self.compile_seconds: float | None = None
        self._time_fallback_build(card)

    def _time_fallback_build(self, card: dict) -> None:
        """Build (and time) the fallback dictionary that ``index`` then takes from its cache."""
        from ebsdnet.indexing import FALLBACK_RESOLUTION_DEG, fallback_dictionary
        from ebsdnet.preprocess import PreprocessConfig
        from ebsdnet.projector import Projector

        t0 = time.perf_counter()
        config = PreprocessConfig(**card["preprocessing"])
        pc = torch.tensor(self.nominal.pc)
        d = fallback_dictionary(Projector(self.mp, self.nominal), pc, config)
        label = f"ebsdnet's {FALLBACK_RESOLUTION_DEG:g}° fallback ({len(d):,} patterns, torch)"
        self.build_seconds[label] = time.perf_counter() - t0

    def _warm_compiled(self, ours) -> None:
        """Compile the refinement once (timed apart, like the dictionaries)."""
        if self.compile_seconds is None:
            t0 = time.perf_counter()
            ours(True, compiled=True)
            self.compile_seconds = time.perf_counter() - t0
        else:
            ours(True, compiled=True)  # a new map's shapes may still recompile

    def score(self, condition, truth, method: str, xmap, seconds: float, peak: float) -> None:
        err = disorientation_deg(torch.from_numpy(_best_rotations(xmap)), truth, self.point_group)
        self.results.append(
            Result(condition.name, method, int(xmap.size), seconds, peak, error_summary(err))
        )
        log.info("  %-34s %8.3f° mean %9.1f patterns/s", method, err.mean(), xmap.size / seconds)

    def dictionary(self, detector, resolution: float):
        """kikuchipy dictionary at ``resolution`` for ``detector``'s (mean) PC, cached."""
        key = (resolution, tuple(np.round(detector.pc_average, 4)))
        if key not in self.dictionaries:
            # One dictionary per PC: drop those made for another map's PC.
            self.dictionaries = {k: v for k, v in self.dictionaries.items() if k[1] == key[1]}
            t0 = time.perf_counter()
            dictionary = kikuchipy_dictionary(self.kp_mp, detector, resolution)
            self.dictionaries[key] = dictionary
            pc = ", ".join(f"{v:.3f}" for v in key[1])
            size = dictionary.axes_manager.navigation_size
            label = f"{resolution}° ({size:,} patterns, PC {pc})"
            self.build_seconds[label] = time.perf_counter() - t0
        return self.dictionaries[key]

    def run_condition(self, condition: Condition, signal, truth) -> None:
        from ebsdnet.indexing import index

        def ours(refine: bool, refine_pc: bool = False, compiled: bool = False):
            return index(
                signal, model=self.model, master_pattern=self.mp, refine=refine,
                refine_pc=refine_pc, show_progressbar=False, compiled=compiled,
            )  # fmt: skip

        # Warm-up: torch's first-call costs, and the fallback dictionary for this map's
        # PC when it needs one (its build is timed apart, like kikuchipy's dictionaries).
        ours(True)
        variants = [(False, "")]
        if self.compiled:  # index's default for maps of COMPILE_MIN_PATTERNS and more
            variants.append((True, ", compiled"))
            self._warm_compiled(ours)
            ours(False, compiled=True)  # the compiled CNN and NCC for this map's batch shapes
        cnn_runs = {}
        for compiled, label in variants:
            cnn_runs[compiled] = _timed(
                lambda compiled=compiled: ours(False, compiled=compiled), self.repeats
            )
            self.score(condition, truth, f"ebsdnet CNN{label}", *cnn_runs[compiled])
        cnn, cnn_seconds, _ = cnn_runs[False]  # the start of kikuchipy's refinement below
        for compiled, label in variants:
            xmap, seconds, peak = _timed(
                lambda compiled=compiled: ours(True, compiled=compiled), self.repeats
            )
            self.score(condition, truth, f"ebsdnet CNN + refinement{label}", xmap, seconds, peak)
        if any(condition.stated_pc_error):
            compiled = self.compiled
            if compiled:
                ours(True, refine_pc=True, compiled=True)  # its own compiled variants
            xmap, seconds, peak = _timed(
                lambda: ours(True, refine_pc=True, compiled=compiled), self.repeats
            )
            label = ", compiled" if compiled else ""
            self.score(
                condition, truth, f"ebsdnet CNN + refinement + PC refinement{label}", xmap,
                seconds, peak,
            )  # fmt: skip

        detector = signal.detector
        single_pc = detector.deepcopy()
        single_pc.pc = detector.pc_average

        def hough():
            indexer = single_pc.get_indexer(self.phase_list)
            conditioned = _kikuchipy_conditioned(signal)
            return _quiet(lambda: conditioned.hough_indexing(self.phase_list, indexer, verbose=0))

        if not self.hough_warmed:
            hough()  # numba compiles on the first call
            self.hough_warmed = True
        xmap, seconds, peak = _timed(hough, self.repeats)
        self.score(condition, truth, "PyEBSDIndex Hough", xmap, seconds, peak)

        def kikuchipy_refined(start):
            conditioned = _kikuchipy_conditioned(signal)
            return _quiet(
                lambda: conditioned.refine_orientation(
                    _all_indexed(start, self.phase_list), detector, self.kp_mp,
                    energy=ENERGY_KV, trust_region=list(TRUST_REGION_DEG), compute=True,
                )
            )  # fmt: skip

        for resolution in self.resolutions:
            dictionary = self.dictionary(single_pc, resolution)

            def di(dictionary=dictionary):
                conditioned = _kikuchipy_conditioned(signal)
                return _quiet(lambda: conditioned.dictionary_indexing(dictionary, keep_n=1))

            found, seconds, peak = _timed(di)
            self.score(condition, truth, f"kikuchipy DI {resolution}°", found, seconds, peak)
            xmap, more, peak_ref = _timed(lambda found=found: kikuchipy_refined(found))
            self.score(
                condition, truth, f"kikuchipy DI {resolution}° + refinement", xmap,
                seconds + more, max(peak, peak_ref),
            )  # fmt: skip
        xmap, seconds, peak = _timed(lambda: kikuchipy_refined(cnn))
        self.score(
            condition, truth, "CNN + kikuchipy refinement", xmap, cnn_seconds + seconds, peak
        )


def run_bench(
    out: Path,
    quick: bool = False,
    model: str = "ni-60",
    benchmarks_md: Path | None = None,
    conditions: tuple[Condition, ...] = CONDITIONS,
    map_size: int | None = None,
    resolutions: tuple[float, ...] | None = None,
    compiled: bool = True,
    repeats: int | None = None,
) -> dict:
    """Run every method on every condition; write JSON, Markdown and a plot into ``out``.

    ``quick``: 16×16 maps, otherwise 40×40; kikuchipy's dictionary at 2° (a 1.4°
    one can be added through ``resolutions``: it needs ~8 GB more, and a full run
    with it was killed for memory on a 24 GB machine in its sixth condition).
    ``map_size`` and ``resolutions`` override these.
    ``compiled``: also time the CNN and refinement through ``torch.compile`` (its
    compile timed apart). ``repeats``: runs of each ebsdnet and Hough step, the
    fastest counting (default 1 with ``quick``, else 3).
    """
    out.mkdir(parents=True, exist_ok=True)
    size = map_size or (16 if quick else 40)
    resolutions = resolutions or (2.0,)
    repeats = repeats or (1 if quick else 3)
    bench = _Bench(model, resolutions, compiled, repeats)
    workdir = Path(tempfile.mkdtemp(prefix="ebsdnet-bench-"))
    try:
        maps = _test_maps(conditions, size, bench.nominal.pc, bench.mp, workdir)
        for condition, signal, truth in maps:
            log.info("%s: %d patterns", condition.name, signal.axes_manager.navigation_size)
            bench.run_condition(condition, signal, truth)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results = bench.results
    report = {
        "machine": machine(),
        "quick": quick,
        "model": model,
        "repeats": repeats,
        "conditions": [asdict(c) for c in conditions],
        "dictionary_build_s": bench.build_seconds,
        "compile_s": bench.compile_seconds,
        "results": [{**asdict(r), "patterns_per_s": r.rate} for r in results],
    }
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot(results, conditions, out / "error_vs_dose.png")
    (out / "bench.md").write_text(_markdown(report, results, conditions, "error_vs_dose.png"))
    if benchmarks_md is not None:
        # BENCHMARKS.md shows the plot from docs/figures beside it.
        figure = Path(benchmarks_md).parent / "docs" / "figures" / "bench_error_vs_dose.png"
        figure.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "error_vs_dose.png", figure)
        link = "docs/figures/bench_error_vs_dose.png"
        write_section("bench", _markdown(report, results, conditions, link), benchmarks_md)
    return report


def _markdown(report: dict, results: list[Result], conditions, figure: str) -> str:
    mode = "--quick" if report["quick"] else "full"
    lines = [
        f"## `ebsdnet bench` ({mode}): ebsdnet beside kikuchipy DI and PyEBSDIndex Hough",
        "",
        f"Measured by `ebsdnet bench{' --quick' if report['quick'] else ''}` on: "
        f"{report['machine']}. Model `{report['model']}`.",
        "All methods index the same patterns in the same run; errors are symmetry-reduced "
        "disorientations from the truth (degrees); patterns/s is the wall time of the indexing "
        "step including each method's own background removal"
        + (
            f" (ebsdnet and Hough: the fastest of {report['repeats']} runs)"
            if report.get("repeats", 1) > 1
            else ""
        )
        + "; memory is the peak resident "
        "set above the level before the step. Dictionaries are simulated before the timed steps "
        "and timed apart (kikuchipy's one per map PC): "
        + ", ".join(f"{k}: {v:.0f} s" for k, v in report["dictionary_build_s"].items())
        + "."
        + (
            f" Rows marked *compiled* run the CNN and the projections through `torch.compile`, "
            f"as `ebsdnet index` does by default for maps of {COMPILE_MIN_PATTERNS:,} patterns "
            f"or more; its compile ({report['compile_s']:.0f} s, once per process) is timed apart."
            if report.get("compile_s") is not None
            else ""
        ),
        "",
        f"![mean error against dose, per method]({figure})",
    ]
    for condition in conditions:
        rows = [r for r in results if r.condition == condition.name]
        if not rows:
            continue
        hough = next((r.rate for r in rows if r.method == "PyEBSDIndex Hough"), float("nan"))
        di_row = next(
            (r for r in rows if r.method.startswith("kikuchipy DI") and "+" not in r.method), None
        )
        di = di_row.rate if di_row else float("nan")
        di_name = di_row.method.removeprefix("kikuchipy ") if di_row else "DI"
        lines += [
            "",
            f"### {condition.name} ({rows[0].n:,} patterns)",
            "",
            "| method | mean | median | p90 | > 3° | > 10° | patterns/s | × Hough "
            f"| × {di_name} | peak MB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            e = r.errors
            lines.append(
                f"| {r.method} | {e['mean']:.3f}° | {e['median']:.3f}° | {e['p90']:.3f}° | "
                f"{100 * e['share_above_3']:.1f}% | {100 * e['share_above_10']:.1f}% | "
                f"{r.rate:,.0f} | {r.rate / hough:.2f} | {r.rate / di:.2f} | {r.peak_mb:,.0f} |"
            )
    return "\n".join(lines) + "\n"


def _plot(results: list[Result], conditions, path: Path) -> None:
    """Mean error against dose (nominal PC) per method, log scale."""
    from ebsdnet.plots import pyplot

    plt = pyplot()
    series = [c for c in conditions if not (c.real or any(c.pc_offset) or any(c.stated_pc_error))]
    series.sort(key=lambda c: float("inf") if c.dose is None else c.dose)
    labels = ["noise-free" if c.dose is None else f"{c.dose:g}" for c in series]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    # Compiled rows repeat their eager twins' errors.
    methods = [m for m in dict.fromkeys(r.method for r in results) if "compiled" not in m]
    for method in methods:
        means = []
        for c in series:
            hit = [r for r in results if r.method == method and r.condition == c.name]
            means.append(hit[0].errors["mean"] if hit else np.nan)
        if np.isfinite(means).any():  # methods run only on other maps stay out
            ax.plot(labels, means, marker="o", label=method)
    ax.set_yscale("log")
    ax.set_xlabel("dose (counts per pixel)")
    ax.set_ylabel("mean disorientation (°)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
