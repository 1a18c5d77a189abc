"""The cubic family: structures a family model trains on, and cubic phases it never saw.

    python benchmarks/family.py --write-cifs     # (re)write benchmarks/cifs/cubic/*.cif
    python benchmarks/family.py --train runs/cubic-60 [--init-from M] [--steps N] [--minutes T]
    python benchmarks/family.py --evaluate MODEL [--size 10]   # CNN alone on HELD_OUT

Every cubic crystal has the same plane normals, so the same band *directions*;
what differs is which bands show (the structure factor: fcc, bcc, diamond,
rocksalt, B2, L1₂, fluorite…) and how wide they are (the Bragg angle, from the
lattice parameter and the beam energy). A model trained across many of them
learns cubic band geometry, not one material's band profile. ``TRAIN`` is what
the family model sees (kinematical master patterns, beside kikuchipy's
dynamical Ni); ``HELD_OUT`` (Cu, Cr, Si, CsCl) is never shown to it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from phases import cif_text

CUBIC = Path(__file__).resolve().parent / "cifs" / "cubic"

# name: (space group, a in Å, asymmetric unit as (label, element, (x, y, z), U_iso),
#        atoms in the conventional cell, beam energy kV). Fd-3m in diffpy's origin
#        choice 1: the diamond atom at 0, 0, 0.
TRAIN = {
    "al": (225, 4.0495, [("Al1", "Al", ("0", "0", "0"), 0.008)], 4, 20.0),
    "al_15kv": (225, 4.0495, [("Al1", "Al", ("0", "0", "0"), 0.008)], 4, 15.0),
    "au": (225, 4.0782, [("Au1", "Au", ("0", "0", "0"), 0.006)], 4, 20.0),
    "austenite": (225, 3.595, [("Fe1", "Fe", ("0", "0", "0"), 0.005)], 4, 20.0),
    "ferrite": (229, 2.8665, [("Fe1", "Fe", ("0", "0", "0"), 0.005)], 2, 20.0),
    "ferrite_30kv": (229, 2.8665, [("Fe1", "Fe", ("0", "0", "0"), 0.005)], 2, 30.0),
    "w": (229, 3.1652, [("W1", "W", ("0", "0", "0"), 0.003)], 2, 20.0),
    "nb": (229, 3.3004, [("Nb1", "Nb", ("0", "0", "0"), 0.005)], 2, 20.0),
    "ge": (227, 5.6575, [("Ge1", "Ge", ("0", "0", "0"), 0.006)], 8, 20.0),
    "gaas": (216, 5.6533, [("Ga1", "Ga", ("0", "0", "0"), 0.007),
                           ("As1", "As", ("0.25", "0.25", "0.25"), 0.006)], 8, 20.0),
    "nacl": (225, 5.640, [("Na1", "Na", ("0", "0", "0"), 0.015),
                          ("Cl1", "Cl", ("0.5", "0.5", "0.5"), 0.012)], 8, 20.0),
    "mgo": (225, 4.212, [("Mg1", "Mg", ("0", "0", "0"), 0.004),
                         ("O1", "O", ("0.5", "0.5", "0.5"), 0.005)], 8, 20.0),
    "nial": (221, 2.887, [("Ni1", "Ni", ("0", "0", "0"), 0.006),
                          ("Al1", "Al", ("0.5", "0.5", "0.5"), 0.008)], 2, 20.0),
    "cu3au": (221, 3.749, [("Au1", "Au", ("0", "0", "0"), 0.006),
                           ("Cu1", "Cu", ("0", "0.5", "0.5"), 0.007)], 4, 20.0),
    "caf2": (225, 5.4626, [("Ca1", "Ca", ("0", "0", "0"), 0.006),
                           ("F1", "F", ("0.25", "0.25", "0.25"), 0.009)], 12, 20.0),
}  # fmt: skip

HELD_OUT = {
    "cu": (225, 3.615, [("Cu1", "Cu", ("0", "0", "0"), 0.007)], 4, 20.0),
    "cr": (229, 2.884, [("Cr1", "Cr", ("0", "0", "0"), 0.004)], 2, 20.0),
    "si": (227, 5.431, [("Si1", "Si", ("0", "0", "0"), 0.005)], 8, 20.0),
    "cscl": (221, 4.123, [("Cs1", "Cs", ("0", "0", "0"), 0.02),
                          ("Cl1", "Cl", ("0.5", "0.5", "0.5"), 0.02)], 2, 20.0),
}  # fmt: skip


def cif_path(name: str) -> Path:
    return CUBIC / f"{name.removesuffix('_15kv').removesuffix('_30kv')}.cif"


def energy(name: str) -> float:
    return {**TRAIN, **HELD_OUT}[name][4]


def write_cifs() -> None:
    """Write every structure's CIF and check that orix fills its cell as stated."""
    from ebsdnet.phases import read_cif

    CUBIC.mkdir(parents=True, exist_ok=True)
    for name, (group, a, atoms, n_atoms, _) in {**TRAIN, **HELD_OUT}.items():
        path = cif_path(name)
        path.write_text(cif_text(path.stem, group, (a, a, a, 90, 90, 90), atoms))
        found = len(read_cif(path).structure)
        if found != n_atoms:
            raise SystemExit(f"{path.name}: orix fills {found} atoms in the cell, not {n_atoms}")
    print(f"wrote {len({cif_path(n) for n in {**TRAIN, **HELD_OUT}})} CIFs to {CUBIC}")


