"""Index multi-phase maps from CIFs: ``ebsdnet index --phase A --phase B`` beside the peers.

    python benchmarks/multiphase.py [--size 30] [--resolution 2] [--dose 200]
                                    [--cases duplex three_phase]
                                    [--skip-ebsdnet | --skip-peers]
                                    [--workdir DIR | --keep] [--write]

Two test cases (issue #26), written to a work folder as a user would get them: an
h5ebsd pattern file, the phases' CIFs and ``truth.json`` (each point's phase and
orientation, true and stated PC, camera settings):

- ``duplex``: bcc ferrite (Fe, Im-3m) + fcc austenite (Fe, Fm-3m, a = 3.595 Å);
- ``three_phase``: ferrite + austenite + hcp α-Ti (P6_3/mmc).

Each is a Voronoi polycrystal (``ebsdnet.synthetic.polycrystal_orientations``) of
``--size``² patterns of 60×60 whose grain g is of phase g mod K. Patterns come from
kikuchipy (each phase's kinematical master pattern from its CIF, finer and fuller
than the peers' templates) through the same camera as ``benchmarks/phases.py``:
barrel distortion, point spread, vignetting, a drifting background, gamma, Poisson
noise, 8 bits, hot pixels; the file's PC is off the true one by ≈0.004.

Each method gets the file and the CIFs, timed as whole steps:

- PyEBSDIndex Hough: one ``EBSDIndexer`` with a list of phases, each built with
  its lattice type (``BCC``/``FCC``/``HCP``; REFERENCES.md, Pitfalls), through
  :meth:`EBSD.hough_indexing`; numba warmed up first;
- kikuchipy, as its multi-phase tutorial does it: per phase a kinematical master
  pattern and a dictionary over ``get_sample_fundamental(--resolution)``,
  :meth:`EBSD.dictionary_indexing` per dictionary, the maps merged by score with
  ``kikuchipy.indexing.merge_crystal_maps``, then :meth:`EBSD.refine_orientation`
  per phase on that phase's points (``navigation_mask``). The *whole* row adds
  the master patterns and dictionaries;
- ``ebsdnet -q index SCAN -o MAP.h5 --phase A.cif --phase B.cif ... --force`` in a
  subprocess, the whole command timed, first with an empty master-pattern cache,
  then with it filled. Its map's ``flag`` 5 (phase uncertain) is counted.

Scores: the share of points given the right phase, and on those points the
symmetry-reduced disorientation from the truth in each phase's Laue group.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from _report import machine, publish
from phases import (
    CIFS,
    ENERGY_KV,
    OURS,
    TRUST_REGION_DEG,
    TRUTH_SIMULATION,
    Case,
    _conditioned,
    _detector,
    _quiet,
    _rate,
    benchmark_parser,
    camera,
    close_workdir,
    ebsdnet_environment,
    kinematical_master_pattern,
    load_phase,
    rerun_flags,
    run_ebsdnet_command,
    run_ours,
)

LATTICE_TYPES = {"ferrite": "BCC", "austenite": "FCC", "alpha_ti": "HCP"}
FLAG_PHASE_UNCERTAIN = 5


@dataclass(frozen=True)
class MultiCase:
    """A multi-phase map: its phases (shipped CIFs) and the camera it goes through."""

    name: str
    title: str
    phases: tuple[str, ...]
    camera: Case  # phases.py's camera settings (its name and lattice type unused)


CASES = (
    MultiCase(
        "duplex", "duplex: bcc ferrite + fcc austenite", ("ferrite", "austenite"),
        Case("duplex", "", "", (60, 60), (0.471, 0.229, 0.561), (0.003, -0.002, 0.002),
             gamma=0.9, seed=3517),
    ),
    MultiCase(
        "three_phase", "three phases: ferrite + austenite + hcp α-Ti",
        ("ferrite", "austenite", "alpha_ti"),
        Case("three_phase", "", "", (60, 60), (0.496, 0.217, 0.583), (-0.002, 0.003, 0.002),
             gamma=1.1, distortion=-0.035, seed=6143),
    ),
)  # fmt: skip


# ---------------------------------------------------------------- test cases


def write_case(case: MultiCase, folder: Path, size: int, dose: float, masters: dict) -> dict:
    """Write ``patterns.h5``, the CIFs and ``truth.json`` into ``folder``; return the truth.

    ``masters`` caches the truth master pattern of each phase across cases.
    """
    import kikuchipy as kp
    from orix.quaternion import Rotation

    from ebsdnet.synthetic import polycrystal_orientations

    folder.mkdir(parents=True, exist_ok=True)
    k = len(case.phases)
    cam = case.camera
    n_grains = max(k, size * size // 40)
    q, grain = polycrystal_orientations((size, size), n_grains, seed=cam.seed)
    q = q.double().numpy()
    phase_index = grain % k
    clean = np.zeros((size * size, *cam.detector_shape))
    phases = []
    for i, name in enumerate(case.phases):
        cif = folder / f"{name}.cif"
        shutil.copyfile(CIFS / cif.name, cif)
        phase = load_phase(cif)
        phases.append(phase)
        if name not in masters:
            masters[name] = kinematical_master_pattern(phase, **TRUTH_SIMULATION)
        here = phase_index == i
        if here.any():
            simulate = partial(
                masters[name].get_patterns, Rotation(q[here]), _detector(cam, cam.pc),
                energy=ENERGY_KV, compute=True, show_progressbar=False,
            )  # fmt: skip
            clean[here] = _quiet(simulate).data.reshape(-1, *cam.detector_shape)
    patterns, static = camera(clean, cam, (size, size), dose)
    file_pc = tuple(float(p + e) for p, e in zip(cam.pc, cam.pc_error, strict=True))
    signal = kp.signals.EBSD(
        patterns.reshape(size, size, *cam.detector_shape),
        detector=_detector(cam, file_pc),
        static_background=static,
    )
    signal.save(folder / "patterns.h5", overwrite=True)
    truth = {
        "case": case.name,
        "phases": [p.name for p in phases],
        "point_groups": [p.point_group.name for p in phases],
        "space_groups": [p.space_group.number for p in phases],
        "map_shape": [size, size],
        "detector_shape": list(cam.detector_shape),
        "pc_true": list(cam.pc),
        "pc_file": list(file_pc),
        "master_pattern": {"kikuchipy kinematical from the CIF": TRUTH_SIMULATION},
        "camera": {
            "dose": dose, "gamma": cam.gamma, "blur_px": cam.blur_px,
            "distortion_k": cam.distortion, "contrast": cam.contrast,
        },
        "seed": cam.seed,
        "phase_index": phase_index.tolist(),
        "quaternions": q.tolist(),
    }  # fmt: skip
    (folder / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    return truth


# ---------------------------------------------------------------- scoring


@dataclass
class Row:
    method: str
    n: int
    seconds: float
    peak_mb: float | None
    phase_right: float = 0.0
    errors: dict = field(default_factory=dict)  # phase name → error_summary (or None)
    not_indexed: float = 0.0
    uncertain: float | None = None  # ebsdnet: share flagged "phase uncertain"
    failed: str | None = None

    @property
    def rate(self) -> float:
        return self.n / max(self.seconds, 1e-9)


def _phase_index(xmap, truth: dict) -> np.ndarray:
    """Each point's phase as an index into ``truth["phases"]`` (-1: none or another),
    matched by name: methods number their phases their own way."""
    names = truth["phases"]
    lookup = {i: names.index(p.name) if p.name in names else -1 for i, p in xmap.phases}
    return np.array([lookup.get(int(i), -1) for i in xmap.phase_id])


def _score(method, xmap, truth, seconds, peak_mb, quaternions=None) -> Row:
    from ebsdnet.metrics import error_summary
    from ebsdnet.rotations import disorientation_deg

    found_phase = _phase_index(xmap, truth)
    true_phase = np.asarray(truth["phase_index"])
    q = np.asarray(xmap.rotations.data if quaternions is None else quaternions, dtype=np.float64)
    found = torch.as_tensor(q.reshape(len(true_phase), -1, 4)[:, 0])
    true = torch.as_tensor(np.asarray(truth["quaternions"], dtype=np.float64))
    right = found_phase == true_phase
    errors = {}
    pairs = zip(truth["phases"], truth["point_groups"], strict=True)
    for i, (name, point_group) in enumerate(pairs):
        here = torch.as_tensor(right & (true_phase == i))
        errors[name] = (
            error_summary(disorientation_deg(found[here], true[here], point_group))
            if here.any()
            else None
        )
    uncertain = None
    if "flag" in xmap.prop:
        uncertain = float(np.mean(xmap.prop["flag"] == FLAG_PHASE_UNCERTAIN))
    row = Row(
        method, len(true_phase), seconds, peak_mb, float(right.mean()), errors,
        float(np.mean(found_phase == -1)), uncertain,
    )  # fmt: skip
    means = " ".join(f"{e['mean']:7.3f}°" if e else "      –" for e in errors.values())
    print(
        f"  {method:<48} phase {100 * row.phase_right:5.1f}% {means} "
        f"{seconds:8.1f} s {row.rate:8.1f} patterns/s",
        flush=True,
    )
    return row


# ---------------------------------------------------------------- methods


def run_hough(signal, phases, truth: dict) -> Row:
    """PyEBSDIndex Hough, one indexer with every phase's own band families."""
    from orix.crystal_map import PhaseList

    from ebsdnet.bench import PeakMemory, _import_pyebsdindex

    _import_pyebsdindex()  # before the imports below: it keeps NUMBA_CACHE_DIR for children
    from pyebsdindex.ebsd_index import EBSDIndexer
    from pyebsdindex.tripletvote import addphase

    detector = signal.detector

    def hough(s):
        band_indexers = [
            addphase(
                libtype=LATTICE_TYPES[phase.name], phasename=phase.name,
                latticeparameter=phase.structure.lattice.abcABG(),
            )
            for phase in phases
        ]  # fmt: skip
        indexer = EBSDIndexer(
            phaselist=band_indexers, vendor="KIKUCHIPY", PC=detector.pc_average,
            sampleTilt=detector.sample_tilt, camElev=detector.tilt, patDim=detector.shape,
        )  # fmt: skip
        return _conditioned(s).hough_indexing(PhaseList(phases), indexer, verbose=0)

    _quiet(lambda: hough(signal.inav[:1, :1]))  # numba compiles on the first call
    with PeakMemory() as memory:
        t0 = time.perf_counter()
        xmap = _quiet(lambda: hough(signal))
        seconds = time.perf_counter() - t0
    return _score("PyEBSDIndex Hough", xmap, truth, seconds, memory.peak_mb)


