"""Phases as data: a crystal structure → an orix ``Phase`` → a master pattern.

A phase comes from a CIF (read by orix, checked here), from a master-pattern
file (EMsoft's HDF5 layout, which kikuchipy reads, holding the phase beside
the texture) or from a kikuchipy ``EBSDMasterPattern`` in memory. A CIF's
master pattern is kinematical, made by kikuchipy's ``KikuchiPatternSimulator``
(diffsims reflectors, structure factors and Bragg angles at the beam energy,
Lambert projection, both hemispheres), and cached by the CIF's content and
the simulation's settings, so a second run does not rebuild it.

kikuchipy (0.13) writes master patterns it cannot read back (``.hspy``) or
only with pyUSID (``.h5``); :func:`write_master_pattern` writes EMsoft's
layout instead, which ``kikuchipy.load`` reads, and keeps the CIF's text in a
group of its own so that ebsdnet gets the phase back exactly (EMsoft's
``CrystalData`` holds atomic numbers and the asymmetric unit only).

Data flow::

    CIF ─► read_cif ─► Phase ─► kinematical_master_pattern ─► write_master_pattern (cache)
                                                                   │
    master-pattern file ───────────────────────────────────────────┴─► load_master_pattern
                                                                          ─► MasterPattern
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_ENERGY_KV",
    "PhaseError",
    "cache_folder",
    "kinematical_master_pattern",
    "load_master_pattern",
    "master_pattern",
    "master_pattern_from_cif",
    "read_cif",
    "write_master_pattern",
]

log = logging.getLogger(__name__)

#: Beam energy of a master pattern made from a CIF unless one is given (kV).
DEFAULT_ENERGY_KV = 20.0
#: Half the side of a kinematical master pattern made from a CIF: 801×801 px, the grid
#: that kikuchipy's 401-px Ni is symmetrised onto when loaded. A CIF's master pattern is
#: symmetric by construction (its reflectors are), so it is simulated on that grid
#: once (5 s, then cached) instead of being symmetrised in every process (~2–6 s).
HALF_SIZE = 400
#: Reflectors: all planes down to this spacing (Å) whose structure factor is at least
#: ``MIN_STRUCTURE_FACTOR`` of the strongest one's. The fraction also drops the
#: systematic absences (``|F|`` ~1e-10), for every space group: diffsims' ``allowed``
#: knows no hexagonal ones.
MIN_DSPACING = 0.5
MIN_STRUCTURE_FACTOR = 0.05
#: A file's energies must include the asked one to within this (kV).
ENERGY_TOLERANCE_KV = 0.5
#: Bumped when the simulation changes, so that cached master patterns are rebuilt.
_SIMULATION_VERSION = 3


class PhaseError(ValueError):
    """A phase or master pattern cannot be used as given (file, structure, energy)."""


def cache_folder() -> Path:
    """Where master patterns made from CIFs are kept: ``$EBSDNET_CACHE`` or
    ``~/.cache/ebsdnet``, subfolder ``master_patterns``."""
    root = os.environ.get("EBSDNET_CACHE") or Path.home() / ".cache" / "ebsdnet"
    return Path(root) / "master_patterns"


# Lattice shapes each crystal system requires (a, b, c in Å; angles in degrees).
def _lattice_contradiction(system: str, a, b, c, alpha, beta, gamma) -> str | None:
    def eq(x, y, tol=1e-3):
        return abs(x - y) <= tol * max(abs(x), abs(y), 1.0)

    right = eq(alpha, 90) and eq(beta, 90) and eq(gamma, 90)
    needs = {
        "cubic": eq(a, b) and eq(b, c) and right,
        "tetragonal": eq(a, b) and right,
        "orthorhombic": right,
        "hexagonal": eq(a, b) and eq(alpha, 90) and eq(beta, 90) and eq(gamma, 120),
        # Trigonal: hexagonal axes, or rhombohedral ones (a = b = c, α = β = γ).
        "trigonal": (eq(a, b) and eq(alpha, 90) and eq(beta, 90) and eq(gamma, 120))
        or (eq(a, b) and eq(b, c) and eq(alpha, beta) and eq(beta, gamma)),
        "monoclinic": (eq(alpha, 90) and eq(gamma, 90)) or (eq(alpha, 90) and eq(beta, 90)),
    }
    if needs.get(system, True):
        return None
    return (
        f"its {system} space group contradicts the cell a={a:g} b={b:g} c={c:g} Å, "
        f"α={alpha:g} β={beta:g} γ={gamma:g}°"
    )


def _crystal_system(space_group_number: int) -> str:
    bounds = ((2, "triclinic"), (15, "monoclinic"), (74, "orthorhombic"), (142, "tetragonal"),
              (167, "trigonal"), (194, "hexagonal"), (230, "cubic"))  # fmt: skip
    return next(name for top, name in bounds if space_group_number <= top)


def read_cif(path: str | Path):
    """The orix ``Phase`` of a CIF: name from the file name, all atoms of the cell.

    Raises
    ------
    PhaseError
        The file is missing or unreadable, names no space group, holds no atoms,
        or its cell contradicts its space group's crystal system.

    Examples
    --------
    >>> from pathlib import Path
    >>> phase = read_cif(Path("tests/data/ti_alpha.cif"))  # doctest: +SKIP
    >>> phase.point_group.name, len(phase.structure)  # doctest: +SKIP
    ('6/mmm', 2)
    """
    import warnings

    from orix.crystal_map import Phase

    path = Path(path)
    if not path.is_file():
        raise PhaseError(f"CIF {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            phase = Phase.from_cif(path)
    except Exception as exc:  # diffpy's parser raises its own types, and others
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PhaseError(f"cannot read CIF {path}: {first}") from None
    if len(phase.structure) == 0:
        raise PhaseError(f"CIF {path} holds no atoms: a master pattern needs the structure")
    if phase.space_group is None:
        raise PhaseError(f"CIF {path} names no space group")
    lattice = phase.structure.lattice
    problem = _lattice_contradiction(_crystal_system(phase.space_group.number), *lattice.abcABG())
    if problem:
        raise PhaseError(f"CIF {path}: {problem}")
    return phase


def _reflectors(phase, energy_kv: float, min_dspacing: float):
    """diffsims reflectors of ``phase`` with structure factors and Bragg angles."""
    from diffsims.crystallography import ReciprocalLatticeVector

    ref = ReciprocalLatticeVector.from_min_dspacing(phase, min_dspacing)
    ref.calculate_structure_factor()
    strength = np.abs(ref.structure_factor)
    if not len(strength) or strength.max() <= 0:
        raise PhaseError(f"phase {phase.name!r} diffracts nowhere (all structure factors zero)")
    ref = ref[strength >= MIN_STRUCTURE_FACTOR * strength.max()]
    ref = ref.unique(use_symmetry=True).symmetrise()
    ref.calculate_structure_factor()
    ref.calculate_theta(energy_kv * 1e3)
    return ref


def kinematical_master_pattern(
    phase,
    energy_kv: float = DEFAULT_ENERGY_KV,
    half_size: int = HALF_SIZE,
    min_dspacing: float = MIN_DSPACING,
    show_progressbar: bool = False,
):
    """A kinematical master pattern of ``phase`` (kikuchipy ``EBSDMasterPattern``,
    Lambert projection, both hemispheres, ``2·half_size + 1`` px a side).

    The phase's structure is used as it is (orix's CIF reader fills the cell;
    diffsims' ``sanitise_phase`` is not called: it fills hexagonal cells in the
    wrong frame). Band intensities are linear in ``|F|`` (kikuchipy's default).
    """
    from kikuchipy.simulations import KikuchiPatternSimulator

    if not 1.0 <= energy_kv <= 100.0:
        raise PhaseError(f"beam energy {energy_kv:g} kV is outside 1–100 kV")
    simulator = KikuchiPatternSimulator(_reflectors(phase, energy_kv, min_dspacing))
    with _progress(show_progressbar):
        stereographic = simulator.calculate_master_pattern(half_size=half_size, hemisphere="both")
        lambert = stereographic.as_lambert(show_progressbar=show_progressbar)
    lambert.phase = phase.deepcopy()
    return lambert


class _progress:
    """kikuchipy's simulator shows dask progress bars of its own: hide them unless asked."""

    def __init__(self, show: bool) -> None:
        self.show = show

    def __enter__(self):
        import contextlib
        import io

        self._stack = contextlib.ExitStack()
        if not self.show:
            self._stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
            self._stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()


def write_master_pattern(path: str | Path, master_pattern, energy_kv: float, cif_text: str = ""):
    """Write a kikuchipy Lambert ``EBSDMasterPattern`` (both hemispheres, one energy) in
    EMsoft's HDF5 layout, which ``kikuchipy.load`` reads back; atomically.

    The phase goes into EMsoft's ``CrystalData`` group (asymmetric unit, atomic
    numbers, lattice in nm), and ``cif_text`` with the phase's name into group
    ``ebsdnet``, from which :func:`load_master_pattern` restores the phase as read.
    """
    import h5py

    path = Path(path)
    if master_pattern.projection != "lambert" or master_pattern.hemisphere != "both":
        raise PhaseError("write_master_pattern takes a Lambert master pattern of both hemispheres")
    upper, lower = (np.asarray(h, dtype=np.float32) for h in master_pattern.data)
    npx = upper.shape[-1] // 2
    phase = master_pattern.phase
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset(
                "EMheader/EBSDmaster/ProgramName", data=np.array([b"EMEBSDmaster.f90"])
            )
            nml = f.create_group("NMLparameters")
            nml.create_dataset("EBSDMasterNameList/npx", data=np.int32(npx))
            nml.create_dataset("EBSDMasterNameList/energyfile", data=b"kinematical (ebsdnet)")
            mc = nml.create_group("MCCLNameList")
            mc.create_dataset("Ebinsize", data=np.float64(1.0))
            mc.create_dataset("EkeV", data=np.float64(energy_kv))
            mc.create_dataset("xtalname", data=f"{phase.name}/{phase.name}.xtal".encode())
            _write_crystal_data(f.create_group("CrystalData"), phase)
            data = f.create_group("EMData/EBSDmaster")
            data.create_dataset("EkeVs", data=np.array([energy_kv], dtype=np.float32))
            data.create_dataset("numset", data=np.array([1], dtype=np.int32))
            # (numset, energies, rows, cols), as EMsoft writes them.
            data.create_dataset("mLPNH", data=upper[None, None], compression="gzip")
            data.create_dataset("mLPSH", data=lower[None, None], compression="gzip")
            ours = f.create_group("ebsdnet")
            ours.attrs["phase_name"] = phase.name or ""
            ours.attrs["cif"] = cif_text
            ours.attrs["simulation"] = "kinematical"
            ours.attrs["symmetric"] = True  # no symmetrisation needed when loaded
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_crystal_data(group, phase) -> None:
    """EMsoft's ``CrystalData``: lattice in nm and degrees, asymmetric unit as
    (x, y, z, occupancy, Debye–Waller B in nm²) per atom with its atomic number."""
    from diffsims.structure_factor.atomic_scattering_parameters import (
        get_element_id_from_string,
    )

    a, b, c, alpha, beta, gamma = phase.structure.lattice.abcABG()
    atoms = list(phase.structure)
    numbers = []
    for atom in atoms:
        symbol = "".join(ch for ch in str(atom.element) if ch.isalpha()) or "H"
        try:
            numbers.append(int(get_element_id_from_string(symbol)))
        except KeyError:
            numbers.append(0)
    data = np.array(
        [
            [*atom.xyz, atom.occupancy, 8 * np.pi**2 * float(atom.Uisoequiv) / 100]
            for atom in atoms
        ],
        dtype=np.float32,
    ).T
    group.create_dataset(
        "LatticeParameters", data=np.array([a / 10, b / 10, c / 10, alpha, beta, gamma])
    )
    group.create_dataset("SpaceGroupNumber", data=np.int32(phase.space_group.number))
    group.create_dataset("SpaceGroupSetting", data=np.int32(1))
    group.create_dataset("Natomtypes", data=np.int32(len(atoms)))
    group.create_dataset("Atomtypes", data=np.array(numbers, dtype=np.int32))
    group.create_dataset("AtomData", data=data)
    group.create_dataset("CrystalSystem", data=np.int32(0))


def _cache_key(cif_bytes: bytes, energy_kv: float, half_size: int) -> str:
    settings = {
        "energy_kv": round(float(energy_kv), 3), "half_size": half_size,
        "min_dspacing": MIN_DSPACING, "min_structure_factor": MIN_STRUCTURE_FACTOR,
        "version": _SIMULATION_VERSION,
    }  # fmt: skip
    payload = cif_bytes + json.dumps(settings, sort_keys=True).encode()
    return hashlib.sha256(payload).hexdigest()[:24]


def master_pattern_from_cif(
    path: str | Path,
    energy_kv: float = DEFAULT_ENERGY_KV,
    half_size: int = HALF_SIZE,
    cache: bool = True,
    show_progressbar: bool = False,
) -> Path:
    """The master-pattern file of a CIF: from the cache, or simulated and cached.

    Returns the cached file's path (EMsoft layout, see :func:`write_master_pattern`).
    """
    path = Path(path)
    phase = read_cif(path)
    cif_bytes = path.read_bytes()
    folder = cache_folder() if cache else Path(_temporary_folder())
    target = folder / f"{phase.name}-{_cache_key(cif_bytes, energy_kv, half_size)}.h5"
    if target.is_file():
        return target
    log.info("simulating a kinematical master pattern of %s at %g kV", phase.name, energy_kv)
    mp = kinematical_master_pattern(phase, energy_kv, half_size, show_progressbar=show_progressbar)
    folder.mkdir(parents=True, exist_ok=True)
    return write_master_pattern(target, mp, energy_kv, cif_bytes.decode(errors="replace"))


def _temporary_folder() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="ebsdnet-mp-")