def train_command(out: str, init_from: str, steps: int, minutes: float) -> list[str]:
    """``ebsdnet train`` for the cubic family: kikuchipy's dynamical Ni as the run's
    master pattern, every ``TRAIN`` structure's kinematical one (simulated at its beam
    energy, or taken from the cache) mixed in at 85%."""
    from ebsdnet.phases import master_pattern_from_cif

    also = [str(master_pattern_from_cif(cif_path(n), energy(n))) for n in TRAIN]
    return [
        sys.executable, "-m", "ebsdnet.cli", "train", "-o", out, "--init-from", init_from,
        "--camera", "realistic", *(x for path in also for x in ("--also", path)),
        "--also-fraction", "0.85", "--lr", "4e-4", "--batch-size", "128",
        "--steps", str(steps), "--val-every", str(max(1, steps // 4)), "--val-size", "500",
        "--checkpoint-minutes", "5", "--time-limit-minutes", f"{minutes:g}", "--seed", "51",
    ]  # fmt: skip


def evaluate(model: str, size: int) -> dict:
    """The CNN alone (``index(..., phase=CIF, refine=False)``) and the full ``index``
    with the fallback off, on a simulated map of each ``HELD_OUT`` phase (dose 200)."""
    import torch

    from ebsdnet.indexing import FALLBACK_NCC, index
    from ebsdnet.phases import master_pattern
    from ebsdnet.rotations import disorientation_deg
    from ebsdnet.synthetic import simulate_map

    out = {}
    for name in HELD_OUT:
        cif = str(cif_path(name))
        mp = master_pattern(cif, energy(name))
        grains = max(2, size * size // 12)
        signal = simulate_map((size, size), grains, dose=200.0, seed=61, master_pattern=mp)
        truth = torch.tensor(signal.xmap.rotations.data).float()
        row = {}
        for label, kwargs in (("cnn", {"refine": False}), ("full", {"fallback_ncc": None})):
            xmap = index(signal, model=model, phase=cif, show_progressbar=False, **kwargs)
            q = torch.tensor(xmap.rotations.data).reshape(xmap.size, -1, 4)[:, 0].float()
            e = disorientation_deg(q, truth, "m-3m").numpy()
            row[label] = float(e.mean())
            if label == "full":
                row["need_fallback"] = int((xmap.prop["ncc"] < FALLBACK_NCC).sum())
        out[name] = row
        print(name, {k: round(v, 3) for k, v in row.items()}, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-cifs", action="store_true")
    parser.add_argument("--train", metavar="OUT", help="train the family model into OUT")
    parser.add_argument("--init-from", default="ni-60")
    parser.add_argument("--steps", type=int, default=9000)
    parser.add_argument("--minutes", type=float, default=45.0)
    parser.add_argument("--evaluate", metavar="MODEL")
    parser.add_argument("--size", type=int, default=10)
    args = parser.parse_args()
    if args.write_cifs:
        write_cifs()
    if args.train:
        command = train_command(args.train, args.init_from, args.steps, args.minutes)
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True)
    if args.evaluate:
        evaluate(args.evaluate, args.size)


if __name__ == "__main__":
    main()