def run_kikuchipy(signal, phases, truth: dict, resolution: float) -> tuple[list[Row], dict]:
    """kikuchipy's multi-phase route: DI per phase, merged by score, refined per phase."""
    import kikuchipy as kp
    from orix.sampling import get_sample_fundamental

    from ebsdnet.bench import PeakMemory

    detector = signal.detector
    nav_shape = signal.axes_manager.navigation_shape[::-1]
    builds = {"master patterns": 0.0, "dictionaries": 0.0, "dictionary patterns": 0}
    with PeakMemory() as memory:
        masters, dictionaries = [], []
        for phase in phases:
            t0 = time.perf_counter()
            mp = _quiet(partial(kinematical_master_pattern, phase))
            t1 = time.perf_counter()
            rotations = get_sample_fundamental(resolution, point_group=phase.point_group)
            simulate = partial(
                mp.get_patterns, rotations, detector, energy=ENERGY_KV, compute=True,
                show_progressbar=False,
            )  # fmt: skip
            dictionary = _quiet(simulate)
            t2 = time.perf_counter()
            builds["master patterns"] += t1 - t0
            builds["dictionaries"] += t2 - t1
            builds["dictionary patterns"] += int(rotations.size)
            masters.append(mp)
            dictionaries.append(dictionary)
        build_seconds = builds["master patterns"] + builds["dictionaries"]
        t2 = time.perf_counter()
        conditioned = _quiet(lambda: _conditioned(signal))
        index = conditioned.dictionary_indexing
        # keep_n=2: kikuchipy 0.13's merge_crystal_maps fails on keep_n=1 maps, whose
        # scores (N, 1) and rotations (N, 1, 4) it does not expect
        maps = [_quiet(partial(index, d, keep_n=2)) for d in dictionaries]
        merged = _quiet(partial(kp.indexing.merge_crystal_maps, maps, mean_n_best=1))
        t3 = time.perf_counter()
        di_peak = memory.peak_mb
        dictionaries = maps = None  # their memory back before the refinement
        quaternions = np.asarray(merged.rotations.data).reshape(merged.size, -1, 4)[:, 0].copy()
        merged_phase = _phase_index(merged, truth)
        for i, mp in enumerate(masters):
            here = merged_phase == i
            if not here.any():
                continue
            refine = partial(
                conditioned.refine_orientation, merged, detector, mp, energy=ENERGY_KV,
                navigation_mask=~here.reshape(nav_shape), trust_region=TRUST_REGION_DEG,
                compute=True,
            )  # fmt: skip
            refined = _quiet(refine)
            # The refined map holds the phase's points alone, in map order.
            quaternions[here] = np.asarray(refined.rotations.data).reshape(-1, 4)
        t4 = time.perf_counter()
    label = f"kikuchipy DI {resolution:g}°, merged"
    rows = [
        _score(label, merged, truth, t3 - t2, di_peak),
        _score(f"{label} + refinement", merged, truth, t4 - t2, memory.peak_mb, quaternions),
        _score(
            f"{label} + refinement, whole (master patterns, dictionaries)", merged, truth,
            t4 - t2 + build_seconds, memory.peak_mb, quaternions,
        ),
    ]  # fmt: skip
    return rows, builds


