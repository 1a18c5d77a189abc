"""Index bcc, hcp and fcc patterns from a CIF: ``ebsdnet index --phase`` beside the peers.

    python benchmarks/phases.py [--size 30] [--resolution 2] [--dose 200]
                                [--cases ferrite alpha_ti nickel] [--skip-ebsdnet | --skip-peers]
                                [--workdir DIR | --keep] [--write]

Three test cases, each written to a work folder as a user would get it: an
h5ebsd pattern file, the phase's CIF and ``truth.json`` (orientations, true
and stated PC, camera settings):

- ``ferrite``: a bcc Fe (Im-3m) Voronoi polycrystal, ``--size``² patterns of 60×60;
- ``alpha_ti``: an hcp α-Ti (P6_3/mmc) polycrystal, the same size;
- ``nickel``: one fcc Ni pattern of 100×120 (rows×columns) from kikuchipy's
  *dynamical* master pattern, camera tilted 5.3°.

The patterns are simulated by kikuchipy (``EBSDMasterPattern.get_patterns``), not by
ebsdnet's projector, so the truth is independent of the indexer under test:
ferrite's and α-Ti's from a kinematical master pattern kikuchipy's
``KikuchiPatternSimulator`` makes from the CIF (a finer grid and more, weaker
reflectors than the peers' templates below), Ni's from the dynamical one. A
camera then degrades them: barrel lens distortion, a Gaussian point spread, a
vignetted static background, a smooth background that drifts across the map, a
gamma, Poisson noise at ``--dose`` counts per pixel, 8-bit quantisation and a
few hot pixels. The file's static background is the camera's (no bands, hot
pixels included); its PC is the true PC plus an error of ≈0.004.

Each method indexes the file as a user with the CIF would, timed as whole steps:

- PyEBSDIndex Hough (:meth:`EBSD.hough_indexing`) with its phase built with its
  lattice type (``BCC``/``HCP``/``FCC``): kikuchipy's ``get_indexer`` would
  hand it the FCC band families whatever the phase (REFERENCES.md, Pitfalls).
  numba is warmed up first; the step includes the band library and kikuchipy's
  background removal;
- kikuchipy dictionary indexing: the kinematical master pattern from the CIF
  (the unit cell filled by orix's ``expand_asymmetric_unit``: diffsims'
  ``sanitise_phase`` mis-fills hexagonal cells), a dictionary over
  ``get_sample_fundamental(--resolution)``, static and dynamic background
  removal, ``dictionary_indexing``; then ``refine_orientation`` (Nelder–Mead,
  the file's PC). Master pattern and dictionary are timed apart, and a *whole*
  row adds them to the indexing. kikuchipy cannot refine a lone pattern, so
  the Ni pattern goes in twice (a line of two) and the first answer counts;
- ``ebsdnet -q index SCAN -o MAP.h5 --phase X.cif --force`` in a subprocess,
  the whole command timed (start-up, master pattern, dictionary, writing the
  map), peak memory from ``/usr/bin/time -v``: once with an empty master-pattern
  cache (``EBSDNET_CACHE`` in the work folder), as kikuchipy's *whole* row, and
  once with it filled, as every later scan of the phase. Skipped with
  ``--skip-ebsdnet`` or while ``ebsdnet index`` has no ``--phase``; a failing
  command is a row that says why.

Errors are symmetry-reduced disorientations from the truth in the phase's Laue
group; points a method leaves not indexed count with the orientation it reports.
Peak memory is the highest resident set above the level before the step.
Keep the work folder (``--keep`` or ``--workdir``) to rerun a method by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from _report import machine, publish

CIFS = Path(__file__).resolve().parent / "cifs"
ENERGY_KV = 20.0
SAMPLE_TILT = 70.0
#: The test patterns' kinematical master pattern: finer grid, weaker and finer reflectors.
TRUTH_SIMULATION = {"half_size": 500, "min_dspacing": 0.4, "min_structure_factor": 0.02}
TRUST_REGION_DEG = [2.0, 2.0, 2.0]  # kikuchipy refinement's Euler-angle bounds
HOT_PIXELS = 5
OURS = "ebsdnet index --phase (whole command)"
#: PyEBSDIndex points NUMBA_CACHE_DIR at its own folder on import; ebsdnet's subprocess
#: gets this process's original setting (a shared, half-written cache crashes numba).
NUMBA_CACHE_DIR = os.environ.get("NUMBA_CACHE_DIR")


@dataclass(frozen=True)
class Case:
    """One test case: a phase (its shipped CIF) on a detector, through a camera."""

    name: str
    title: str
    lattice_type: str  # PyEBSDIndex's band families: "BCC", "HCP" or "FCC"
    detector_shape: tuple[int, int]
    pc: tuple[float, float, float]  # true PC (Bruker)
    pc_error: tuple[float, float, float]  # added to the PC written into the file
    tilt: float = 0.0
    gamma: float = 1.0
    blur_px: float = 0.8
    distortion: float = -0.03  # radial k (barrel < 0) over the half-diagonal
    contrast: float = 0.2  # the bands' standard deviation over the mean intensity
    seed: int = 0
    single: bool = False  # one pattern at a fixed orientation instead of a map
    dynamical: bool = False  # patterns from kikuchipy's dynamical Ni master pattern

    @property
    def cif(self) -> Path:
        return CIFS / f"{self.name}.cif"


CASES = (
    Case(
        "ferrite", "bcc ferrite (Fe, Im-3m)", "BCC", (60, 60), (0.462, 0.238, 0.548),
        (0.003, -0.002, 0.002), gamma=0.85, seed=2311,
    ),
    Case(
        "alpha_ti", "hcp α-Ti (P6_3/mmc)", "HCP", (60, 60), (0.513, 0.221, 0.602),
        (-0.002, 0.003, -0.002), gamma=1.15, distortion=-0.04, seed=4729,
    ),
    Case(
        "nickel", "one fcc Ni pattern (dynamical), 100×120 detector tilted 5.3°", "FCC",
        (100, 120), (0.487, 0.312, 0.633), (0.002, 0.002, -0.003), tilt=5.3, gamma=0.95,
        blur_px=1.0, distortion=-0.02, seed=8123, single=True, dynamical=True,
    ),
)  # fmt: skip

NICKEL_EULER_DEG = (121.3, 38.7, 243.1)  # the single Ni pattern's orientation (Bunge)


# ---------------------------------------------------------------- CIFs


def _symmetry_operation(op) -> str:
    """A diffpy ``SymOp`` as CIF's ``x,y,z`` text."""
    from fractions import Fraction

    rows = []
    for coefficients, shift in zip(op.R, op.t, strict=True):
        terms = zip(coefficients, "xyz", strict=True)
        text = "".join(f"{'+' if c > 0 else '-'}{axis}" for c, axis in terms if c)
        if shift % 1:
            text += f"+{Fraction(float(shift % 1)).limit_denominator(12)}"
        rows.append(text.lstrip("+"))
    return ",".join(rows)


