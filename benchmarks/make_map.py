"""Write a simulated Ni polycrystal map as a kikuchipy h5ebsd file, truth inside.

    python benchmarks/make_map.py sim_map.h5 [--size 60] [--dose 100]

The file's ``xmap`` holds the true orientations; index it with
``ebsdnet index sim_map.h5 -o sim_map.ang --plots maps`` (docs/figures/index_ipf.png is
``maps/ipf_z_ni.png`` of ``--size 60 --dose 100``).
"""

import argparse

from ebsdnet.synthetic import simulate_map

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("output")
parser.add_argument("--size", type=int, default=60)
parser.add_argument("--dose", type=float, default=None, help="counts/pixel (default noise-free)")
parser.add_argument("--seed", type=int, default=4)
args = parser.parse_args()
signal = simulate_map((args.size, args.size), n_grains=20, dose=args.dose, seed=args.seed)
signal.save(args.output, overwrite=True)
print(f"wrote {args.output}: {args.size}×{args.size} patterns of 60×60")
