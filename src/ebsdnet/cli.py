"""Command line: parses arguments and calls the library; nothing else.

Errors a user can cause end as one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

__all__ = ["main"]


class UserError(Exception):
    """A problem with the user's input: reported in one line, exit status 2."""


def _add_geometry(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pc",
        nargs=3,
        type=float,
        metavar=("X", "Y", "Z"),
        default=(0.425, 0.213, 0.501),
        help="pattern centre, Bruker convention (default: kikuchipy's Ni data)",
    )
    p.add_argument("--shape", nargs=2, type=int, metavar=("H", "W"), default=(60, 60))
    p.add_argument("--sample-tilt", type=float, default=70.0, help="degrees")
    p.add_argument("--camera-tilt", type=float, default=0.0, help="degrees")
    p.add_argument(
        "--master-pattern",
        metavar="FILE",
        help="EMsoft/kikuchipy master pattern (default: kikuchipy's shipped Ni)",
    )


def _check_pc(pc) -> None:
    from ebsdnet.projector import unphysical_pattern_centres

    if unphysical_pattern_centres(pc).any():
        raise UserError(f"pattern centre {tuple(pc)} is outside 0 ≤ x, y ≤ 1, z > 0")


def _geometry(args):
    from ebsdnet.projector import DetectorGeometry

    _check_pc(args.pc)
    if min(args.shape) < 2:
        raise UserError(f"pattern shape {tuple(args.shape)} is too small")
    return DetectorGeometry(
        shape=tuple(args.shape),
        pc=tuple(args.pc),
        sample_tilt=args.sample_tilt,
        tilt=args.camera_tilt,
    )


def _master_pattern(args):
    """The master pattern of ``--phase`` (a CIF or a master-pattern file) or
    ``--master-pattern``; kikuchipy's shipped Ni without either."""
    from ebsdnet.phases import PhaseError, master_pattern
    from ebsdnet.projector import MasterPattern

    phase = getattr(args, "phase", None)
    if phase is not None and args.master_pattern is not None:
        raise UserError("give --phase or --master-pattern, not both")
    source = phase or args.master_pattern
    if source is None:
        return MasterPattern.nickel()
    try:
        return master_pattern(source, getattr(args, "energy", None))
    except PhaseError as exc:
        raise UserError(str(exc)) from exc


def _master_pattern_file(source: str, energy: float | None) -> Path:
    """The master-pattern file of ``source``: itself, or a CIF's cached one."""
    from ebsdnet.phases import DEFAULT_ENERGY_KV, PhaseError, master_pattern_from_cif

    if Path(source).suffix.lower() != ".cif":
        return Path(source)
    try:
        return master_pattern_from_cif(source, DEFAULT_ENERGY_KV if energy is None else energy)
    except PhaseError as exc:
        raise UserError(str(exc)) from exc


def cmd_master_pattern(args) -> None:
    from ebsdnet.phases import (
        PhaseError,
        kinematical_master_pattern,
        read_cif,
        write_master_pattern,
    )

    src, out = Path(args.cif), Path(args.output)
    if src.suffix.lower() != ".cif":
        raise UserError(f"{src} is not a CIF (.cif)")
    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise UserError(f"cannot write {out.name}: the master pattern must end in .h5")
    _check_output(out, args.force)
    try:
        phase = read_cif(src)
        mp = kinematical_master_pattern(
            phase, args.energy, args.half_size, show_progressbar=not args.quiet
        )
    except PhaseError as exc:
        raise UserError(str(exc)) from exc
    write_master_pattern(out, mp, args.energy, src.read_text(errors="replace"))
    size = 2 * args.half_size + 1
    print(
        f"wrote {out}: kinematical master pattern of {phase.name} "
        f"({phase.space_group.short_name}, point group {phase.point_group.name}), "
        f"{args.energy:g} kV, {size}×{size} px per hemisphere"
    )


