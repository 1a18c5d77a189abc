"""Shared fixtures: kikuchipy's shipped Ni master pattern, loaded once (raw and symmetrised),
a small `ebsdnet simulate` dictionary, and a private master-pattern cache."""

import os
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
#: Master patterns of the test CIFs: 201-px hemispheres, quick to simulate, fine for
#: 40×40 patterns.
HALF_SIZE = 100


@pytest.fixture(scope="session")
def kp_master_pattern():
    import kikuchipy as kp

    return kp.data.nickel_ebsd_master_pattern_small(projection="lambert", hemisphere="both")


@pytest.fixture(scope="session")
def master_pattern(kp_master_pattern):
    """What ebsdnet simulates and refines with: symmetrised, twice as fine."""
    from ebsdnet.projector import MasterPattern

    return MasterPattern.from_kikuchipy(kp_master_pattern)


@pytest.fixture(scope="session")
def raw_master_pattern(kp_master_pattern):
    """The file's texture as it is: what kikuchipy's ``get_patterns`` reads."""
    from ebsdnet.projector import MasterPattern

    return MasterPattern.from_kikuchipy(kp_master_pattern, symmetrise=False)


@pytest.fixture(scope="session")
def small_dictionary(tmp_path_factory):
    """A 12° Ni dictionary written by ``ebsdnet simulate`` (some 500 patterns)."""
    from ebsdnet.cli import main

    path = tmp_path_factory.mktemp("dictionary") / "ni.h5"
    assert main(["-q", "simulate", "-o", str(path), "--resolution", "12"]) == 0
    return path


@pytest.fixture(scope="session")
def private_cache(tmp_path_factory):
    """Master patterns made from CIFs go to a cache of the test session's own
    (``EBSDNET_CACHE``), not the user's."""
    old = os.environ.get("EBSDNET_CACHE")
    os.environ["EBSDNET_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("EBSDNET_CACHE", None)
    else:
        os.environ["EBSDNET_CACHE"] = old


@pytest.fixture(scope="session")
def phase_files(private_cache):
    """Each test CIF's master-pattern file (tests/data), simulated once, small."""
    from ebsdnet.phases import master_pattern_from_cif

    return {
        name: master_pattern_from_cif(DATA / f"{name}.cif", half_size=HALF_SIZE)
        for name in ("ferrite", "austenite", "ti_alpha", "ni")
    }