def cif_text(name: str, space_group: int, lattice: tuple, atoms: list[tuple]) -> str:
    """A CIF stating its space group (name, number and every symmetry operation).

    ``lattice``: ``(a, b, c, alpha, beta, gamma)`` in Å and degrees; ``atoms``:
    ``(label, element, (x, y, z), U_iso)`` of the asymmetric unit. diffpy.structure
    would write P1 (REFERENCES.md, Pitfalls), which other readers take literally.
    """
    from diffpy.structure.spacegroups import GetSpaceGroup

    sg = GetSpaceGroup(space_group)
    keys = ("length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma")
    lines = [
        f"# {name}: written by benchmarks/phases.py (cif_text)",
        f"data_{name}",
        f"_symmetry_space_group_name_H-M '{sg.short_name}'",
        f"_space_group_IT_number {space_group}",
        *(f"_cell_{k} {v:g}" for k, v in zip(keys, lattice, strict=True)),
        "loop_",
        "_symmetry_equiv_pos_as_xyz",
        *(f"'{_symmetry_operation(op)}'" for op in sg.iter_symops()),
        "loop_",
        "_atom_site_label",
        "_atom_site_type_symbol",
        "_atom_site_fract_x",
        "_atom_site_fract_y",
        "_atom_site_fract_z",
        "_atom_site_occupancy",
        "_atom_site_U_iso_or_equiv",
        *(f"{label} {el} {x} {y} {z} 1.0 {u}" for label, el, (x, y, z), u in atoms),
    ]
    return "\n".join(lines) + "\n"


