"""Pattern files and signals in, orix ``CrystalMap`` out.

``index(signal)`` runs each batch of patterns through the one conditioning
path (:func:`~ebsdnet.preprocess.preprocess`, with the model card's
settings), the network — or, for a phase given without a model, the phase's
coarse dictionary (:func:`phase_dictionary`) — and then pattern-matching
refinement (:func:`~ebsdnet.refine.refine_orientations`) started from that
answer. With several phases each is screened by its dictionary and the
contenders refined (:class:`_BatchIndexer`). The normalised cross-correlation of each
pattern with its re-projection at the final orientation is the confidence
(property ``ncc`` of the map); below ``min_ncc`` a pattern is marked not
indexed. Patterns are read batch by batch, so a lazy kikuchipy signal is never
loaded whole.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ebsdnet.cards import card_path, load_model
from ebsdnet.models import (
    for_inference,
    inference_autocast,
    quantized_int8,
    resolve_precision,
    sigmoid_gelu,
)
from ebsdnet.pattern_flags import (
    FLAG_AMBIGUOUS_PHASE,
    FLAG_INDEXED,
    FLAG_LOW_NCC,
    as_tensor,
    not_indexed_summary,
    pattern_flags,
    usable_mean,
)
from ebsdnet.preprocess import PreprocessConfig, gaussian_blur, preprocess, rebin_factor
from ebsdnet.projector import (
    DetectorGeometry,
    MasterPattern,
    Projector,
    resample_to_pattern_centre,
    unphysical_pattern_centres,
)
from ebsdnet.refine import NOISE_TOL, _first_line, _Kernel, match_ncc, refine_orientations
from ebsdnet.rotations import laue_group

__all__ = [
    "MIN_NCC",
    "IndexingError",
    "check_map_path",
    "fallback_dictionary",
    "index",
    "ipf_image",
    "save_map",
    "write_ipf_map",
]

log = logging.getLogger(__name__)

#: Default not-indexed threshold on the final NCC: refined wrong orientations measured
#: 0.05–0.08 (real patterns, dose 15), right ones ≥ 0.2 down to dose 15.
MIN_NCC = 0.1
#: Without a background in the file, the scan's mean pattern serves from this many
#: patterns on. Below, few grains leave bands in the mean; it is blurred by
#: ``SMALL_SCAN_BLUR`` of the pattern width first. Measured on simulated maps without
#: their background (noise-free, mean error): 100 patterns of 10 grains 0.009° with no
#: background, 0.028° with the plain mean, 0.009° blurred; 16 of 2 grains 0.014°, 0.104°,
#: 0.011°. The nine real Ni patterns stripped of theirs: 3 indexed with none, all 9 with
#: the blurred mean (errors 0.07–0.31°; 0.03–0.18° with the file's background).
SCAN_MEAN_MIN_PATTERNS = 1000
SMALL_SCAN_BLUR = 0.05
#: Refined NCC below which the dictionary fallback is tried.
FALLBACK_NCC = 0.2
#: The phase's coarse dictionary: the start of a phase indexed without a model, and
#: every model's fallback. Orientations this far apart (a start up to ~2.6° off, within
#: refinement's reach), patterns pooled to at most ``MATCH_SIDE`` pixels a side (the
#: fallback's candidates measured no worse at 30×30 than at 60×60, dose 15), and
#: ``DICTIONARY_MAX_BYTES`` at the most: a low-symmetry phase gets a coarser grid
#: rather than an unbounded dictionary (triclinic at 3° would hold 730,000 entries).
FALLBACK_RESOLUTION_DEG = 3.0
FALLBACK_CANDIDATES = 8
MATCH_SIDE = 32
#: A phase's dictionary is simulated at its matching shape (the phases benchmark's
#: ferrite and α-Ti, 300 patterns each: 0.343°/0.257° against 0.346°/0.266° when
#: simulated at twice it, and the whole index 2.4–3.9× faster); the Ni model's fallback
#: keeps twice it, as every Ni figure in BENCHMARKS.md was measured with.
DICTIONARY_OVERSAMPLE = 1
FALLBACK_OVERSAMPLE = 2
DICTIONARY_MAX_BYTES = 600e6
#: Several phases: those whose coarse-dictionary NCC is within this of the best phase's
#: are refined (the contenders); the others keep their start.
SCREEN_MARGIN = 0.1
#: Several phases: points whose best NCC exceeds the runner-up phase's by less than this
#: are flagged ``FLAG_AMBIGUOUS_PHASE`` (still indexed, with the best phase).
AMBIGUOUS_MARGIN = 0.01
#: Orientations of a 3° cubochoric grid over all of SO(3) (orix: 30,443 in m-3m's zone).
_SO3_ENTRIES_AT_3DEG = 730_632
#: Refinement works at the patterns' own resolution up to this many pixels a side;
#: larger patterns are binned by the smallest whole factor that gets them there.
REFINE_MAX_SIDE = 160
#: Full-resolution refinement iterations per pattern (after the coarse levels).
REFINE_ITERATIONS = 3
#: The same from a coarse dictionary's entry (up to ~2.6° off; no model), in two
#: refinements of this many, the second started afresh where the first stopped: on the
#: phases benchmark's maps (realistic camera) the first alone stopped short, its
#: Levenberg–Marquardt damping grown. α-Ti, 200 patterns: one refinement of 8 iterations
#: 0.475° mean (NCC 0.658), two of 8 0.246° (0.667), one of 30 0.226° (0.669), refined
#: from the truth 0.216° (the camera's distortion and PC error are the rest); ferrite,
#: 300 patterns: 6 iterations 0.506°, 8 0.357°, 15 0.346°. A second pass of 3 instead of
#: 8: ferrite 0.343° → 0.362°, α-Ti 0.257° → 0.325°, for 25% less time.
DICTIONARY_START_ITERATIONS = 8
SECOND_PASS_ITERATIONS = 8
#: With the fallback on, refinements whose NCC is below this fraction of
#: ``FALLBACK_NCC`` after their first full-resolution iteration give up there: at
#: dose 15 the CNN's start is wrong for 264 of 1,600 patterns, which ended at most
#: at 0.13 after 9.4 iterations each; after one they were at most at 0.11, and 1% of
#: the right ones below 0.14 (the few right ones below 0.1 go to the fallback too).
GIVE_UP_FRACTION = 0.5
#: Patterns (spread over the map) that fit the map's pattern-centre correction, and
#: their iterations (orientation and PC move together, so they need more than
#: ``REFINE_ITERATIONS``; patterns still moving get refinement's extra ones). Measured
#: on the bench's map with the stated PC 0.01 off, compiled: 10 → 6 iterations took the
#: fit from 0.90 to 0.70 s of the map's 3.0 s, same PC to 1e-4, error 0.0574° → 0.0571°;
#: 0.025 off, 0.0574° → 0.0579°; 4 iterations: 0.0578° and 0.0592°.
PC_CALIBRATION_PATTERNS = 128
PC_CALIBRATION_ITERATIONS = 6
#: Simulated patterns (and their seed) that set the int8 network's activation scales.
INT8_CALIBRATION_PATTERNS = 512
INT8_CALIBRATION_BATCH = 256  # the stream's batches they are drawn in
INT8_CALIBRATION_SEED = 20_000_000
#: Maps from this size refine through torch.compile: its compile (20–70 s on 2 cores,
#: once per process; less with inductor's on-disk cache warm) is then repaid.
COMPILE_MIN_PATTERNS = 50_000
#: Seconds to wait for a dask scheduler (``scheduler=``) before giving up.
SCHEDULER_TIMEOUT_S = 30


#: The model used when neither a model nor a phase is given.
DEFAULT_MODEL = "ni-60"
#: ``adapt``: a point takes the adapted pass's answer only when its NCC is higher by this.
ADAPT_MIN_GAIN = 0.01


class IndexingError(ValueError):
    """The patterns cannot be indexed with this model as given (shape, PC, phase)."""


_KIKUCHIPY_DEFAULT_PC = (0.5, 0.5, 0.5)


def _pattern_centres(detector, n: int, pc: tuple[float, float, float] | None) -> np.ndarray:
    """One Bruker PC per pattern ``(n, 3)``: the given one, else the detector's.

    Raises
    ------
    IndexingError
        The file has no PC (kikuchipy then reports its default, exactly
        (0.5, 0.5, 0.5)) and none is given; or a PC lies outside the physical
        range 0 ≤ x, y ≤ 1, z > 0.
    """
    if pc is not None:
        pcs = np.tile(np.asarray(pc, dtype=np.float64), (n, 1))
    else:
        pcs = np.asarray(detector.pc, dtype=np.float64).reshape(-1, 3)
        if np.all(pcs == _KIKUCHIPY_DEFAULT_PC):
            raise IndexingError(
                "the file holds no pattern centre (kikuchipy's default 0.5, 0.5, 0.5); "
                "give one with --pc X Y Z"
            )
        if len(pcs) == 1:
            pcs = np.tile(pcs, (n, 1))
        elif len(pcs) != n:
            raise IndexingError(f"the detector has {len(pcs)} pattern centres for {n} patterns")
    unphysical = unphysical_pattern_centres(pcs)
    if unphysical.any():
        bad = pcs[unphysical][0]
        raise IndexingError(
            f"pattern centre ({bad[0]:g}, {bad[1]:g}, {bad[2]:g}) is outside the physical "
            "range 0 ≤ x, y ≤ 1, z > 0"
        )
    return pcs


def _map_phase(master_pattern: MasterPattern):
    """The orix ``Phase`` a map carries for a master pattern (its own, or one named
    from its point group)."""
    from orix.crystal_map import Phase

    if master_pattern.phase is not None:
        return master_pattern.phase.deepcopy()
    return Phase(name=master_pattern.phase_name or "phase", point_group=master_pattern.point_group)


def _check_phase(signal, masters: list[MasterPattern]) -> None:
    """Refuse a file whose stored phases share no Laue group with the phases indexed for
    (a file may hold more phases than a user indexes for, not only others)."""
    xmap = getattr(signal, "xmap", None)
    if xmap is None:
        return
    stored = [p for _, p in xmap.phases_in_data if p.point_group is not None]
    wanted = {laue_group(mp.point_group) for mp in masters}
    if stored and not any(p.point_group.laue.name in wanted for p in stored):
        theirs = ", ".join(f"{p.name!r} ({p.point_group.name})" for p in stored)
        ours = ", ".join(f"{mp.phase_name or 'the phase'} ({mp.point_group})" for mp in masters)
        raise IndexingError(
            f"the file's phases {theirs} share no symmetry with {ours} indexed for: "
            "give the file's phase (--phase) or a model trained for it"
        )


def _model_and_phases(model, phases, master_pattern, energy, device):
    """The network and card (``None, None`` without a model), the master patterns the
    map is refined against (one per phase), and which of them the network starts.

    Without ``phases``: the model (default ``ni-60``) and the master pattern it was
    trained on. With ``phases``: their master patterns (a CIF's is simulated or taken
    from the cache) and, only when one is named, a model that starts the phases of its
    Laue group (it must have one).
    """
    from ebsdnet.phases import PhaseError
    from ebsdnet.phases import master_pattern as phase_master_pattern

    if phases is not None and master_pattern is not None:
        raise IndexingError("give the phases or a master pattern, not both")
    if phases is not None and not len(phases):
        raise IndexingError("the phase list is empty: give at least one phase")
    if phases is None and model is None:
        model = DEFAULT_MODEL
    net, card = (None, None) if model is None else _inference_model(model, device)
    if phases is None:
        if master_pattern is None:
            master_pattern = MasterPattern.nickel()
        if master_pattern.sha256 != card["master_pattern_sha256"]:
            raise IndexingError(
                "the master pattern is not the one this model was trained on (hash differs)"
            )
        return net, card, [master_pattern], [True]
    try:
        patterns = [phase_master_pattern(source, energy) for source in phases]
    except PhaseError as exc:
        raise IndexingError(str(exc)) from None
    names = [mp.phase_name for mp in patterns]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise IndexingError(f"two phases are named {twice[0]!r}: phase names must differ")
    if card is None:
        return None, None, patterns, [False] * len(patterns)
    trained = laue_group(card["point_group"])
    started = [laue_group(mp.point_group) == trained for mp in patterns]
    if not any(started):
        wanted = ", ".join(
            f"{mp.phase_name!r} has {laue_group(mp.point_group)}" for mp in patterns
        )
        raise IndexingError(
            f"model {Path(str(model)).name} is trained for Laue group {trained}, but phase "
            f"{wanted}: drop --model or use one trained for this phase"
        )
    return net, card, patterns, started


def _check_pc_range(pcs: np.ndarray, card: dict) -> None:
    lo = np.array([r[0] for r in card["pc_range"]])
    hi = np.array([r[1] for r in card["pc_range"]])
    outside = ((pcs < lo) | (pcs > hi)).any(axis=1)
    if outside.any():
        ranges = [tuple(round(v, 3) for v in r) for r in card["pc_range"]]
        log.warning(
            "%d of %d pattern centres lie outside the model's training range %s; "
            "expect larger errors there",
            int(outside.sum()),
            len(pcs),
            ranges,
        )


def _static_background(signal, use: bool) -> np.ndarray | None:
    if not use:
        return None
    bg = getattr(signal, "static_background", None)
    if bg is not None and np.shape(bg) == signal.axes_manager.signal_shape[::-1]:
        return np.asarray(bg, dtype=np.float32)
    # No background in the file: the scan's mean pattern, where bands average out.
    n = signal.axes_manager.navigation_size or 1
    mean, count = usable_mean(signal.data.reshape((n, *signal.data.shape[-2:])), n)
    if mean is None or count >= SCAN_MEAN_MIN_PATTERNS:
        return mean
    # Few patterns, few grains: blurred, their mean keeps the detector's profile and
    # loses most of its bands.
    blurred = gaussian_blur(torch.from_numpy(mean)[None], SMALL_SCAN_BLUR * mean.shape[-1])
    return blurred[0].numpy()


_FALLBACK_DICTIONARIES: dict[tuple, object] = {}
#: Dictionaries kept between calls: a map's phases (each ≤ ``DICTIONARY_MAX_BYTES``).
MAX_CACHED_DICTIONARIES = 3


def match_shape(shape: tuple[int, int]) -> tuple[int, int]:
    """The pooled ``(rows, cols)`` a coarse dictionary matches patterns of ``shape`` at:
    at most ``MATCH_SIDE`` pixels a side, the aspect kept (60×60 → 30×30, 100×120 → 25×30)."""
    factor = max(1, -(-max(shape) // MATCH_SIDE))
    return (max(1, round(shape[0] / factor)), max(1, round(shape[1] / factor)))


def dictionary_resolution(point_group: str, shape: tuple[int, int]) -> float:
    """The coarse dictionary's grid spacing (degrees) for a phase's Laue group: 3°, or
    coarser where 3° would exceed ``DICTIONARY_MAX_BYTES`` at :func:`match_shape`.

    >>> dictionary_resolution("m-3m", (60, 60)), round(dictionary_resolution("-1", (60, 60)), 2)
    (3.0, 3.9)
    """
    from ebsdnet.rotations import orix_point_group

    order = orix_point_group(point_group).laue_proper_subgroup.size
    rows, cols = match_shape(shape)
    bytes_at_3 = _SO3_ENTRIES_AT_3DEG / order * rows * cols * 2  # bfloat16 entries
    return FALLBACK_RESOLUTION_DEG * max(1.0, (bytes_at_3 / DICTIONARY_MAX_BYTES) ** (1 / 3))


def refine_shape(shape: tuple[int, int]) -> tuple[int, int]:
    """The shape refinement matches patterns of ``shape`` at: their own, or binned by the
    smallest whole factor dividing both sides that brings them to ``REFINE_MAX_SIDE``."""
    rows, cols = shape
    for factor in range(1, max(shape) + 1):
        if rows % factor == 0 and cols % factor == 0 and max(shape) / factor <= REFINE_MAX_SIDE:
            return rows // factor, cols // factor
    return shape


def phase_dictionary(
    master_pattern: MasterPattern,
    geometry: DetectorGeometry,
    config: PreprocessConfig,
    show_progressbar: bool = False,
    oversample: int = DICTIONARY_OVERSAMPLE,
):
    """The phase's coarse dictionary at ``geometry`` (PC rounded to 0.001), built once and
    cached: see ``FALLBACK_RESOLUTION_DEG``, :func:`match_shape`, :func:`dictionary_resolution`."""
    from ebsdnet.baselines import build_dictionary

    geometry = replace(geometry, pc=tuple(round(float(v), 3) for v in geometry.pc))
    resolution = dictionary_resolution(master_pattern.point_group, geometry.shape)
    key = (master_pattern.texture_key, geometry, config, resolution, oversample)
    if key not in _FALLBACK_DICTIONARIES:
        log.info("building the %.3g° dictionary of %s", resolution, master_pattern.phase_name)
        while len(_FALLBACK_DICTIONARIES) >= MAX_CACHED_DICTIONARIES:  # oldest out
            del _FALLBACK_DICTIONARIES[next(iter(_FALLBACK_DICTIONARIES))]
        shape = match_shape(geometry.shape)
        # Simulated at ``oversample`` times the matching shape, not the detector's.
        f = oversample
        simulated = tuple(min(n, f * m) for n, m in zip(geometry.shape, shape, strict=True))
        _FALLBACK_DICTIONARIES[key] = build_dictionary(
            resolution, master_pattern, replace(geometry, shape=simulated), config, shape=shape,
            show_progressbar=show_progressbar,
        )  # fmt: skip
    return _FALLBACK_DICTIONARIES[key]


def fallback_dictionary(projector: Projector, pc: Tensor, config: PreprocessConfig):
    """The coarse dictionary for ``projector``'s detector at PC ``pc`` (built once, cached;
    see :func:`phase_dictionary`)."""
    geometry = replace(projector.geometry, pc=tuple(float(v) for v in pc))
    return phase_dictionary(
        projector.master_pattern, geometry, config, oversample=FALLBACK_OVERSAMPLE
    )


def _refine(
    patterns: Tensor,
    candidates: Tensor,
    pcs: Tensor,
    projector: Projector,
    config: PreprocessConfig,
    refine_pc: bool,
    fallback_ncc: float | None,
    iterations: int,
    compiled: bool = False,
    ranked: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Refine the CNN's candidates; where the NCC stays low, refine dictionary candidates too.

    ``ranked``: the coarse dictionary's ``(B, FALLBACK_CANDIDATES, 4)`` best entries,
    when the start already is the first of them (a phase indexed without a model):
    the fallback then goes on with the others, and the start gets
    ``DICTIONARY_START_ITERATIONS``.

    A coarse dictionary's best entry is refined first, only for the patterns
    whose NCC is below ``fallback_ncc``: mostly it is the right one (measured
    at dose 15: the first entry refines to the right orientation for 493 of
    502 low patterns, all of those above the threshold). Patterns still below
    it then refine all of the other ``FALLBACK_CANDIDATES - 1`` entries in one
    batch — noise can put the right entry further down — rather than one rank
    after another: the few such patterns of a batch are mostly ones no entry
    lifts (on a 1,600-pattern map at dose 15, 21 calls of one pattern each,
    0.34 of 3.9 s). Those refinements get twice the iterations: a 3° grid starts
    them up to ~2.6° away, twice the CNN's usual error, and stopping them short
    left the nine real patterns at 0.165° instead of 0.078° (dose 15: 0.177° →
    0.175°, 12% slower).
    """
    # A PC fit feeds the map's one mean correction: stopping each pattern within its
    # noise would leave every fit short of its optimum on the start's side, a bias
    # that the mean keeps (measured: corrections 1–2·10⁻⁴ short of the true 0.01).
    noise_tol = 0.0 if refine_pc else NOISE_TOL
    result = refine_orientations(
        patterns, candidates, projector, pcs, config, refine_pc=refine_pc,
        max_iterations=iterations if ranked is None else DICTIONARY_START_ITERATIONS,
        compiled=compiled,
        noise_tol=noise_tol,
        give_up_ncc=None if fallback_ncc is None else GIVE_UP_FRACTION * fallback_ncc,
    )  # fmt: skip
    q, pcs, ncc = result.quaternions, result.pcs, result.ncc
    if ranked is not None:
        # From a dictionary entry the damping has often grown large before the optimum:
        # a second refinement, fresh, from where the first stopped (see
        # DICTIONARY_START_ITERATIONS for the measurement).
        again = refine_orientations(
            patterns, q, projector, pcs, config, refine_pc=refine_pc,
            max_iterations=SECOND_PASS_ITERATIONS, compiled=compiled, noise_tol=noise_tol,
        )  # fmt: skip
        q, pcs, ncc = again.quaternions, again.pcs, again.ncc
    if fallback_ncc is None:
        return q, pcs, ncc
    low = (ncc < fallback_ncc).nonzero().squeeze(1)
    if len(low) == 0:
        return q, pcs, ncc
    if ranked is None:
        dictionary = fallback_dictionary(projector, pcs.mean(0), config)
        starts, _ = dictionary.top(patterns[low].cpu(), FALLBACK_CANDIDATES)
        rank_groups = (slice(0, 1), slice(1, FALLBACK_CANDIDATES))
    else:
        starts, rank_groups = ranked[low], (slice(1, ranked.shape[1]),)
    starts = starts.to(q.device)
    for ranks in rank_groups:
        still = (ncc[low] < fallback_ncc).nonzero().squeeze(1)
        if len(still) == 0:
            break
        rows = low[still]
        tried = starts[still, ranks]  # (S, R, 4): each refined, the best kept
        r = tried.shape[1]
        second = refine_orientations(
            patterns[rows].repeat_interleave(r, 0), tried.reshape(-1, 4), projector,
            pcs[rows].repeat_interleave(r, 0), config, refine_pc=refine_pc,
            max_iterations=2 * iterations, compiled=compiled, noise_tol=noise_tol,
        )  # fmt: skip
        best = second.ncc.reshape(-1, r).argmax(1) + r * torch.arange(len(rows), device=q.device)
        better = second.ncc[best] > ncc[rows]
        kept, best = rows[better], best[better]
        q[kept], pcs[kept], ncc[kept] = (
            second.quaternions[best], second.pcs[best], second.ncc[best]
        )  # fmt: skip
    return q, pcs, ncc


