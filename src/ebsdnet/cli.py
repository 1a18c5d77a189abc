"""Command line: parses arguments and calls the library; nothing else.

Errors a user can cause end as one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

__all__ = ["main"]


class UserError(Exception):
    """A problem with the user's input: reported in one line, exit status 2."""


def _add_geometry(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pc", nargs=3, type=float, metavar=("X", "Y", "Z"), default=(0.425, 0.213, 0.501),
        help="pattern centre, Bruker convention (default: kikuchipy's Ni data)",
    )  # fmt: skip
    p.add_argument("--shape", nargs=2, type=int, metavar=("H", "W"), default=(60, 60))
    p.add_argument("--sample-tilt", type=float, default=70.0, help="degrees")
    p.add_argument("--camera-tilt", type=float, default=0.0, help="degrees")
    p.add_argument(
        "--master-pattern", metavar="FILE",
        help="EMsoft/kikuchipy master pattern (default: kikuchipy's shipped Ni)",
    )  # fmt: skip


def _geometry(args):
    from ebsdnet.projector import DetectorGeometry

    pcx, pcy, pcz = args.pc
    if not (0 <= pcx <= 1 and 0 <= pcy <= 1 and pcz > 0):
        raise UserError(f"pattern centre {tuple(args.pc)} is outside 0 ≤ x, y ≤ 1, z > 0")
    if min(args.shape) < 2:
        raise UserError(f"pattern shape {tuple(args.shape)} is too small")
    return DetectorGeometry(
        shape=tuple(args.shape), pc=tuple(args.pc),
        sample_tilt=args.sample_tilt, tilt=args.camera_tilt,
    )  # fmt: skip


def _master_pattern(args):
    from ebsdnet.projector import MasterPattern

    if args.master_pattern is None:
        return MasterPattern.nickel()
    path = Path(args.master_pattern)
    if not path.is_file():
        raise UserError(f"master pattern file {path} does not exist")
    try:
        return MasterPattern.from_file(str(path))
    except Exception as exc:  # kikuchipy raises many types for unreadable files
        raise UserError(f"cannot read master pattern {path}: {exc}") from exc


def _check_output(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise UserError(f"{path} exists; pass --force to overwrite")
    if not path.parent.exists():
        raise UserError(f"output folder {path.parent} does not exist")


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
        out, q, mp, geometry, dtype=args.dtype, show_progressbar=not args.quiet,
        attrs={"resolution_deg": args.resolution},
    )  # fmt: skip
    print(f"wrote {len(q):,} patterns of {geometry.shape[0]}×{geometry.shape[1]} to {out}")


def cmd_demo(args) -> None:
    from ebsdnet.demo import run_demo

    run_demo(Path(args.out), quick=not args.full)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ebsdnet", description="EBSD indexing with a CNN and pattern-matching refinement"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="write a pattern–orientation dictionary (HDF5)")
    p.add_argument("-o", "--output", required=True, help="output .h5 file")
    p.add_argument(
        "--resolution", type=float, default=1.4,
        help="orientation sampling of the fundamental zone, degrees (default 1.4)",
    )  # fmt: skip
    p.add_argument("--dtype", choices=("uint8", "float32"), default="uint8")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    _add_geometry(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("demo", help="the projector and the simulated stream, as PNG figures")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--full", action="store_true", help="the full-size run")
    p.set_defaults(func=cmd_demo)
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