#: The shipped CIFs: (space group, lattice, asymmetric unit, point group, atoms in the cell).
STRUCTURES = {
    "ferrite": (229, (2.8665, 2.8665, 2.8665, 90, 90, 90), [("Fe1", "Fe", ("0", "0", "0"), 0.005)],
                "m-3m", 2),
    "alpha_ti": (194, (2.951, 2.951, 4.686, 90, 90, 120),
                 [("Ti1", "Ti", ("0.333333", "0.666667", "0.25"), 0.0063)], "6/mmm", 2),
    "nickel": (225, (3.524, 3.524, 3.524, 90, 90, 90), [("Ni1", "Ni", ("0", "0", "0"), 0.0045)],
               "m-3m", 4),
    # fcc Fe, the duplex case of benchmarks/multiphase.py
    "austenite": (225, (3.595, 3.595, 3.595, 90, 90, 90),
                  [("Fe1", "Fe", ("0", "0", "0"), 0.005)], "m-3m", 4),
}  # fmt: skip


def write_cifs(folder: Path = CIFS) -> None:
    """(Re)write the shipped CIFs (``--write-cifs``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (space_group, lattice, atoms, _, _) in STRUCTURES.items():
        (folder / f"{name}.cif").write_text(cif_text(name, space_group, lattice, atoms))


def load_phase(cif: Path):
    """The CIF's orix ``Phase`` with its unit cell filled, checked against ``STRUCTURES``."""
    from orix.crystal_map import Phase

    space_group, _, _, point_group, n_atoms = STRUCTURES[cif.stem]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        phase = Phase.from_cif(cif)
        filled = phase.expand_asymmetric_unit()
    if phase.space_group is None or phase.space_group.number != space_group:
        raise SystemExit(f"{cif}: read as space group {phase.space_group}, not {space_group}")
    if phase.point_group.name != point_group or len(filled.structure) != n_atoms:
        raise SystemExit(
            f"{cif}: point group {phase.point_group.name} with {len(filled.structure)} atoms "
            f"in the cell; expected {point_group} with {n_atoms}"
        )
    return filled


# ---------------------------------------------------------------- test cases


def kinematical_master_pattern(
    phase, half_size: int = 200, min_dspacing: float = 0.5, min_structure_factor: float = 0.05
):
    """kikuchipy's kinematical master pattern of ``phase`` (both hemispheres, Lambert).

    By default as kikuchipy's tutorial builds it (reflectors to d = 0.5 Å, those
    above 5% of the strongest |F|, a 401×401 grid, Bragg angles at 20 kV), with the
    cell filled by orix rather than ``sanitise_phase`` (hexagonal cells; ``load_phase``).
    The test patterns come from a fuller one (``TRUTH_SIMULATION``), so the peers'
    templates are not the very patterns they index.
    """
    import kikuchipy as kp
    from diffsims.crystallography import ReciprocalLatticeVector

    reflectors = ReciprocalLatticeVector.from_min_dspacing(phase, min_dspacing)
    reflectors = reflectors.unique(use_symmetry=True)
    reflectors.calculate_structure_factor()
    f = np.abs(reflectors.structure_factor)
    reflectors = reflectors[f > min_structure_factor * f.max()].symmetrise()
    reflectors.calculate_structure_factor()
    reflectors.calculate_theta(ENERGY_KV * 1e3)
    simulator = kp.simulations.KikuchiPatternSimulator(reflectors)
    with contextlib.redirect_stderr(io.StringIO()):  # its progress bars
        mp = simulator.calculate_master_pattern(half_size=half_size, hemisphere="both")
        return mp.as_lambert(show_progressbar=False)


def _detector(case: Case, pc):
    from kikuchipy.detectors import EBSDDetector

    return EBSDDetector(shape=case.detector_shape, pc=pc, sample_tilt=SAMPLE_TILT, tilt=case.tilt)


def _distort(bands: np.ndarray, k: float) -> np.ndarray:
    """Barrel (``k`` < 0) radial lens distortion of patterns ``(N, H, W)``.

    The recorded pixel at radius ``r_d`` (over the half-diagonal) sees the
    screen at ``r_u`` with ``r_d = r_u (1 + k r_u²)`` (inverted to first order).
    """
    from scipy.ndimage import map_coordinates

    h, w = bands.shape[1:]
    cy, cx = (h - 1) / 2, (w - 1) / 2
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    r2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / (cy**2 + cx**2)
    factor = 1 - k * r2
    coords = np.stack((cy + (yy - cy) * factor, cx + (xx - cx) * factor))
    return np.stack([map_coordinates(p, coords, order=1, mode="nearest") for p in bands])