class _FinishedBatches:
    """Results of finished batches on disk, so that a killed run can resume.

    One ``.npz`` per batch, written under a temporary name and renamed, beside
    ``settings.json``: a resumed run must match those settings (data, model,
    options), or it would splice two different maps together.
    """

    def __init__(self, folder: Path, settings: dict) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "settings.json"
        if path.exists():
            saved = json.loads(path.read_text())
            if saved != settings:
                changed = sorted(k for k in settings if saved.get(k) != settings[k])
                raise IndexingError(
                    f"the interrupted run in {folder} differs in {', '.join(changed)}; "
                    "start over (--force) or resume with the same settings"
                )
        else:
            self._write(path, json.dumps(settings, indent=2).encode())

    def _write(self, path: Path, payload: bytes) -> None:
        tmp = path.with_name(path.name + ".partial")
        tmp.write_bytes(payload)
        os.replace(tmp, path)

    def load(self, name: str) -> dict | None:
        path = self.folder / f"{name}.npz"
        if not path.exists():
            return None
        with np.load(path) as f:
            return {k: f[k] for k in f.files}

    def save(self, name: str, **arrays) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        self._write(self.folder / f"{name}.npz", buffer.getvalue())


def _run_settings(data, n: int, model_sha256: str, pcs: np.ndarray, options: dict) -> dict:
    """What must match for a resumed run to continue the same map (``model_sha256``: the
    weights', or what identifies the dictionary without a model)."""
    ends = np.asarray(data[0]).tobytes() + np.asarray(data[n - 1]).tobytes()
    return {
        "patterns": n,
        "data_ends_sha256": hashlib.sha256(ends).hexdigest(),
        "model_sha256": model_sha256,
        "pc_sha256": hashlib.sha256(np.ascontiguousarray(pcs).tobytes()).hexdigest(),
        **options,
    }