def run_ebsdnet(folder: Path, cifs: list[Path], truth: dict) -> list[Row]:
    """``ebsdnet -q index --phase A --phase B ...``, whole command, cache empty then filled."""
    env = ebsdnet_environment(folder)
    rows = []
    for label in ("first run: simulates the master patterns", "master patterns cached"):
        method = f"{OURS}, {label}"
        xmap, seconds, peak, failed = run_ebsdnet_command(folder, cifs, env)
        if xmap is None:
            rows.append(Row(method, len(truth["quaternions"]), seconds, None, failed=failed))
            break
        rows.append(_score(method, xmap, truth, seconds, peak))
    return rows


# ---------------------------------------------------------------- report


def _markdown(results: list[dict], args, flags: str) -> list[str]:
    lines = [
        "## Multi-phase maps from CIFs: ferrite + austenite, + α-Ti",
        "",
        f"Measured by `python benchmarks/multiphase.py{flags} --write` on: {machine()}.",
        "Voronoi polycrystals, grain g of phase g mod K, patterns simulated by kikuchipy "
        "from each phase's kinematical master pattern (finer and fuller than the peers' "
        "templates) through the camera of `benchmarks/phases.py` (distortion, point spread, "
        "vignetting, drifting background, gamma, Poisson noise at dose "
        f"{args.dose:g}, 8-bit, hot pixels; PC off by ≈0.004). Every method gets the file "
        "and the CIFs: PyEBSDIndex Hough with one indexer over all phases, each with its "
        "lattice type; kikuchipy as its multi-phase tutorial: one "
        f"{args.resolution:g}° dictionary per phase, `dictionary_indexing` per dictionary, "
        "`merge_crystal_maps` by score, `refine_orientation` per phase on its points (the "
        "*whole* row adds building master patterns and dictionaries)"
        + (
            "; `ebsdnet -q index scan.h5 -o map.h5 --phase A.cif --phase B.cif ...` timed as "
            "a whole command, first with an empty master-pattern cache, then with it filled "
            "(*uncertain*: points it flags 5, phase uncertain)"
            if any(r["method"].startswith(OURS) for case in results for r in case["rows"])
            else ""
        )
        + ". *Phase right*: share of points given the true phase; errors (mean / median / "
        "p90): symmetry-reduced disorientation from the truth on the points phased right.",
    ]
    for case in results:
        b = case["builds"]
        names = case["phases"]
        lines += ["", f"### {case['title']} ({case['rows'][0]['n']:,} patterns, 60×60)", ""]
        if b:
            lines += [
                f"kikuchipy: master patterns {b['master patterns']:.0f} s, dictionaries of "
                f"{b['dictionary patterns']:,} patterns {b['dictionaries']:.0f} s.",
                "",
            ]
        lines += [
            "| method | phase right | "
            + " | ".join(f"{n}: mean / median / p90" for n in names)
            + " | not indexed | uncertain | time | patterns/s | peak MB |",
            "|---|---:|" + "---:|" * len(names) + "---:|---:|---:|---:|---:|",
        ]
        for r in case["rows"]:
            if r["failed"]:
                lines.append(f"| {r['method']} | failed: {r['failed']} |" + "|" * (len(names) + 5))
                continue
            errors = " | ".join(
                f"{e['mean']:.2f}° / {e['median']:.2f}° / {e['p90']:.2f}°" if e else "–"
                for e in (r["errors"][n] for n in names)
            )
            peak = "–" if r["peak_mb"] is None else f"{r['peak_mb']:,.0f}"
            uncertain = "–" if r["uncertain"] is None else f"{100 * r['uncertain']:.1f}%"
            lines.append(
                f"| {r['method']} | {100 * r['phase_right']:.1f}% | {errors} | "
                f"{100 * r['not_indexed']:.1f}% | {uncertain} | {r['seconds']:,.1f} s | "
                f"{_rate(r['patterns_per_s'])} | {peak} |"
            )
    return lines