def _vignetting(shape: tuple[int, int]) -> np.ndarray:
    """The camera's static background: an off-centre bright spot and a gentle slope."""
    yy = np.linspace(-1, 1, shape[0])[:, None]
    xx = np.linspace(-1, 1, shape[1])[None, :]
    return 0.4 + 0.5 * np.exp(-((xx + 0.15) ** 2 + (yy + 0.25) ** 2) / 1.1) + 0.06 * xx


def _drift(map_shape: tuple[int, int], detector_shape: tuple[int, int]) -> np.ndarray:
    """A background ``(N, H, W)`` that changes smoothly across the map: brightness and
    a slope over the detector both turn with the beam's position (mean ≈ 1)."""
    rows, cols = map_shape
    u = (np.arange(rows) / max(rows - 1, 1) - 0.5)[:, None].repeat(cols, 1).ravel()
    v = (np.arange(cols) / max(cols - 1, 1) - 0.5)[None, :].repeat(rows, 0).ravel()
    yy = np.linspace(-1, 1, detector_shape[0])[None, :, None]
    xx = np.linspace(-1, 1, detector_shape[1])[None, None, :]
    level = 1 + 0.2 * u - 0.1 * v
    slope_x, slope_y = 0.15 * v, 0.12 * (u + v)
    return level[:, None, None] * (1 + slope_x[:, None, None] * xx + slope_y[:, None, None] * yy)