def _calibrated_pcs(pcs: np.ndarray, read, run) -> np.ndarray:
    """The stated pattern centres plus one correction fitted on a spread subset of the map.

    Orientation and PC are refined together on up to ``PC_CALIBRATION_PATTERNS``
    patterns spread over the map; the mean shift of those within 3 MADs of the
    median (wrong orientations fit wild PCs) corrects every pattern's PC. One
    correction for the map rather than one PC per pattern: rotation and PC nearly
    trade for each other on a single noisy pattern, while the mean over a hundred
    averages the noise out. A mean rather than a median: on six dose-100 maps with
    the stated PC 0.01 off, the correction's largest error was 1.7·10⁻⁴ (root mean
    square) from 128 patterns, against 3.0·10⁻⁴ for the median of the better-matching
    half (2.1·10⁻⁴ from 256); 10⁻⁴ of PC is about 0.01° of orientation.
    """
    n = len(pcs)
    rows = np.unique(np.linspace(0, n - 1, min(n, PC_CALIBRATION_PATTERNS)).round().astype(int))
    _, fitted, _, flag, *_ = run(read(rows), pcs[rows], True, PC_CALIBRATION_ITERATIONS)
    shifts = (fitted - pcs[rows])[flag.numpy() == FLAG_INDEXED]
    if not len(shifts):
        return pcs
    median = np.median(shifts, axis=0)
    spread = 1.4826 * np.median(np.abs(shifts - median), axis=0)
    inliers = (np.abs(shifts - median) <= 3 * spread + 1e-12).all(axis=1)
    shift = shifts[inliers].mean(axis=0)
    log.info(
        "pattern centre corrected by (%+.4f, %+.4f, %+.4f) from %d patterns",
        *shift,
        int(inliers.sum()),
    )
    return pcs + shift