def main() -> None:
    names = [c.name for c in CASES]
    args = benchmark_parser(__doc__.splitlines()[0], names).parse_args()
    ours = run_ours(args)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ebsdnet-multiphase-"))
    results, masters = [], {}
    import kikuchipy as kp

    try:
        for case in (c for c in CASES if c.name in args.cases):
            folder = workdir / case.name
            t0 = time.perf_counter()
            truth = write_case(case, folder, args.size, args.dose, masters)
            print(f"{case.title}: {len(truth['quaternions']):,} patterns written to {folder} "
                  f"in {time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
            signal = kp.load(folder / "patterns.h5")
            cifs = [folder / f"{name}.cif" for name in case.phases]
            phases = [load_phase(cif) for cif in cifs]
            rows, builds = [], {}
            if not args.skip_peers:
                rows.append(run_hough(signal, phases, truth))
                di_rows, builds = run_kikuchipy(signal, phases, truth, args.resolution)
                rows += di_rows
            if ours:
                rows += run_ebsdnet(folder, cifs, truth)
            results.append({
                "case": case.name, "title": case.title, "phases": truth["phases"],
                "builds": builds,
                "rows": [{**asdict(r), "patterns_per_s": r.rate} for r in rows],
            })  # fmt: skip
    finally:
        close_workdir(workdir, results, args)
    if results:
        flags = rerun_flags(args, names, ours)
        publish("multiphase", _markdown(results, args, flags), args.write)


if __name__ == "__main__":
    main()