def _file_energies(path: Path) -> np.ndarray | None:
    """Beam energies (kV) of an EMsoft master-pattern file, or ``None`` for other files."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return np.atleast_1d(np.asarray(f["EMData/EBSDmaster/EkeVs"][()], dtype=float))
    except (OSError, KeyError):
        return None


def _stored_phase(path: Path):
    """The phase ebsdnet stored beside a master pattern (from its CIF text) or ``None``,
    and whether the texture is symmetric already (a kinematical one written here)."""
    import tempfile

    import h5py

    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f["ebsdnet"].attrs)
    except (OSError, KeyError):
        return None, False
    symmetric = bool(attrs.get("symmetric", False))
    if not attrs.get("cif"):
        return None, symmetric
    with tempfile.TemporaryDirectory() as folder:
        cif_path = Path(folder) / f"{attrs.get('phase_name') or 'phase'}.cif"
        cif_path.write_text(str(attrs["cif"]))
        return read_cif(cif_path), symmetric


def load_master_pattern(path: str | Path, energy_kv: float | None = None):
    """A master-pattern file (EMsoft's layout, as written here or by EMsoft) as a
    :class:`~ebsdnet.projector.MasterPattern`, symmetrised over its point group.

    Raises
    ------
    PhaseError
        The file is missing or unreadable, not a master pattern of both hemispheres,
        or holds no master pattern at ``energy_kv`` (to within 0.5 kV).
    """
    import kikuchipy as kp

    from ebsdnet.projector import MasterPattern

    path = Path(path)
    if not path.is_file():
        raise PhaseError(f"master pattern file {path} does not exist")
    energies = _file_energies(path)
    if energy_kv is not None and energies is not None:
        if np.abs(energies - energy_kv).min() > ENERGY_TOLERANCE_KV:
            have = ", ".join(f"{e:g}" for e in energies)
            raise PhaseError(
                f"master pattern {path} holds {have} kV, not the {energy_kv:g} kV asked for"
            )
    try:
        mp = kp.load(path, projection="lambert", hemisphere="both")
    except Exception as exc:  # kikuchipy raises many types for unreadable files
        raise PhaseError(f"cannot read master pattern {path}: {_first_line(exc)}") from None
    if not isinstance(mp, kp.signals.EBSDMasterPattern):
        raise PhaseError(f"{path} holds no EBSD master pattern")
    stored, symmetric = _stored_phase(path)
    if stored is not None:
        mp.phase = stored
    if mp.phase.point_group is None:
        raise PhaseError(f"master pattern {path} names no point group")
    try:
        return MasterPattern.from_kikuchipy(mp, energy=energy_kv, symmetrise=not symmetric)
    except (ValueError, IndexError) as exc:
        raise PhaseError(f"cannot use master pattern {path}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def master_pattern(
    source,
    energy_kv: float | None = None,
    cache: bool = True,
    show_progressbar: bool = False,
):
    """A phase's :class:`~ebsdnet.projector.MasterPattern` from whatever names it.

    Parameters
    ----------
    source
        A CIF path (a kinematical master pattern is simulated, or taken from the
        cache), a master-pattern file (``.h5``: EMsoft's layout, which
        :func:`write_master_pattern` also writes), a kikuchipy
        ``EBSDMasterPattern`` or a :class:`~ebsdnet.projector.MasterPattern`.
    energy_kv
        Beam energy (kV). A CIF's master pattern is simulated at it (default
        20 kV); a file must hold it.

    Raises
    ------
    PhaseError
        See :func:`read_cif` and :func:`load_master_pattern`.
    """
    from ebsdnet.projector import MasterPattern

    if isinstance(source, MasterPattern):
        return source
    if hasattr(source, "projection") and hasattr(source, "phase"):  # kikuchipy signal
        return MasterPattern.from_kikuchipy(source, energy=energy_kv)
    path = Path(source)
    if path.suffix.lower() == ".cif":
        energy = DEFAULT_ENERGY_KV if energy_kv is None else energy_kv
        cached = master_pattern_from_cif(
            path, energy, cache=cache, show_progressbar=show_progressbar
        )
        return load_master_pattern(cached, energy)
    return load_master_pattern(path, energy_kv)