@dataclass
class _Phase:
    """One phase's start (its CNN, or its coarse dictionary) and refinement. Picklable:
    dask workers receive one copy (``--scheduler``); each builds its projector and
    network kernel on first use."""

    master_pattern: MasterPattern
    geometry: DetectorGeometry  # at the shape refinement matches (see refine_shape)
    config: PreprocessConfig
    device: str
    precision: str  # resolved: "int8", "bfloat16" or "float32"
    fallback_ncc: float | None
    compiled: bool
    batch_size: int
    net: torch.nn.Module | None = None  # None: the coarse dictionary gives the start
    model_shape: tuple[int, int] | None = None
    model_pc: tuple[float, float, float] | None = None  # the card's nominal pattern centre
    dictionary: object | None = None  # phase_dictionary: the start, or the screen

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_projector", None)
        state.pop("_cnn", None)
        return state

    @property
    def name(self) -> str:
        return self.master_pattern.phase_name

    @property
    def projector(self) -> Projector:
        if "_projector" not in self.__dict__:
            projector = Projector(self.master_pattern, self.geometry).to(self.device)
            self.__dict__["_projector"] = projector
        return self.__dict__["_projector"]

    @property
    def cnn(self) -> _Kernel:
        """The network, compiled when ``compiled``: one graph per batch shape, weights
        frozen (measured 1.13–1.25× the eager bfloat16 network on these CPUs; shape-generic
        graphs of it fail to compile in bfloat16). In int8, one graph for batches of
        ``batch_size`` (see :meth:`network`)."""
        if "_cnn" not in self.__dict__:
            kernel = None
            if self.precision == "int8":
                try:
                    kernel = _cnn_kernel(self.net, self.batch_size, self._calibration)
                except Exception as exc:  # torchao's and export's errors have no common base
                    self.precision = resolve_precision(self.device, "auto", compiled=False)
                    log.warning(
                        "int8 quantization failed (%s); the CNN runs in %s", _first_line(exc),
                        self.precision,
                    )  # fmt: skip
            self.__dict__["_cnn"] = kernel or _cnn_kernel(self.net, None, self._calibration)
        return self.__dict__["_cnn"]

    def _calibration(self) -> torch.Tensor:
        # The CNN's view: its trained shape, at its nominal PC.
        geometry = replace(self.geometry, shape=self.model_shape, pc=self.model_pc)
        return int8_calibration(self.master_pattern, geometry, self.config)

    def _at_model_pc(self, patterns: torch.Tensor, pcs: torch.Tensor) -> torch.Tensor:
        """The CNN's view of ``patterns``: resampled from their pattern centres to the
        model's nominal one. The network was trained on PCs jittered around it and
        cannot tell a PC shift from a small rotation; the file's PC is known, so it
        need not guess (held-out dose 100, PC ±0.03: median error 1.98° → 1.45°)."""
        target = torch.tensor(self.model_pc, dtype=patterns.dtype, device=patterns.device)
        return resample_to_pattern_centre(patterns, pcs, target)

    def network(self, patterns: torch.Tensor) -> dict[str, torch.Tensor]:
        """The CNN's float32 output for conditioned ``patterns`` (any number)."""
        dev = torch.device(self.device)
        cnn = self.cnn  # built first: int8 falls back to another precision if it must
        if self.precision != "int8":
            with inference_autocast(dev, self.precision):
                output = cnn(patterns, compiled=self.compiled)
            return {key: value.float() for key, value in output.items()}
        # The int8 graph takes whole batches of batch_size: pad the last with zeros.
        outputs = []
        for chunk in patterns.split(self.batch_size):
            n = len(chunk)
            if n < self.batch_size:
                chunk = torch.cat([chunk, chunk.new_zeros(self.batch_size - n, *chunk.shape[1:])])
            with inference_autocast(dev, "int8"):
                output = cnn(chunk, compiled=True)
            outputs.append({key: value[:n].float() for key, value in output.items()})
        return {key: torch.cat([o[key] for o in outputs]) for key in outputs[0]}

    def start(self, raw, bg, patterns: Tensor, pcs: Tensor):
        """Each pattern's start ``(B, 4)``; from the coarse dictionary (no network) also its
        ranked candidates ``(B, FALLBACK_CANDIDATES, 4)`` and their best NCC ``(B,)``, the
        phase's screen (see :meth:`screen`); ``None, None`` when the CNN starts."""
        dev = torch.device(self.device)
        if self.net is None:
            ranked, scores = self.dictionary.top(patterns.cpu(), FALLBACK_CANDIDATES)
            ranked = ranked.to(dev)
            return ranked[:, 0].clone(), ranked, scores[:, 0].to(dev)
        output = self.network(self.cnn_inputs(raw, bg, pcs, patterns))
        return self.net.to(dev).to_quaternions(output), None, None

    def cnn_inputs(self, raw, bg, pcs: Tensor, patterns: Tensor | None = None) -> Tensor:
        """The network's view of ``raw`` patterns: conditioned at its trained shape,
        resampled to its nominal PC. ``patterns``, when given, are ``raw`` already
        conditioned at refinement's shape (reused where the shapes agree)."""
        seen = patterns
        if seen is None or self.model_shape != self.geometry.shape:
            seen = preprocess(raw, self.config, static_background=bg, shape=self.model_shape)
        return self._at_model_pc(seen.to(torch.device(self.device)), pcs)

    def screen(self, patterns: Tensor) -> Tensor:
        """Each pattern's best NCC in the phase's coarse dictionary ``(B,)``: which phases
        are worth refining."""
        _, score = self.dictionary.top(patterns.cpu(), 1)
        return score[:, 0].to(patterns.device)

    def refine(self, patterns, q, pcs, ranked, fit_pc: bool, iterations: int):
        """:func:`_refine` from ``q`` (the fallback's candidates: ``ranked``)."""
        return _refine(
            patterns, q, pcs, self.projector, self.config, fit_pc, self.fallback_ncc,
            iterations, self.compiled, ranked,
        )  # fmt: skip

    def ncc(self, patterns: Tensor, q: Tensor, pcs: Tensor) -> Tensor:
        return match_ncc(patterns, q, self.projector, pcs, self.config, self.compiled)