def camera(clean: np.ndarray, case: Case, map_shape, dose: float) -> tuple[np.ndarray, np.ndarray]:
    """Clean patterns ``(N, H, W)`` as the camera records them (uint8) and its static
    background (uint8, hot pixels included)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(case.seed + 1)
    # Standardised bands, the kinematical zone-axis spikes clipped: the same
    # contrast for kinematical and dynamical patterns.
    mean = clean.mean(axis=(1, 2), keepdims=True)
    std = clean.std(axis=(1, 2), keepdims=True)
    bands = ((clean - mean) / np.maximum(std, 1e-9)).clip(-2.5, 2.5)
    bands = gaussian_filter(_distort(bands, case.distortion), (0, case.blur_px, case.blur_px))
    screen = _vignetting(case.detector_shape) * _drift(map_shape, case.detector_shape)
    light = (screen * (1 + case.contrast * bands)).clip(0, None) ** case.gamma
    counts = rng.poisson(light * dose) / dose
    scale = 245 / float(np.quantile(counts.max(axis=(1, 2)), 0.5))
    patterns = (counts * scale).round().clip(0, 255).astype(np.uint8)
    static = _vignetting(case.detector_shape) ** case.gamma
    static = (static * scale).round().clip(0, 255).astype(np.uint8)
    hot = rng.choice(static.size, HOT_PIXELS, replace=False)
    patterns.reshape(len(patterns), -1)[:, hot] = 255
    static.reshape(-1)[hot] = 255
    return patterns, static


def truth_orientations(case: Case, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Quaternions ``(N, 4)`` (row-major over the map) and the map shape."""
    if case.single:
        from orix.quaternion import Rotation

        rotation = Rotation.from_euler(np.radians(NICKEL_EULER_DEG))
        return np.asarray(rotation.data, dtype=np.float64).reshape(1, 4), (1, 1)
    from ebsdnet.synthetic import polycrystal_orientations

    q, _ = polycrystal_orientations((size, size), max(2, size * size // 40), seed=case.seed)
    return q.double().numpy(), (size, size)


def write_case(case: Case, folder: Path, size: int, dose: float) -> dict:
    """Write ``patterns.h5``, the CIF and ``truth.json`` into ``folder``; return the truth."""
    import kikuchipy as kp
    from orix.quaternion import Rotation

    folder.mkdir(parents=True, exist_ok=True)
    cif = folder / case.cif.name
    shutil.copyfile(case.cif, cif)
    phase = load_phase(cif)
    q, map_shape = truth_orientations(case, size)
    if case.dynamical:
        mp = kp.data.nickel_ebsd_master_pattern_small(projection="lambert", hemisphere="both")
    else:
        mp = kinematical_master_pattern(phase, **TRUTH_SIMULATION)
    clean = mp.get_patterns(
        Rotation(q), _detector(case, case.pc), energy=ENERGY_KV, compute=True,
        show_progressbar=False,
    ).data.reshape(-1, *case.detector_shape)  # fmt: skip
    patterns, static = camera(clean.astype(np.float64), case, map_shape, dose)
    file_pc = tuple(float(p + e) for p, e in zip(case.pc, case.pc_error, strict=True))
    signal = kp.signals.EBSD(
        patterns.reshape(*map_shape, *case.detector_shape),
        detector=_detector(case, file_pc),
        static_background=static,
    )
    signal.save(folder / "patterns.h5", overwrite=True)
    truth = {
        "case": case.name,
        "phase": phase.name,
        "point_group": phase.point_group.name,
        "space_group": phase.space_group.number,
        "map_shape": list(map_shape),
        "detector_shape": list(case.detector_shape),
        "sample_tilt": SAMPLE_TILT,
        "tilt": case.tilt,
        "pc_true": list(case.pc),
        "pc_file": list(file_pc),
        "master_pattern": "kikuchipy's dynamical Ni (shipped)" if case.dynamical else
        {"kikuchipy kinematical from the CIF": TRUTH_SIMULATION},
        "camera": {
            "dose": dose, "gamma": case.gamma, "blur_px": case.blur_px,
            "distortion_k": case.distortion, "contrast": case.contrast,
            "hot_pixels": HOT_PIXELS,
        },
        "seed": case.seed,
        "quaternions": q.tolist(),
    }  # fmt: skip
    (folder / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    return truth


# ---------------------------------------------------------------- methods


@dataclass
class Row:
    method: str
    n: int
    seconds: float
    peak_mb: float | None
    errors: dict = field(default_factory=dict)
    not_indexed: float = 0.0
    failed: str | None = None  # why the method gave no map

    @property
    def rate(self) -> float:
        return self.n / max(self.seconds, 1e-9)


def _score(method, quaternions, truth, seconds, peak_mb, not_indexed=None) -> Row:
    from ebsdnet.metrics import error_summary
    from ebsdnet.rotations import disorientation_deg

    found = torch.as_tensor(np.asarray(quaternions, dtype=np.float64).reshape(-1, 4))
    true = torch.as_tensor(np.asarray(truth["quaternions"], dtype=np.float64))
    err = disorientation_deg(found, true, truth["point_group"])
    share = 0.0 if not_indexed is None else float(np.mean(not_indexed))
    row = Row(method, len(true), seconds, peak_mb, error_summary(err), share)
    print(
        f"  {method:<42} {row.errors['mean']:8.3f}° mean {row.seconds:8.1f} s "
        f"{row.rate:9.1f} patterns/s",
        flush=True,
    )
    return row


def _best(xmap) -> np.ndarray:
    """Each point's best quaternion (dictionary indexing may keep several)."""
    return np.asarray(xmap.rotations.data).reshape(xmap.size, -1, 4)[:, 0]


def _quiet(fn):
    """Run a kikuchipy/PyEBSDIndex call without its console output and warnings."""
    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        return fn()


def _conditioned(signal):
    """kikuchipy's usual conditioning: static, then dynamic background removal."""
    s = signal.deepcopy()
    s.change_dtype("float32")
    s.remove_static_background(show_progressbar=False)
    s.remove_dynamic_background(show_progressbar=False)
    return s


def run_hough(signal, phase, case: Case, truth: dict) -> Row:
    """PyEBSDIndex Hough with the phase's own band families, numba warmed up first."""
    from orix.crystal_map import PhaseList

    from ebsdnet.bench import PeakMemory, _import_pyebsdindex

    _import_pyebsdindex()  # before the imports below: it keeps NUMBA_CACHE_DIR for children
    from pyebsdindex.ebsd_index import EBSDIndexer
    from pyebsdindex.tripletvote import addphase

    detector = signal.detector

    def hough(s):
        band_indexer = addphase(
            libtype=case.lattice_type, phasename=phase.name,
            latticeparameter=phase.structure.lattice.abcABG(),
        )  # fmt: skip
        indexer = EBSDIndexer(
            phaselist=[band_indexer], vendor="KIKUCHIPY", PC=detector.pc_average,
            sampleTilt=detector.sample_tilt, camElev=detector.tilt, patDim=detector.shape,
        )  # fmt: skip
        conditioned = _conditioned(s)
        return conditioned.hough_indexing(PhaseList(phase), indexer, verbose=0)

    dims = signal.axes_manager.navigation_dimension
    first = signal.inav[(slice(0, 1),) * dims] if dims else signal
    _quiet(lambda: hough(first))  # numba compiles on the first call
    with PeakMemory() as memory:
        t0 = time.perf_counter()
        xmap = _quiet(lambda: hough(signal))
        seconds = time.perf_counter() - t0
    return _score(
        "PyEBSDIndex Hough", _best(xmap), truth, seconds, memory.peak_mb, xmap.phase_id == -1
    )


def run_kikuchipy(signal, phase, truth: dict, resolution: float) -> tuple[list[Row], dict]:
    """kikuchipy DI (+ refinement) from the CIF; rows and the build times."""
    import kikuchipy as kp
    from orix.crystal_map import CrystalMap, PhaseList
    from orix.quaternion import Rotation
    from orix.sampling import get_sample_fundamental

    from ebsdnet.bench import PeakMemory

    n = len(truth["quaternions"])
    if signal.axes_manager.navigation_dimension == 0:
        # kikuchipy's refinement fails on one pattern (without navigation axes: np.where
        # on a 0-d array; as a 1×1 map: orix makes a one-point map of shape ()), so
        # it gets the pattern twice, as a line of two, and the first answer counts.
        signal = kp.signals.EBSD(
            np.stack([signal.data] * 2), detector=signal.detector,
            static_background=signal.static_background,
        )  # fmt: skip
    detector = signal.detector
    rows, builds = [], {}
    with PeakMemory() as memory:
        t0 = time.perf_counter()
        mp = _quiet(lambda: kinematical_master_pattern(phase))
        t1 = time.perf_counter()
        builds["master pattern"] = t1 - t0
        rotations = get_sample_fundamental(resolution, point_group=phase.point_group)
        dictionary = _quiet(
            lambda: mp.get_patterns(
                rotations, detector, energy=ENERGY_KV, compute=True, show_progressbar=False
            )
        )
        t2 = time.perf_counter()
        builds["dictionary"] = t2 - t1
        builds["dictionary patterns"] = int(rotations.size)
        conditioned = _quiet(lambda: _conditioned(signal))
        found = _quiet(lambda: conditioned.dictionary_indexing(dictionary, keep_n=1))
        t3 = time.perf_counter()
        di_peak = memory.peak_mb
        dictionary = None  # its memory back before the refinement
        start = CrystalMap(
            rotations=Rotation(_best(found)), phase_id=np.zeros(found.size, dtype=int),
            x=found.x, y=found.y, phase_list=PhaseList(mp.phase),
        )  # fmt: skip
        refined = _quiet(
            lambda: conditioned.refine_orientation(
                start, detector, mp, energy=ENERGY_KV, trust_region=TRUST_REGION_DEG,
                compute=True,
            )
        )  # fmt: skip
        t4 = time.perf_counter()
    label = f"kikuchipy DI {resolution:g}°"
    found, refined = _best(found)[:n], _best(refined)[:n]
    rows.append(_score(label, found, truth, t3 - t2, di_peak))
    rows.append(_score(f"{label} + refinement", refined, truth, t4 - t2, memory.peak_mb))
    rows.append(
        _score(
            f"{label} + refinement, whole (master pattern, dictionary)", refined, truth,
            t4 - t0, memory.peak_mb,
        )
    )  # fmt: skip
    return rows, builds


def ebsdnet_has_phase() -> bool:
    """Whether ``ebsdnet index`` takes ``--phase`` (issue #25)."""
    help_text = subprocess.run(
        [_ebsdnet_command(), "index", "--help"], capture_output=True, text=True
    ).stdout
    return "--phase" in help_text


def _ebsdnet_command() -> str:
    script = Path(sys.executable).parent / "ebsdnet"
    return str(script) if script.exists() else "ebsdnet"


def run_ebsdnet(folder: Path, cif: Path, truth: dict) -> list[Row]:
    """``ebsdnet -q index --phase`` as a subprocess, the whole command timed: first with
    an empty master-pattern cache (it simulates the CIF's, as kikuchipy's *whole* row
    does), then again with it cached, as every later scan of the phase runs."""
    env = ebsdnet_environment(folder)
    rows = []
    for label in ("first run: simulates the master pattern", "master pattern cached"):
        rows.append(_run_ebsdnet_once(folder, cif, truth, env, f"{OURS}, {label}"))
        if rows[-1].failed:
            break
    return rows


def ebsdnet_environment(folder: Path) -> dict:
    """The subprocess's environment: an empty master-pattern cache in ``folder``."""
    cache = folder / "ebsdnet-cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["EBSDNET_CACHE"] = str(cache)
    if NUMBA_CACHE_DIR is not None:
        env["NUMBA_CACHE_DIR"] = NUMBA_CACHE_DIR
    return env


def run_ebsdnet_command(folder: Path, cifs: list[Path], env: dict):
    """``ebsdnet -q index patterns.h5 -o ebsdnet.h5 --phase ...`` timed as a whole.

    Returns the map (``None`` if the command failed), seconds, peak resident set (MB,
    ``None`` without GNU time) and, on failure, the message.
    """
    from orix import io as orix_io

    result = folder / "ebsdnet.h5"
    command = [
        _ebsdnet_command(), "-q", "index", str(folder / "patterns.h5"), "-o", str(result),
        *(arg for cif in cifs for arg in ("--phase", str(cif))), "--force",
    ]  # fmt: skip
    gnu_time = Path("/usr/bin/time").exists()
    t0 = time.perf_counter()
    proc = subprocess.run(
        (["/usr/bin/time", "-v"] if gnu_time else []) + command, capture_output=True,
        text=True, env=env,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        # Reported in the table; the other cases go on.
        message = next(
            (line for line in proc.stderr.splitlines() if line.startswith("ebsdnet: error")),
            f"exit status {proc.returncode}",
        )
        stderr = proc.stderr.split("\tCommand being timed")[0]  # less GNU time's report
        print(f"  {' '.join(command)} failed:\n{stderr[-3000:]}", flush=True)
        return None, seconds, None, message
    peak = None
    if gnu_time:
        peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)[1])
        peak /= 1024
    return orix_io.load(result), seconds, peak, None


def _run_ebsdnet_once(folder: Path, cif: Path, truth: dict, env: dict, method: str) -> Row:
    xmap, seconds, peak, failed = run_ebsdnet_command(folder, [cif], env)
    if xmap is None:
        return Row(method, len(truth["quaternions"]), seconds, None, failed=failed)
    return _score(method, xmap.rotations.data, truth, seconds, peak, xmap.phase_id == -1)


# ---------------------------------------------------------------- report


def _rate(patterns_per_s: float) -> str:
    """Patterns/s to three figures at most (one pattern in a minute is 0.017, not 0.0)."""
    return f"{patterns_per_s:,.0f}" if patterns_per_s >= 100 else f"{patterns_per_s:.3g}"


def _markdown(results: list[dict], args, flags: str) -> list[str]:
    lines = [
        "## Phases from a CIF: bcc ferrite, hcp α-Ti, one fcc Ni pattern",
        "",
        f"Measured by `python benchmarks/phases.py{flags} --write` on: {machine()}.",
        "Patterns simulated by kikuchipy (`EBSDMasterPattern.get_patterns`; ferrite and "
        "α-Ti from the kinematical master pattern of their CIF, Ni from kikuchipy's "
        "dynamical one; the kinematical ones finer and fuller than the peers' templates) "
        "through a camera: barrel distortion, point spread, vignetting, a "
        "background drifting across the map, gamma, Poisson noise at dose "
        f"{args.dose:g}, 8-bit, hot pixels; the file's PC is off the true one by ≈0.004. "
        "Every method gets the file and the CIF (`benchmarks/cifs/`): PyEBSDIndex Hough "
        "with its phase's lattice type; kikuchipy with the kinematical master pattern from "
        f"the CIF, a {args.resolution:g}° dictionary, background removal, dictionary "
        "indexing and Nelder–Mead refinement (the *whole* row adds building the master "
        "pattern and dictionary; kikuchipy gets the lone Ni pattern twice, as it cannot "
        "refine one)"
        + (
            "; `ebsdnet -q index scan.h5 -o map.h5 --phase X.cif` timed as a whole command "
            "(start-up included), first with an empty master-pattern cache, then with it "
            "filled"
            if any(r["method"].startswith(OURS) for case in results for r in case["rows"])
            else ""
        )
        + ". Errors: symmetry-reduced disorientation "
        "from the truth; peak memory above the level before the step (ebsdnet: the "
        "command's peak resident set).",
    ]
    for case in results:
        b = case["builds"]
        lines += [
            "",
            f"### {case['title']} ({case['rows'][0]['n']:,} patterns, "
            f"{case['detector_shape'][0]}×{case['detector_shape'][1]})",
            "",
        ]
        if b:
            lines += [
                f"kikuchipy: master pattern {b['master pattern']:.0f} s, dictionary of "
                f"{b['dictionary patterns']:,} patterns {b['dictionary']:.0f} s.",
                "",
            ]
        lines += [
            "| method | mean | median | p90 | > 3° | > 10° | not indexed | time | "
            "patterns/s | peak MB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in case["rows"]:
            if r["failed"]:
                lines.append(f"| {r['method']} | failed: {r['failed']} |||||||||")
                continue
            e = r["errors"]
            peak = "–" if r["peak_mb"] is None else f"{r['peak_mb']:,.0f}"
            lines.append(
                f"| {r['method']} | {e['mean']:.3f}° | {e['median']:.3f}° | {e['p90']:.3f}° | "
                f"{100 * e['share_above_3']:.1f}% | {100 * e['share_above_10']:.1f}% | "
                f"{100 * r['not_indexed']:.1f}% | {r['seconds']:,.1f} s | "
                f"{_rate(r['patterns_per_s'])} | {peak} |"
            )
    return lines


def benchmark_parser(description: str, names: list[str]) -> argparse.ArgumentParser:
    """The options this benchmark and ``multiphase.py`` share (cases ``names``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--size", type=int, default=30, help="map side, patterns (30)")
    parser.add_argument(
        "--resolution",
        type=float,
        default=2.0,
        help="kikuchipy dictionary resolution, degrees (2)",
    )
    parser.add_argument(
        "--dose",
        type=float,
        default=200.0,
        help="camera counts per pixel at full brightness (200)",
    )
    parser.add_argument("--cases", nargs="+", choices=names, default=names)
    parser.add_argument("--skip-ebsdnet", action="store_true", help="run the peers alone")
    parser.add_argument("--skip-peers", action="store_true", help="run ebsdnet alone")
    parser.add_argument("--workdir", type=Path, help="write the cases here (kept)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    return parser


def run_ours(args) -> bool:
    """Whether the ebsdnet rows run (not skipped, and ``index`` has ``--phase``)."""
    ours = not args.skip_ebsdnet
    if ours and not ebsdnet_has_phase():
        print("ebsdnet index has no --phase yet: running the peers alone", flush=True)
        ours = False
    if args.skip_peers and not ours:
        raise SystemExit("nothing to run: --skip-peers without ebsdnet's --phase")
    return ours


def close_workdir(workdir: Path, results: list[dict], args) -> None:
    """Keep the work folder with ``results.json`` (``--workdir``/``--keep``), or remove it."""
    if args.workdir or args.keep:
        (workdir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        print(f"kept {workdir} (results.json, one folder per case)")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def rerun_flags(args, names: list[str], ours: bool) -> str:
    """The command-line flags that differ from the defaults, for the published command."""
    flags = "".join(
        f" --{k} {v:g}"
        for k, v, default in (
            ("size", args.size, 30), ("resolution", args.resolution, 2.0),
            ("dose", args.dose, 200.0),
        )
        if v != default
    )  # fmt: skip
    if args.cases != names:
        flags += " --cases " + " ".join(args.cases)
    flags += "" if ours else " --skip-ebsdnet"
    flags += " --skip-peers" if args.skip_peers else ""
    return flags


def main() -> None:
    names = [c.name for c in CASES]
    parser = benchmark_parser(__doc__.splitlines()[0], names)
    parser.add_argument(
        "--write-cifs", action="store_true", help=f"rewrite the shipped CIFs in {CIFS} and stop"
    )
    args = parser.parse_args()
    if args.write_cifs:
        write_cifs()
        print(f"wrote {', '.join(STRUCTURES)} CIFs to {CIFS}")
        return
    ours = run_ours(args)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ebsdnet-phases-"))
    results = []
    import kikuchipy as kp

    try:
        for case in (c for c in CASES if c.name in args.cases):
            folder = workdir / case.name
            t0 = time.perf_counter()
            truth = write_case(case, folder, args.size, args.dose)
            n = len(truth["quaternions"])
            print(f"{case.title}: {n:,} patterns written to {folder} "
                  f"in {time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
            signal = kp.load(folder / "patterns.h5")
            phase = load_phase(folder / case.cif.name)
            rows, builds = [], {}
            if not args.skip_peers:
                rows.append(run_hough(signal, phase, case, truth))
                di_rows, builds = run_kikuchipy(signal, phase, truth, args.resolution)
                rows += di_rows
            if ours:
                rows += run_ebsdnet(folder, folder / case.cif.name, truth)
            results.append({
                "case": case.name, "title": case.title,
                "detector_shape": list(case.detector_shape), "builds": builds,
                "rows": [{**asdict(r), "patterns_per_s": r.rate} for r in rows],
            })  # fmt: skip
    finally:
        close_workdir(workdir, results, args)
    if results:
        publish("phases", _markdown(results, args, rerun_flags(args, names, ours)), args.write)


if __name__ == "__main__":
    main()