def _check_output(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise UserError(f"{path} exists; pass --force to overwrite")
    if not path.parent.exists():
        raise UserError(f"output folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"output folder {path.parent} is not writable")


def cmd_simulate(args) -> None:
    from ebsdnet.stream import sample_fundamental_zone, write_dictionary

    out = Path(args.output)
    _check_output(out, args.force)
    if not 0.2 <= args.resolution <= 20:
        raise UserError(f"--resolution {args.resolution}° is outside 0.2–20°")
    geometry = _geometry(args)
    mp = _master_pattern(args)
    logging.getLogger("ebsdnet").info("sampling the fundamental zone at %.2f°", args.resolution)
    q = sample_fundamental_zone(args.resolution, mp.point_group)
    write_dictionary(
        out,
        q,
        mp,
        geometry,
        dtype=args.dtype,
        show_progressbar=not args.quiet,
        attrs={"resolution_deg": args.resolution},
    )
    print(f"wrote {len(q):,} patterns of {geometry.shape[0]}×{geometry.shape[1]} to {out}")


def cmd_train(args) -> None:
    from dataclasses import fields

    from ebsdnet.cards import ModelFileError
    from ebsdnet.train import TrainConfig, TrainingDataError, dictionary_geometry, train

    out = Path(args.output)
    config_path = out / "config.json"
    if args.resume:
        if not config_path.is_file():
            raise UserError(f"nothing to resume: {config_path} does not exist")
        import json

        cfg = TrainConfig.from_dict(json.loads(config_path.read_text()))
    else:
        if (out / "checkpoint.pt").exists() and not args.force:
            raise UserError(f"{out} holds a run; pass --resume to continue or --force to restart")
        cfg = TrainConfig(out=str(out))
    # Flags given on the command line override the saved or default config.
    for f in fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None and f.name != "out":
            setattr(cfg, f.name, tuple(value) if isinstance(value, list) else value)
    if args.width is not None or args.hypotheses is not None:
        cfg.model_args = {
            **cfg.model_args,
            **{
                k: v
                for k, v in (("width", args.width), ("hypotheses", args.hypotheses))
                if v is not None
            },
        }
    if cfg.dictionary:
        if not Path(cfg.dictionary).is_file():
            raise UserError(f"dictionary file {cfg.dictionary} does not exist")
        # The 2016 setup: the dictionary's detector, one PC, unless the flags say otherwise.
        try:
            shape, pc = dictionary_geometry(cfg.dictionary)
        except TrainingDataError as exc:
            raise UserError(str(exc)) from exc
        cfg.shape = shape if args.shape is None else cfg.shape
        cfg.pc = pc if args.pc is None else cfg.pc
        cfg.pc_jitter = 0.0 if args.pc_jitter is None else cfg.pc_jitter
    try:
        cfg.check()
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if args.phase is not None:  # a CIF's master pattern is simulated (or taken from the cache)
        if args.master_pattern is not None:
            raise UserError("give --phase or --master-pattern, not both")
        cfg.master_pattern = str(_master_pattern_file(args.phase, args.energy))
    if args.also:
        cfg.also_master_patterns = tuple(
            str(_master_pattern_file(path, args.energy)) for path in args.also
        )
    for path in (cfg.master_pattern, *cfg.also_master_patterns):
        if path and not Path(path).is_file():
            raise UserError(f"master pattern file {path} does not exist")
    try:
        card = train(cfg, resume=args.resume, show_progressbar=not args.quiet)
    except (ModelFileError, TrainingDataError) as exc:  # --init-from, --dictionary
        raise UserError(str(exc)) from exc
    if card is not None:
        print(f"wrote {card} and {card.with_suffix('.safetensors')}")


def cmd_evaluate(args) -> None:
    import json

    from ebsdnet.cards import ModelFileError, load_model, pc_jitter
    from ebsdnet.projector import DetectorGeometry
    from ebsdnet.train import evaluate, held_out_conditions, held_out_sets, pick_device

    if args.n < 1:
        raise UserError(f"--n must be at least 1, not {args.n}")
    if args.seed < 1_000_000:  # training batches use the run's seed: below, they may meet
        raise UserError(
            f"--seed {args.seed} may be a training seed: held-out seeds are ≥ 1,000,000"
        )
    try:
        device = pick_device(args.device)
        model, card = load_model(args.model, device=device)
    except (ModelFileError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    mp = _master_pattern(args)
    if mp.sha256 != card["master_pattern_sha256"]:
        raise UserError("the master pattern differs from the one the model was trained on")
    geometry = DetectorGeometry(shape=tuple(card["shape"]), pc=tuple(card["pc_nominal"]))
    jitter = pc_jitter(card)
    sets = held_out_sets(mp, geometry, args.n, seed=args.seed, pc_jitter=jitter)
    figures = evaluate(model, sets, card["point_group"], device, tuple(card["pc_nominal"]))
    for name, f in figures.items():
        print(
            f"{name:>13}: mean {f['mean']:.3f}°, median {f['median']:.3f}°, p90 {f['p90']:.3f}°, "
            f">3° {100 * f['share_above_3']:.2f}%, >5° {100 * f['share_above_5']:.2f}%, "
            f">10° {100 * f['share_above_10']:.2f}% (n={f['n']})"
        )
    if args.update_card:
        from ebsdnet.cards import card_path

        path = card_path(args.model)
        card["held_out"] = {
            "command": f"ebsdnet evaluate {args.model} --n {args.n} --seed {args.seed}",
            "conditions": {
                "pattern_centre": "each pattern's PC is known: patterns are resampled from it "
                "to the nominal PC before the CNN, as ebsdnet index does",
                **{k: c.describe() for k, c in held_out_conditions(jitter).items()},
            },
            **figures,
        }
        path.write_text(json.dumps(card, indent=2) + "\n")
        print(f"wrote the figures into {path}")


def cmd_index(args) -> None:
    import numpy as np

    from ebsdnet.cards import ModelFileError
    from ebsdnet.indexing import (
        MIN_NCC,
        IndexingError,
        check_map_path,
        index,
        save_map,
        write_ipf_map,
    )
    from ebsdnet.pattern_flags import not_indexed_summary
    from ebsdnet.scan import ScanReadError, load_scan

    src = Path(args.patterns)
    out = Path(args.output)
    if not src.is_file():
        raise UserError(f"pattern file {src} does not exist")
    if out.resolve() == src.resolve():  # even with --force: the patterns would be lost
        raise UserError(f"the map would overwrite the pattern file {src}: choose another name")
    _check_output(out, args.force)
    if args.ipf:
        _check_output(Path(args.ipf), args.force)
    if args.no_refine and args.refine_pc:
        raise UserError("--refine-pc needs refinement: drop --no-refine")
    if args.save_model is not None:
        if not args.adapt:
            raise UserError("--save-model saves an adapted model: add --adapt")
        _check_output(Path(args.save_model).with_suffix(".json"), args.force)
    if args.pc is not None:
        _check_pc(args.pc)
    try:
        signal = load_scan(src, scan_size=args.scan_size)
    except ScanReadError as exc:
        raise UserError(f"cannot read patterns from {src}: {exc}") from exc
    try:  # before the indexing: a map that cannot be written fails at once
        check_map_path(out, int(np.prod(signal.axes_manager.navigation_shape)))
    except IndexingError as exc:
        raise UserError(str(exc)) from exc
    if args.phase is not None and args.master_pattern is not None:
        raise UserError("give --phase or --master-pattern, not both")
    if args.plots and Path(args.plots).exists() and not Path(args.plots).is_dir():
        raise UserError(f"--plots {args.plots} is not a folder")
    mp = _master_pattern(args) if args.master_pattern else None
    min_ncc = MIN_NCC if args.min_ncc is None else args.min_ncc
    # Finished batches are kept beside the output until the map is written.
    progress = out.with_name(f".{out.name}.batches")
    if progress.exists() and not args.resume:
        if not args.force:
            raise UserError(
                f"an interrupted run left {progress}; pass --resume to continue it "
                "or --force to start over"
            )
        shutil.rmtree(progress)
    try:
        xmap = index(
            signal, model=args.model, pc=None if args.pc is None else tuple(args.pc),
            master_pattern=mp, phases=args.phase, energy=args.energy,
            batch_size=args.batch_size, device=args.device,
            refine=not args.no_refine, refine_pc=args.refine_pc,
            min_ncc=min_ncc,
            progress_folder=progress, show_progressbar=not args.quiet,
            precision=args.precision, compiled={"on": True, "off": False}.get(args.compile),
            scheduler=args.scheduler, adapt=args.adapt, save_model=args.save_model,
        )  # fmt: skip
        if not (xmap.phase_id >= 0).any():  # a map of nothing is no result: exit 2, no file
            shutil.rmtree(progress, ignore_errors=True)
            raise UserError(f"no map written: {not_indexed_summary(xmap.prop['flag'], min_ncc)}")
        save_map(xmap, out)
        shutil.rmtree(progress, ignore_errors=True)
    except (IndexingError, ModelFileError) as exc:
        raise UserError(str(exc)) from exc
    except OSError as exc:  # disk full, permissions changed mid-run
        raise UserError(f"cannot write {out}: {exc}") from exc
    n_indexed = int((xmap.phase_id >= 0).sum())
    print(f"indexed {n_indexed:,} of {xmap.size:,} patterns: wrote {out}")
    if args.phase is not None and len(args.phase) > 1:
        fractions = ", ".join(
            f"{phase.name} {100 * np.mean(xmap.phase_id == i):.1f}%"
            for i, phase in xmap.phases
            if i >= 0
        )
        print(f"phase fractions: {fractions}, not indexed {100 * np.mean(xmap.phase_id < 0):.1f}%")
    if args.ipf:
        print(f"wrote {write_ipf_map(xmap, args.ipf)}")
    if args.plots:
        from ebsdnet.plots import write_map_plots

        written = write_map_plots(xmap, args.plots)
        print(f"wrote {len(written)} maps to {args.plots}: {', '.join(p.name for p in written)}")


def cmd_demo(args) -> None:
    from ebsdnet.cards import ModelFileError
    from ebsdnet.demo import run_demo

    try:
        run_demo(Path(args.out), quick=not args.full, model=args.model)
    except ModelFileError as exc:
        raise UserError(str(exc)) from exc


def cmd_bench(args) -> None:
    from ebsdnet.bench import run_bench
    from ebsdnet.cards import ModelFileError

    out = Path(args.out)
    if args.benchmarks and not Path(args.benchmarks).parent.is_dir():
        raise UserError(f"folder of {args.benchmarks} does not exist")
    if args.repeats is not None and args.repeats < 1:
        raise UserError("--repeats must be at least 1")
    try:
        run_bench(
            out,
            quick=args.quick,
            model=args.model,
            benchmarks_md=Path(args.benchmarks) if args.benchmarks else None,
            compiled=not args.no_compile,
            resolutions=tuple(args.resolutions) if args.resolutions else None,
            repeats=args.repeats,
        )
    except ModelFileError as exc:
        raise UserError(str(exc)) from exc
    print((out / "bench.md").read_text())
    print(f"wrote {out / 'bench.json'}, {out / 'bench.md'} and {out / 'error_vs_dose.png'}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ebsdnet", description="EBSD indexing with a CNN and pattern-matching refinement"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="write a pattern–orientation dictionary (HDF5)")
    p.add_argument("-o", "--output", required=True, help="output .h5 file")
    p.add_argument(
        "--resolution",
        type=float,
        default=1.4,
        help="orientation sampling of the fundamental zone, degrees (default 1.4)",
    )
    p.add_argument("--dtype", choices=("uint8", "float32"), default="uint8")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    _add_geometry(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("train", help="train a CNN on simulated patterns")
    p.add_argument("-o", "--output", required=True, help="run folder (checkpoints, model)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output")
    p.add_argument("--force", action="store_true", help="start over in a folder with a run")
    p.add_argument("--model", help="architecture: ebsdnet-s (default) or liu2016")
    p.add_argument("--width", type=int, help="ebsdnet-s: channels of the first stage")
    p.add_argument("--hypotheses", type=int, help="ebsdnet-s: rotation hypotheses K")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--val-size", type=int)
    p.add_argument("--val-every", type=int)
    p.add_argument("--checkpoint-minutes", type=float)
    p.add_argument("--time-limit-minutes", type=float, help="stop (resumably) after this")
    p.add_argument("--pc", nargs=3, type=float, metavar=("X", "Y", "Z"))
    p.add_argument("--pc-jitter", type=float, help="half-width of the PC range trained on")
    p.add_argument(
        "--pc-known",
        action=argparse.BooleanOptionalAction,
        help="train on patterns resampled to the nominal PC, as index shows them (default)",
    )
    p.add_argument("--shape", nargs=2, type=int, metavar=("H", "W"))
    p.add_argument("--dose", nargs=2, type=float, metavar=("MIN", "MAX"))
    p.add_argument("--blur", nargs=2, type=float, metavar=("MIN", "MAX"), help="PSF, pixels")
    p.add_argument(
        "--falloff",
        nargs=2,
        type=float,
        metavar=("MIN", "MAX"),
        help="width range of the band contrast's radial fall-off (fraction of half-width)",
    )
    p.add_argument(
        "--camera",
        choices=("simulated", "realistic"),
        help="degradations: simulated (default; --dose, --blur, --falloff) or realistic "
        "(also PSF to 2 px, gamma, lens distortion, background residual, PC error)",
    )
    p.add_argument("--master-pattern", metavar="FILE")
    p.add_argument(
        "--phase", metavar="CIF|H5", help="train for this phase (CIF or master-pattern file)"
    )
    p.add_argument(
        "--also",
        action="append",
        metavar="CIF|H5",
        help="another master pattern of the phase (e.g. a kinematical one beside a dynamical "
        "one) mixed into training; repeatable",
    )
    p.add_argument(
        "--also-fraction", type=float, help="share of patterns drawn from --also (default 0.5)"
    )
    p.add_argument("--energy", type=float, help="beam energy of --phase, kV (default 20)")
    p.add_argument("--dictionary", metavar="FILE", help="train from an `ebsdnet simulate` file")
    p.add_argument("--init-from", metavar="MODEL", help="start from a saved or shipped model")
    p.add_argument("--device", help="auto (default), cpu or cuda")
    p.add_argument(
        "--precision",
        # train.TRAINING_PRECISIONS, spelt out: importing train would load torch for --help
        choices=("auto", "bfloat16", "float32"),
        help="auto (default): bfloat16 autocast where the device computes it natively",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "master-pattern", help="a kinematical master pattern of a phase from its CIF"
    )
    p.add_argument("cif", help="crystal structure (.cif)")
    p.add_argument(
        "-o", "--output", required=True, help="master-pattern file (.h5, EMsoft layout)"
    )
    p.add_argument("--energy", type=float, default=20.0, help="beam energy, kV (default 20)")
    p.add_argument(
        "--half-size",
        type=int,
        default=400,
        help="half the side of each hemisphere, px (default 400: 801×801)",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=cmd_master_pattern)

    p = sub.add_parser("index", help="index a pattern file into an orientation map")
    p.add_argument(
        "patterns", help="any EBSD pattern file kikuchipy reads, or a stack HyperSpy reads"
    )
    p.add_argument("-o", "--output", required=True, help="orientation map: .ang, .ctf or .h5")
    p.add_argument(
        "--phase",
        metavar="CIF|H5",
        action="append",
        help="index for this phase: a CIF (kinematical master pattern, simulated once and "
        "cached) or a master-pattern file; without --model a coarse dictionary of the phase "
        "gives each pattern's start; repeat for a multi-phase map",
    )
    p.add_argument(
        "--energy", type=float, help="beam energy of --phase, kV (default 20 for a CIF)"
    )
    p.add_argument(
        "--model",
        help="shipped model name or saved model path (default: ni-60 without --phase; "
        "none with it)",
    )
    p.add_argument(
        "--pc",
        nargs=3,
        type=float,
        metavar=("X", "Y", "Z"),
        help="pattern centre (Bruker) overriding the file's",
    )
    p.add_argument(
        "--scan-size",
        nargs=2,
        type=int,
        metavar=("ROWS", "COLS"),
        help="map grid: for a NORDIF .dat without Setting.txt, or a flat stack of patterns",
    )
    p.add_argument("--ipf", metavar="PNG", help="also write an IPF-Z colour map")
    p.add_argument(
        "--plots",
        metavar="DIR",
        help="also write PNG maps here: IPF-Z per phase with its colour key, phase map, NCC map",
    )
    p.add_argument(
        "--no-refine", action="store_true", help="CNN only: skip pattern-matching refinement"
    )
    p.add_argument(
        "--refine-pc", action="store_true", help="also refine each pattern centre (rough PC)"
    )
    p.add_argument(
        "--min-ncc",
        type=float,
        help="final NCC below which a pattern is not indexed (default 0.1)",
    )
    p.add_argument("--batch-size", type=int, default=256, help="patterns per batch (256)")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument(
        "--precision",
        choices=("auto", "float32", "bfloat16", "int8"),
        default="auto",
        help="the CNN's arithmetic (auto: int8 when compiled on a CPU, else bfloat16 where "
        "the device has it natively; int8 needs --compile on)",
    )
    p.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="run the CNN and refinement through torch.compile (auto: maps of 50,000 "
        "patterns or more)",
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run the batches on this dask.distributed scheduler (tcp://host:8786)",
    )
    p.add_argument(
        "--adapt",
        nargs="?",
        type=float,
        const=3.0,  # adapt.ADAPT_MINUTES, spelt out: importing it would load torch for --help
        metavar="MINUTES",
        help="fine-tune the CNN on this scan's confidently indexed points for MINUTES "
        "(default 3), index again, keep each point's better match",
    )
    p.add_argument(
        "--save-model", metavar="PATH", help="with --adapt: write the adapted model (PATH.json)"
    )
    p.add_argument("--master-pattern", metavar="FILE")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted run into the same output"
    )
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("evaluate", help="a model's error on fresh held-out simulated patterns")
    p.add_argument("model", help="shipped model name (e.g. ni-60) or path to a saved model")
    p.add_argument("--n", type=int, default=2000, help="patterns per condition (default 2000)")
    p.add_argument("--seed", type=int, default=2_000_000, help="held-out seed (≥ 1,000,000)")
    p.add_argument("--device", default="auto")
    p.add_argument("--master-pattern", metavar="FILE")
    p.add_argument("--update-card", action="store_true", help="store the figures in the card")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="the 2016 study reproduced here: 1-NN vs CNN, figures")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--full", action="store_true", help="the 2016 sizes (333,227 / 30,000)")
    p.add_argument("--model", default="ni-60", help="CNN to compare (default: shipped ni-60)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "bench", help="accuracy and speed beside kikuchipy DI and PyEBSDIndex Hough"
    )
    p.add_argument("--quick", action="store_true", help="small maps, 2° dictionary only")
    p.add_argument("--out", default="out/bench", help="output folder (default out/bench)")
    p.add_argument("--model", default="ni-60", help="model to measure (default: shipped ni-60)")
    p.add_argument(
        "--benchmarks", metavar="MD", help="also write the tables into this BENCHMARKS.md"
    )
    p.add_argument(
        "--no-compile", action="store_true", help="skip the rows refined through torch.compile"
    )
    p.add_argument(
        "--resolutions",
        nargs="+",
        type=float,
        metavar="DEG",
        help="kikuchipy dictionary resolutions (default 2.0; adding 1.4 needs ~8 GB more memory)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        metavar="N",
        help="time ebsdnet and Hough N times, keep the fastest (default 3; 1 with --quick)",
    )
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s"
    )
    try:
        args.func(args)
    except UserError as exc:
        print(f"ebsdnet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ebsdnet: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