@dataclass
class _BatchIndexer:
    """What one batch needs: the conditioning shared by every phase, and the phases.
    Picklable (see :class:`_Phase`)."""

    phases: list[_Phase]
    config: PreprocessConfig
    background: np.ndarray | None
    shape: tuple[int, int]  # refinement's (see refine_shape)
    device: str
    refine: bool

    def run(self, raw: np.ndarray, pc_block: np.ndarray, fit_pc: bool, iterations: int):
        """Start (+ refinement) of one block: quaternions, PCs, NCC, ``FLAG_*`` (0–3), each
        pattern's phase (index into ``phases``) and its margin over the runner-up phase
        (NaN with one phase)."""
        dev = torch.device(self.device)
        raw = as_tensor(raw)
        bg = None if self.background is None else torch.from_numpy(self.background)
        # NaN/inf, constant or saturated patterns carry no orientation: mark them
        # not indexed, and zero them so that they cannot disturb the batch (in a copy:
        # float32 ``raw`` is the caller's own array).
        flag = pattern_flags(raw)
        bad = flag != FLAG_INDEXED
        raw = raw.float()
        if bad.any():
            raw = torch.where(bad[:, None, None], 0.0, raw)
        # Refinement sees the patterns at their own resolution (binned only when large);
        # a network sees them conditioned at its trained shape, as in training.
        patterns = preprocess(raw, self.config, static_background=bg, shape=self.shape)
        patterns = patterns.to(dev)
        pc_batch = torch.from_numpy(pc_block).float().to(dev)
        b = len(patterns)
        good = (~bad).nonzero().squeeze(1).to(dev)
        phase = torch.zeros(b, dtype=torch.long)
        margin = torch.full((b,), float("nan"), dtype=torch.float64)
        if len(self.phases) == 1:
            q, ranked, _ = self.phases[0].start(raw, bg, patterns, pc_batch)
            if not self.refine:
                score = self.phases[0].ncc(patterns, q, pc_batch).double().cpu()
                return q, pc_batch.double().cpu().numpy(), score, flag, phase, margin
            # Refinement starts from the most likely hypothesis only. Judging all of them by
            # their coarse NCC first picked worse ones under noise: a start 3–5° off
            # correlates no better than a wrong one there. Measured (simulated 40×40 maps,
            # fallback off → on): dose 15, 292 → 174 of 1,600 above 5° with the top one
            # alone; dose 100 at contrast 0.3, 7 → 2; the nine real patterns 5 → 1 of 9;
            # with the fallback (the default) every map ended within 5° either way, the
            # same mean errors to ±0.003°, 2–5% faster without the judging.
            q_good, pc_good, ncc_good = self.phases[0].refine(
                patterns[good], q[good], pc_batch[good],
                None if ranked is None else ranked[good], fit_pc, iterations,
            )  # fmt: skip
            q[good], pc_batch[good] = q_good, pc_good
            score = torch.zeros(b, dtype=torch.float64)
            score[good.cpu()] = ncc_good.double().cpu()
            return q, pc_batch.double().cpu().numpy(), score, flag, phase, margin
        q, pcs, ncc, which, second = self._phases_of(
            patterns[good], raw[good.cpu()], bg, pc_batch[good], fit_pc, iterations
        )
        q_all = torch.zeros(b, 4, device=dev)
        q_all[:, 0] = 1.0
        q_all[good], pc_batch[good] = q, pcs
        score = torch.zeros(b, dtype=torch.float64)
        score[good.cpu()] = ncc.double().cpu()
        phase[good.cpu()] = which.cpu()
        margin[good.cpu()] = (ncc - second).double().cpu()
        return q_all, pc_batch.double().cpu().numpy(), score, flag, phase, margin

    def _phases_of(self, patterns, raw, bg, pcs, fit_pc: bool, iterations: int):
        """Several phases: every phase screened by its coarse dictionary, the contenders
        (within ``SCREEN_MARGIN`` of the best screen) started and refined, the highest
        final NCC wins. The runner-up's NCC is its refined one where it contended,
        else that of its start."""
        k, g = len(self.phases), len(patterns)
        starts = [ph.start(raw, bg, patterns, pcs) for ph in self.phases]
        # A dictionary start's best NCC is its screen; a CNN-started phase matches its own.
        screens = torch.stack(
            [
                ph.screen(patterns) if sc is None else sc
                for ph, (*_, sc) in zip(self.phases, starts, strict=True)
            ]
        )  # (K, G)
        contender = screens >= screens.max(0).values - SCREEN_MARGIN
        if not self.refine:
            contender[:] = False
        qs = torch.stack([q for q, *_ in starts])
        pcs_k = pcs.expand(k, g, 3).clone()
        final = torch.full((k, g), -1.0, device=patterns.device)
        for i, (ph, (q, ranked, _)) in enumerate(zip(self.phases, starts, strict=True)):
            rows = contender[i].nonzero().squeeze(1)
            rest = (~contender[i]).nonzero().squeeze(1)
            if len(rows):
                qs[i, rows], pcs_k[i, rows], final[i, rows] = ph.refine(
                    patterns[rows], q[rows], pcs[rows], None if ranked is None else ranked[rows],
                    fit_pc, iterations,
                )  # fmt: skip
            if len(rest):  # at the start: not refined, or the runner-up's NCC for the margin
                final[i, rest] = ph.ncc(patterns[rest], q[rest], pcs[rest])
        top = final.topk(2, dim=0)
        which, second = top.indices[0], top.values[1]
        cols = torch.arange(g, device=patterns.device)
        return qs[which, cols], pcs_k[which, cols], top.values[0], which, second

    def batch(self, raw: np.ndarray, pc_block: np.ndarray, min_ncc: float) -> dict:
        """One batch of the map: ``quaternions``, ``ncc``, ``not_indexed``, ``flag``,
        ``phase`` and ``phase_margin`` arrays."""
        with torch.no_grad():
            q, _, score, flag, phase, margin = self.run(raw, pc_block, False, REFINE_ITERATIONS)
        flag[(flag == FLAG_INDEXED) & (score < min_ncc)] = FLAG_LOW_NCC
        bad = flag != FLAG_INDEXED
        flag[~bad & (margin < AMBIGUOUS_MARGIN)] = FLAG_AMBIGUOUS_PHASE  # NaN: one phase
        return {
            "quaternions": q.double().cpu().numpy(),
            "ncc": torch.where(bad, 0.0, score).numpy().astype(np.float32),
            "not_indexed": bad.numpy(),
            "flag": flag.numpy(),
            "phase": phase.numpy().astype(np.int16),
            "phase_margin": torch.where(bad, float("nan"), margin).numpy().astype(np.float32),
        }


