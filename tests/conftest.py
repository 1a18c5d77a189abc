"""Shared fixtures: kikuchipy's shipped Ni master pattern, loaded once."""

import pytest


@pytest.fixture(scope="session")
def kp_master_pattern():
    import kikuchipy as kp

    return kp.data.nickel_ebsd_master_pattern_small(projection="lambert", hemisphere="both")


@pytest.fixture(scope="session")
def master_pattern(kp_master_pattern):
    from ebsdnet.projector import MasterPattern

    return MasterPattern.from_kikuchipy(kp_master_pattern)