def int8_calibration(
    master_pattern: MasterPattern, geometry: DetectorGeometry, config: PreprocessConfig
) -> torch.Tensor:
    """Conditioned patterns that set an int8 network's activation scales:
    ``INT8_CALIBRATION_PATTERNS`` from the training stream's default degradations at
    this detector, seeded, so that every run quantizes from the same patterns
    whatever its batch size."""
    from ebsdnet.stream import PatternStream

    stream = PatternStream(
        master_pattern, geometry, batch_size=INT8_CALIBRATION_BATCH, preprocessing=config,
        seed=INT8_CALIBRATION_SEED,
    )  # fmt: skip
    n_batches = -(-INT8_CALIBRATION_PATTERNS // INT8_CALIBRATION_BATCH)
    patterns = torch.cat([stream.batch(k)["patterns"] for k in range(n_batches)])
    return patterns[:INT8_CALIBRATION_PATTERNS]


_INFERENCE_NETS: dict[tuple, tuple[torch.nn.Module, dict]] = {}
_CNN_KERNELS: dict[tuple, tuple[torch.nn.Module, _Kernel]] = {}


def _file_stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _inference_model(model: str | Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """:func:`~ebsdnet.models.for_inference` of a model and its card, loaded (and its
    checksum verified) once per process while its files stay unchanged: every call
    of :func:`index` then gets the same object, whose compiled graphs serve it
    (compiled code is tied to the module it was traced from), and skips reading and
    hashing the weights again (measured 38 ms per call, 7% of the CNN alone on a
    1,600-pattern map)."""
    card_file = card_path(model)
    weights = card_file.with_suffix(".safetensors")
    key = (str(card_file.resolve()), _file_stamp(card_file), _file_stamp(weights), str(device))
    if key not in _INFERENCE_NETS:
        net, card = load_model(model, device=device)
        _INFERENCE_NETS.clear()  # keep one
        _INFERENCE_NETS[key] = for_inference(net), card
    return _INFERENCE_NETS[key]


def _cnn_kernel(net: torch.nn.Module, int8_batch: int | None, calibration) -> _Kernel:
    """The compilable network of an inference copy, kept with it: the copy itself, or
    with ``int8_batch`` its int8 graph for batches of that size, calibrated on
    ``calibration()``. Both stay while the copy is in use: a float run between two
    compiled ones must not cost the int8 graph's quantization and compile again."""
    if not _cnn_kernel_kept(net, int8_batch):
        for old in [k for k, (kept, _) in _CNN_KERNELS.items() if kept is not net]:
            del _CNN_KERNELS[old]  # another model's: its graphs serve no one now
        if int8_batch is None:
            model = net
        else:  # int8: GELUs in their sigmoid form, which runs inside oneDNN's convolutions
            model = quantized_int8(sigmoid_gelu(net), calibration(), int8_batch)
        _CNN_KERNELS[(id(net), int8_batch)] = (net, _Kernel(model, dynamic=False, freezing=True))
    return _CNN_KERNELS[(id(net), int8_batch)][1]


def _cnn_kernel_kept(net: torch.nn.Module, int8_batch: int | None) -> bool:
    """Whether :func:`_cnn_kernel` already holds this network's kernel (no quantization
    or compile to wait for)."""
    entry = _CNN_KERNELS.get((id(net), int8_batch))
    return entry is not None and entry[0] is net


def _batch_on_worker(indexer: _BatchIndexer, raw, pc_block, min_ncc: float) -> dict:
    """A dask task: one batch, with torch using the worker's threads (not every core)."""
    from distributed import get_worker

    torch.set_num_threads(max(1, int(getattr(get_worker().state, "nthreads", 1))))
    return indexer.batch(raw, pc_block, min_ncc)


def _batches_on_cluster(scheduler: str, indexer: _BatchIndexer, spans, read, pcs, min_ncc):
    """Yield ``(start, stop, results)`` of the batches ``spans`` run on a dask cluster.

    The indexer goes to every worker once; batches are read here and sent as they
    are needed, at most two per worker thread in flight, so memory stays bounded.
    """
    from distributed import Client, as_completed

    try:
        client = Client(scheduler, timeout=f"{SCHEDULER_TIMEOUT_S}s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise IndexingError(f"cannot reach the dask scheduler at {scheduler}: {exc}") from exc
    try:
        [shared] = client.scatter([indexer], broadcast=True)
        limit = 2 * max(1, sum(client.nthreads().values()))
        todo = iter(spans)
        where = {}
        running = as_completed()

        def submit_next() -> None:
            span = next(todo, None)
            if span is not None:
                start, stop = span
                future = client.submit(
                    _batch_on_worker, shared, read(slice(start, stop)), pcs[start:stop],
                    min_ncc, pure=False,
                )  # fmt: skip
                where[future.key] = span
                running.add(future)

        for _ in range(limit):
            submit_next()
        for future in running:
            try:
                results = future.result()
            except Exception as exc:  # whatever a worker raised, reported in one line
                raise IndexingError(f"a batch failed on the dask cluster: {exc}") from exc
            yield *where.pop(future.key), results
            submit_next()
    finally:
        client.close()


def index(
    signal,
    model: str | Path | None = None,
    pc: tuple[float, float, float] | None = None,
    master_pattern: MasterPattern | None = None,
    phase=None,
    energy: float | None = None,
    phases: list | None = None,
    batch_size: int = 256,
    device: str = "auto",
    static_background: bool = True,
    refine: bool = True,
    refine_pc: bool = False,
    min_ncc: float = MIN_NCC,
    fallback_ncc: float | None = FALLBACK_NCC,
    progress_folder: str | Path | None = None,
    show_progressbar: bool | None = None,
    precision: str = "auto",
    compiled: bool | None = None,
    scheduler: str | None = None,
    adapt: float | None = None,
    save_model: str | Path | None = None,
):
    """Index a kikuchipy ``EBSD`` signal (CNN or phase dictionary, then refinement) into a map.

    Parameters
    ----------
    signal
        kikuchipy ``EBSD`` or ``LazyEBSD``; its detector gives the pattern centres
        (one, or one per pattern) and tilts.
    model
        A shipped model's name (``"ni-60"``) or the path of a saved model. Default:
        ``ni-60`` without ``phase``; with ``phase``, none (the phase's coarse
        dictionary gives the start).
    pc
        Bruker pattern centre overriding the detector's.
    master_pattern
        Needed only for a model trained on a master pattern other than
        kikuchipy's shipped Ni; it must have the hash written in the card.
    phase
        The phase to index for: a CIF (a kinematical master pattern is simulated
        at ``energy``, once, and cached; see :mod:`ebsdnet.phases`), a master-pattern
        file, a kikuchipy ``EBSDMasterPattern`` or a
        :class:`~ebsdnet.projector.MasterPattern`. Without a model, each pattern
        starts from its best entries in a coarse dictionary of the phase
        (:func:`phase_dictionary`); with one, of the same Laue group, from the CNN.
        Refinement re-projects this phase's master pattern at the patterns' own
        resolution and detector geometry (shape, tilts, PC from the file).
    energy
        Beam energy (kV) of ``phase``: a CIF's master pattern is simulated at it
        (default 20), a master-pattern file must hold it.
    phases
        Several phases, each as ``phase`` (names must differ). Each pattern is
        screened against every phase's coarse dictionary; the phases within
        ``SCREEN_MARGIN`` of the best screen are refined, and the highest final NCC
        wins. The map then holds property ``phase_margin``: that NCC minus the
        runner-up phase's (refined where it contended, else at its start), small
        where phases are hard to tell apart. A model (``model``) starts the phases
        of its Laue group.
    batch_size
        Patterns per batch, at most: the map is split into batches of equal size.
        Measured on a 10,000-pattern map (2-core CPU): peak memory of the whole
        run 1.5 GB at 256, 1.8 GB at 512, same speed.
    device
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    static_background
        Remove the file's static background (or the scan mean when the file has
        none and the map has at least 10 patterns).
    refine
        Refine each CNN answer by pattern matching (default); ``False`` for the
        CNN alone.
    refine_pc
        The file's (or given) PC is only roughly known: fit one correction to it
        by refining orientation and PC together on a subset spread over the map,
        then index every pattern with the corrected PC; the map then holds
        properties ``pcx``, ``pcy``, ``pcz``.
    min_ncc
        Patterns whose final NCC is below this are marked not indexed.
    fallback_ncc
        With refinement, patterns whose refined NCC stays below this are also
        matched against a coarse dictionary (3°, simulated once per detector
        and cached) and its best entries refined; the higher NCC wins. ``None``
        turns the fallback off.
    progress_folder
        Keep each finished batch's results here; batches already there (from
        an interrupted run with the same data, model and options) are not
        indexed again.
    precision
        The CNN's arithmetic: ``"auto"`` (compiled on a CPU: int8; otherwise
        bfloat16 where the device computes it natively, else float32; see
        :func:`~ebsdnet.models.resolve_precision`), ``"float32"``, ``"bfloat16"``
        or ``"int8"`` (CPU, compiled only). Refinement is always float32.
    compiled
        Run the CNN and refinement's projections through ``torch.compile``
        (faster per pattern, after a compile of tens of seconds); ``None``: only
        for maps of at least ``COMPILE_MIN_PATTERNS`` patterns.
    scheduler
        Address of a dask.distributed scheduler (``tcp://host:8786``): batches
        run on its workers (which need ebsdnet installed), the map is the same
        as from a single process. Patterns are read here and sent to them.
    adapt
        Minutes to fine-tune the CNN on this scan (:mod:`ebsdnet.adapt`): after
        indexing, the confidently indexed points (refined NCC at least the map's
        median) train the network, the map is indexed again with it, and each
        point keeps the first answer unless the second matches clearly better
        (NCC higher by ``ADAPT_MIN_GAIN``). ``None`` or 0: no adaptation. Needs a
        model and one phase.
    save_model
        Write the adapted model here (``.json`` card and ``.safetensors``).

    Returns
    -------
    orix.crystal_map.CrystalMap
        Rotations, the phase list (the phases given, in order, or the model's),
        each point's phase id, and properties ``ncc``, the normalised
        cross-correlation of each pattern with its re-projection,
        ``phase_margin`` (several phases only) and ``flag``, why a point is not
        indexed (phase ``-1``, ``ncc`` 0): 0 indexed, 1 NaN or infinite values,
        2 blank (constant, all zero), 3 saturated (at least half of its pixels at
        its highest value), 4 NCC below ``min_ncc``; or 5, indexed but its phase
        uncertain (margin below ``AMBIGUOUS_MARGIN``) (:mod:`ebsdnet.pattern_flags`).
        Patterns flagged 1–3 are left out of every whole-map statistic (the
        scan's mean background), so the other patterns are indexed as without
        them. When more than half of the points are not indexed (but some are),
        a warning gives the count and the likely cause
        (:func:`~ebsdnet.pattern_flags.not_indexed_summary`).

    Raises
    ------
    IndexingError
        Pattern shape not a whole multiple of the model's; wrong master pattern;
        a bad phase (CIF, energy, duplicate name, empty list, a model of another
        Laue group); no or an unphysical pattern centre; a file phase the model was not
        trained for; no patterns.
    """
    from orix.crystal_map import CrystalMap, PhaseList
    from orix.quaternion import Rotation
    from tqdm.auto import tqdm

    from ebsdnet.train import pick_device

    if batch_size < 1:
        raise IndexingError(f"the batch size must be at least 1, not {batch_size}")
    if not 0 <= min_ncc <= 1:
        raise IndexingError(f"min_ncc must lie in 0–1 (an NCC), not {min_ncc}")
    try:
        dev = pick_device(device)
    except ValueError as exc:
        raise IndexingError(str(exc)) from None
    am = signal.axes_manager
    sig_shape = tuple(am.signal_shape[::-1])  # (rows, cols)
    if phase is not None and phases is not None:
        raise IndexingError("give phase or phases, not both")
    if phase is not None:
        phases = [phase]
    if save_model is not None and not adapt:
        raise IndexingError("saving an adapted model needs adapt (--adapt)")
    if adapt is not None and adapt < 0:
        raise IndexingError(f"adapt is minutes of fine-tuning, at least 0, not {adapt}")
    net, card, masters, started = _model_and_phases(model, phases, master_pattern, energy, dev)
    if adapt and (card is None or len(masters) > 1):
        raise IndexingError(
            "adapting fine-tunes a CNN on one phase: give a model (--model) and one phase"
        )
    model_shape = None if card is None else tuple(card["shape"])
    if model_shape is not None:
        try:
            rebin_factor(sig_shape, model_shape)
        except ValueError:
            raise IndexingError(
                f"patterns are {sig_shape[0]}×{sig_shape[1]} but the model expects "
                f"{model_shape[0]}×{model_shape[1]} (or a whole multiple); retrain, rebin, "
                "or index with --phase alone"
            ) from None
    nav_shape = am.navigation_shape[::-1] or (1,)
    n = int(np.prod(nav_shape))
    if n == 0:
        raise IndexingError("the signal holds no patterns")
    if compiled is None:
        compiled = n >= COMPILE_MIN_PATTERNS
    # Equal batches: the int8 network takes batches of one size and pads a short last
    # one to it (1,600 patterns in batches of 256: 12% of its work on padding).
    batch_size = -(-n // -(-n // batch_size))
    try:
        arithmetic = resolve_precision(dev, precision, compiled)
    except ValueError as exc:
        raise IndexingError(str(exc)) from None
    detector = signal.detector
    pcs = _pattern_centres(detector, n, pc)
    if card is not None:
        _check_pc_range(pcs, card)
    _check_phase(signal, masters)
    geometry = DetectorGeometry(
        shape=refine_shape(sig_shape),
        pc=tuple(pcs.mean(0)),
        sample_tilt=float(detector.sample_tilt),
        tilt=float(detector.tilt),
        azimuthal=float(detector.azimuthal),
        twist=float(detector.twist),
    )
    config = PreprocessConfig(**card["preprocessing"]) if card else PreprocessConfig()
    phase_list = []
    for mp, by_net in zip(masters, started, strict=True):
        dictionary = None  # the start without a network; every phase's screen with several
        if not by_net or len(masters) > 1:
            dictionary = phase_dictionary(
                mp, geometry, config, show_progressbar=show_progressbar is not False
            )
        phase_list.append(
            _Phase(
                master_pattern=mp,
                geometry=geometry,
                config=config,
                device=str(dev),
                precision=arithmetic,
                fallback_ncc=fallback_ncc,
                compiled=compiled,
                batch_size=batch_size,
                net=net if by_net else None,
                model_shape=model_shape if by_net else None,
                model_pc=tuple(card["pc_nominal"]) if by_net else None,
                dictionary=dictionary,
            )
        )
    indexer = _BatchIndexer(
        phases=phase_list, config=config, shape=geometry.shape, device=str(dev),
        background=_static_background(signal, static_background), refine=refine,
    )  # fmt: skip
    data = signal.data.reshape((n, *sig_shape))

    def read(rows) -> np.ndarray:
        block = data[rows]
        try:
            return np.asarray(block.compute() if hasattr(block, "compute") else block)
        except OSError as exc:  # h5py and the binary readers on damaged files
            raise IndexingError(f"cannot read patterns: {exc}") from exc

    store = None
    if progress_folder is not None:
        options = {
            "refine": refine, "refine_pc": refine_pc, "min_ncc": min_ncc,
            "fallback_ncc": fallback_ncc, "batch_size": batch_size,
            "static_background": static_background, "precision": precision,
            "flags": True,  # batches written before the flag property lack it
            "phases": len(masters),
        }  # fmt: skip
        weights = [] if card is None else [card["weights_sha256"]]
        identity = " ".join(weights + [mp.sha256 for mp in masters])
        store = _FinishedBatches(
            Path(progress_folder), _run_settings(data, n, identity, pcs, options)
        )
    first_compile = net is not None and not _cnn_kernel_kept(
        net, batch_size if arithmetic == "int8" else None
    )
    if compiled and scheduler is None and first_compile:
        log.info(
            "compiling the CNN (%s) and the projections: the first batch takes tens of seconds",
            arithmetic,
        )
    with torch.no_grad():
        if refine and refine_pc:
            saved = store.load("pcs") if store else None
            pcs = saved["pcs"] if saved else _calibrated_pcs(pcs, read, indexer.run)
            if store and not saved:
                store.save("pcs", pcs=pcs)
        found = _run_batches(
            indexer, n, batch_size, read, pcs, min_ncc, scheduler, store,
            tqdm(total=n, unit="pattern", desc="index", disable=show_progressbar is False),
        )  # fmt: skip
        if adapt:
            found = _adapted(
                found, indexer, model or DEFAULT_MODEL, adapt, save_model, read, pcs, n,
                batch_size, min_ncc, scheduler, show_progressbar is not False,
            )  # fmt: skip
    quaternions, ncc, not_indexed = found["quaternions"], found["ncc"], found["not_indexed"]
    flag, which, margin = found["flag"], found["phase"], found["phase_margin"]
    summary = not_indexed_summary(flag, min_ncc)
    if summary and not not_indexed.all():  # none indexed: the map says so in every point
        log.warning(summary)

    prop = {"ncc": ncc, "flag": flag}
    if len(masters) > 1:
        prop["phase_margin"] = margin
    if refine and refine_pc:
        prop.update({f"pc{axis}": pcs[:, i] for i, axis in enumerate("xyz")})
    rows, cols = nav_shape if len(nav_shape) == 2 else (1, n)
    scale = [ax.scale for ax in am.navigation_axes] or [1.0]
    dx = float(scale[0])
    dy = float(scale[1]) if len(scale) > 1 else dx
    yy, xx = np.mgrid[0:rows, 0:cols]
    phase_list = PhaseList([_map_phase(mp) for mp in masters])
    xmap = CrystalMap(
        rotations=Rotation(quaternions),
        phase_id=np.where(not_indexed, -1, which),
        x=(xx.ravel() * dx).astype(float),
        y=(yy.ravel() * dy).astype(float),
        phase_list=phase_list,
        prop=prop,
        scan_unit=str(am.navigation_axes[0].units) if am.navigation_axes else "px",
    )
    for i, phase_entry in phase_list:  # orix drops phases no point has: keep them for the files
        if i not in xmap.phases.ids:
            xmap.phases.add(phase_entry)
    xmap.phases.sort_by_id()
    return xmap


#: The per-point arrays of a map as :meth:`_BatchIndexer.batch` returns them, and their types.
_MAP_ARRAYS = {
    "quaternions": (np.float64, (4,)), "ncc": (np.float32, ()), "not_indexed": (bool, ()),
    "flag": (np.int8, ()), "phase": (np.int16, ()), "phase_margin": (np.float32, ()),
}  # fmt: skip


def _run_batches(indexer, n, batch_size, read, pcs, min_ncc, scheduler, store, bar) -> dict:
    """Every batch of the map through ``indexer`` (those ``store`` holds are taken from
    it; new ones saved to it): the map's per-point arrays (``_MAP_ARRAYS``)."""
    found = {k: np.zeros((n, *shape), dtype=t) for k, (t, shape) in _MAP_ARRAYS.items()}

    def keep(start: int, stop: int, done: dict) -> None:
        for key in found:
            found[key][start:stop] = done[key]
        bar.update(stop - start)

    todo = []
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        done = store.load(f"batch{start:012d}") if store else None
        if done is None:
            todo.append((start, stop))
        else:
            keep(start, stop, done)
    if scheduler is None:
        finished = (
            (start, stop, indexer.batch(read(slice(start, stop)), pcs[start:stop], min_ncc))
            for start, stop in todo
        )
    else:
        finished = _batches_on_cluster(scheduler, indexer, todo, read, pcs, min_ncc)
    for start, stop, done in finished:
        if store:
            store.save(f"batch{start:012d}", **done)
        keep(start, stop, done)
    bar.close()
    return found


def _adapted(
    found, indexer, model, minutes, save_to, read, pcs, n, batch_size, min_ncc, scheduler,
    show_progressbar: bool,
) -> dict:  # fmt: skip
    """:mod:`ebsdnet.adapt`: fine-tune the network on the confidently indexed points of
    ``found`` (the first pass), index again with it, keep each point's answer of higher
    NCC. Too few confident points: ``found`` as it is."""
    from tqdm.auto import tqdm

    from ebsdnet.adapt import MIN_LABELS, fine_tune, pseudo_labels
    from ebsdnet.cards import save_model

    labels = pseudo_labels(found["ncc"], found["flag"])
    if len(labels) < MIN_LABELS:
        log.warning(
            "not adapted: %d confidently indexed patterns, at least %d needed",
            len(labels), MIN_LABELS,
        )  # fmt: skip
        return found
    phase = indexer.phases[0]
    bg = None if indexer.background is None else torch.from_numpy(indexer.background)
    inputs = []
    for start in range(0, n, batch_size):  # read in the map's own batches: files read in order
        rows = labels[(labels >= start) & (labels < start + batch_size)]
        if len(rows):
            raw = as_tensor(read(slice(start, start + batch_size))[rows - start]).float()
            pc_rows = torch.from_numpy(pcs[rows]).float().to(torch.device(phase.device))
            inputs.append(phase.cnn_inputs(raw, bg, pc_rows).cpu())
    truth = torch.from_numpy(found["quaternions"][labels])
    with torch.enable_grad():
        tuned, summary = fine_tune(
            model, torch.cat(inputs), truth, phase.master_pattern, minutes, phase.device,
            show_progressbar=show_progressbar,
        )  # fmt: skip
    if save_to is not None:
        _, card = load_model(model)
        summary["from_weights_sha256"] = card["weights_sha256"]
        save_model(tuned, save_to, {**card, "name": Path(save_to).stem, "adapted": summary})
    adapted = replace(indexer, phases=[replace(phase, net=for_inference(tuned))])
    again = _run_batches(
        adapted, n, batch_size, read, pcs, min_ncc, scheduler, None,
        tqdm(total=n, unit="pattern", desc="index, adapted", disable=not show_progressbar),
    )  # fmt: skip
    # Only a clearly better match replaces the first answer: two refinements in one basin
    # end a little apart, and under a slightly wrong PC or a lens distortion the higher
    # NCC of the two is not the nearer orientation (measured on an 8×8 realistic-camera
    # map: taking every higher NCC, 0.286° → 0.307°).
    better = again["ncc"] > found["ncc"] + ADAPT_MIN_GAIN
    log.info(
        "adapted CNN: %d of %d points matched better (mean NCC %.4f → %.4f)",
        int(better.sum()), n, float(found["ncc"].mean()),
        float(np.where(better, again["ncc"], found["ncc"]).mean()),
    )  # fmt: skip
    return {key: np.where(_expand(better, found[key]), again[key], found[key]) for key in found}


def _expand(mask: np.ndarray, like: np.ndarray) -> np.ndarray:
    return mask.reshape(mask.shape + (1,) * (like.ndim - 1))


# Oxford's Laue-group numbers in .ctf phase lines (the inverse of orix's reader's table).
_CTF_LAUE_IDS = {
    "-1": 1,
    "2/m": 2,
    "mmm": 3,
    "4/m": 4,
    "4/mmm": 5,
    "-3": 6,
    "-3m": 7,
    "6/m": 8,
    "6/mmm": 9,
    "m-3": 10,
    "m-3m": 11,
}


def _grid(xmap) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Rows and columns of a map's grid, and every point's ``x`` and ``y``: orix keeps
    no coordinate along an axis of one point (a line scan, a single pattern)."""
    x = np.zeros(xmap.size) if xmap.x is None else np.asarray(xmap.x, dtype=float)
    y = np.zeros(xmap.size) if xmap.y is None else np.asarray(xmap.y, dtype=float)
    return len(np.unique(y)), len(np.unique(x)), x, y


def _write_ctf(xmap, path: Path) -> None:
    """Oxford Channel Text File, as orix's CTF reader expects it.

    Euler angles (degrees) are written in orix's sample frame, unchanged, as
    orix reads them back; the NCC goes in the BC column (×255, 0..255) and
    not-indexed points get phase 0.
    """
    rows, cols, x, y = _grid(xmap)
    euler = np.rad2deg(xmap.rotations.to_euler())
    phases = [(i, phase) for i, phase in xmap.phases if i >= 0]
    ncc = xmap.prop.get("ncc", np.zeros(xmap.size))
    header = [
        "Channel Text File",
        "Prj\tebsdnet",
        "Author\tebsdnet",
        "JobMode\tGrid",
        f"XCells\t{cols}",
        f"YCells\t{rows}",
        f"XStep\t{xmap.dx or xmap.dy:.4f}",
        f"YStep\t{xmap.dy or xmap.dx:.4f}",
        "AcqE1\t0",
        "AcqE2\t0",
        "AcqE3\t0",
        "Euler angles refer to Sample Coordinate system (CS0)!",
        f"Phases\t{len(phases)}",
    ]
    for _, phase in phases:
        abc = phase.structure.lattice.abcABG()
        laue = phase.point_group.laue.name
        header.append(
            f"{abc[0] * 10:.4f};{abc[1] * 10:.4f};{abc[2] * 10:.4f}\t"
            f"{abc[3]:.3f};{abc[4]:.3f};{abc[5]:.3f}\t{phase.name}\t"
            f"{_CTF_LAUE_IDS.get(laue, 1)}\t"
            f"{phase.space_group.number if phase.space_group is not None else 0}"
        )
    header.append("Phase\tX\tY\tBands\tError\tEuler1\tEuler2\tEuler3\tMAD\tBC\tBS")
    # Phase column: the phase's line (1, 2, ...) in the header; 0 not indexed.
    line = {i: k + 1 for k, (i, _) in enumerate(phases)}
    column = np.array([line.get(int(i), 0) for i in xmap.phase_id])
    with open(path, "w") as f:
        f.write("\n".join(header) + "\n")
        for i in range(xmap.size):
            bc = round(255 * max(0.0, float(ncc[i])))
            f.write(
                f"{column[i]}\t{x[i]:.4f}\t{y[i]:.4f}\t0\t0\t"
                f"{euler[i, 0]:.5f}\t{euler[i, 1]:.5f}\t{euler[i, 2]:.5f}\t0\t{bc}\t0\n"
            )


#: orix (0.15) writes no ``.ang`` map of fewer points: it takes their three or fewer
#: values for one colour.
ANG_MIN_POINTS = 4


def check_map_path(path: str | Path, n_points: int) -> None:
    """Raise :class:`IndexingError` unless :func:`save_map` can write ``n_points`` there."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".ang", ".ctf", ".h5", ".hdf5"):
        raise IndexingError(f"cannot write {path.name}: the output must end in .ang, .ctf or .h5")
    if suffix == ".ang" and n_points < ANG_MIN_POINTS:
        raise IndexingError(
            f"orix writes no .ang map of fewer than {ANG_MIN_POINTS} points "
            f"(this one has {n_points}): write .ctf or .h5"
        )


def save_map(xmap, path: str | Path) -> Path:
    """Write ``.ang`` (EDAX TSL), ``.ctf`` (Oxford) or ``.h5`` (orix HDF5) atomically.

    The file is written under a temporary name and renamed when complete, so
    an interrupted run never leaves a partial map under the final name.
    """
    from orix import io

    path = Path(path)
    suffix = path.suffix.lower()
    check_map_path(path, xmap.size)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        if suffix == ".ctf":
            _write_ctf(xmap, tmp)
        else:
            kwargs = {"confidence_index_prop": "ncc"} if suffix == ".ang" else {}
            io.save(str(tmp), xmap, overwrite=True, **kwargs)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def ipf_image(xmap, direction: str = "z") -> np.ndarray:
    """IPF colours of a map from :func:`index`, ``(rows, cols, 3)``, each point in its
    phase's colour key; not indexed: black."""
    from ebsdnet.plots import ipf_rgb

    rows, cols, _, _ = _grid(xmap)
    rgb = np.zeros((xmap.size, 3))
    for i, phase in xmap.phases:
        points = xmap.phase_id == i
        if i < 0 or not points.any():
            continue
        q = torch.from_numpy(xmap.rotations.data[points])
        rgb[points] = ipf_rgb(q, phase.point_group.name, (int(points.sum()),), direction)
    return rgb.reshape(rows, cols, 3)


def write_ipf_map(xmap, path: str | Path, direction: str = "z") -> Path:
    """Save an inverse-pole-figure colour map (sample ``direction``) as PNG; points not
    indexed are black."""
    from ebsdnet.plots import pyplot

    plt = pyplot()
    names = ", ".join(phase.name for i, phase in xmap.phases if i >= 0)
    rgb = ipf_image(xmap, direction)
    rows, cols = rgb.shape[:2]
    fig, ax = plt.subplots(figsize=(5, 5 * rows / cols + 0.5))
    ax.imshow(rgb, interpolation="nearest")
    ax.set_title(f"IPF-{direction.upper()} ({names})", fontsize=10)
    ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
