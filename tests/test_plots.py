import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from orix.crystal_map import CrystalMap, Phase, PhaseList
from orix.plot import IPFColorKeyTSL
from orix.quaternion import Orientation, Rotation
from orix.vector import Vector3d

from ebsdnet.plots import (
    NOT_INDEXED_RGB,
    OTHER_PHASE_RGB,
    _ipf_figure,
    _ipf_map_rgb,
    _phase_figure,
    _property_figure,
    ipf_rgb,
    pyplot,
    write_map_plots,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_ipf_colours_of_the_cube_axes():
    # Identity: sample z is crystal [001], red in the IPF-Z key; a 90° turn about x
    # keeps a <100> along z, so it is red too.
    q = torch.tensor([[1.0, 0, 0, 0], [np.cos(np.pi / 4), np.sin(np.pi / 4), 0, 0]])
    rgb = ipf_rgb(q, "m-3m", (1, 2))
    assert rgb.shape == (1, 2, 3)
    assert np.allclose(rgb[0, :, 0], 1.0) and np.allclose(rgb[0, :, 1:], 0.0, atol=1e-6)


def _map(phases, phase_id, rows, cols, step=1.5, seed=0, **prop):
    """A ``rows × cols`` map, row by row, of random rotations; ``x``/``y`` left out
    along an axis of one point, as orix does."""
    np.random.seed(seed)
    yy, xx = np.mgrid[0:rows, 0:cols]
    rng = np.random.default_rng(seed)
    prop = {"ncc": rng.uniform(0.05, 0.6, rows * cols), **prop}
    return CrystalMap(
        Rotation.random(rows * cols),
        phase_id=np.asarray(phase_id),
        x=xx.ravel() * step if cols > 1 else None,
        y=yy.ravel() * step if rows > 1 else None,
        phase_list=PhaseList(phases),
        prop=prop,
        scan_unit="um",
    )


@pytest.fixture
def two_phases():
    """4×5 map: ferrite (m-3m) and titanium (6/mmm), three points not indexed."""
    phase_id = np.array([0, 1, 0, 1, -1, 1, 0, 0, 1, 1, 0, -1, 1, 0, 0, 1, 0, -1, 1, 0])
    phases = [Phase(name="ferrite", space_group=229), Phase(name="ti", space_group=194)]
    margin = np.linspace(0.0, 0.1, 20)
    return _map(phases, phase_id, 4, 5, phase_margin=margin)


def _rendered(fig) -> np.ndarray:
    """The figure's pixels ``(H, W, 3)`` in 0..1, as saved."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3] / 255.0


def _pixel(image, ax, x, y) -> np.ndarray:
    """Colour drawn at scan coordinates ``(x, y)`` of the map in ``ax``."""
    px, py = ax.transData.transform((x, y))
    return image[int(image.shape[0] - py), int(px)]


def _centres(xmap):
    x = np.zeros(xmap.size) if xmap.x is None else xmap.x
    y = np.zeros(xmap.size) if xmap.y is None else xmap.y
    return list(zip(x, y, strict=True))


def _key_colours(xmap, phase_id, direction="z"):
    """orix's own IPF colours of the points of one phase."""
    pg = xmap.phases[phase_id].point_group
    q = xmap.rotations.data[xmap.phase_id == phase_id]
    vector = {"y": Vector3d.yvector(), "z": Vector3d.zvector()}[direction]
    return IPFColorKeyTSL(pg, direction=vector).orientation2color(Orientation(q, pg))


def _close(fig):
    pyplot().close(fig)


def test_writes_the_documented_files_as_pngs(two_phases, tmp_path):
    paths = write_map_plots(two_phases, tmp_path / "plots")
    names = ["ipf_z_ferrite.png", "ipf_z_ti.png", "phase_map.png", "ncc_map.png"]
    assert [p.name for p in paths] == [*names, "phase_margin.png"]
    for path in paths:
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        height, width, _ = mpimg.imread(path).shape
        assert 250 < height < 1500 and 350 < width < 2000, (path.name, height, width)


def test_no_margin_map_without_the_property(two_phases, tmp_path):
    del two_phases.prop["phase_margin"]
    names = [p.name for p in write_map_plots(two_phases, tmp_path, direction="x")]
    assert names == ["ipf_x_ferrite.png", "ipf_x_ti.png", "phase_map.png", "ncc_map.png"]


def test_ipf_map_is_orixs_key_colour_of_each_point(two_phases):
    ids = two_phases.phase_id.reshape(4, 5)
    for phase_id in (0, 1):
        rgb = _ipf_map_rgb(two_phases, phase_id)
        assert rgb.shape == (4, 5, 3)
        assert np.allclose(rgb[ids == phase_id], _key_colours(two_phases, phase_id))
        assert np.all(rgb[ids == -1] == NOT_INDEXED_RGB)
        assert np.all(rgb[ids == 1 - phase_id] == OTHER_PHASE_RGB)


def test_rendered_ipf_map_shows_the_key_colours(two_phases):
    fig, ax = _ipf_figure(two_phases, 1)
    image = _rendered(fig)
    expected = iter(_key_colours(two_phases, 1))
    for (x, y), phase_id in zip(_centres(two_phases), two_phases.phase_id, strict=True):
        want = {1: None, 0: OTHER_PHASE_RGB, -1: NOT_INDEXED_RGB}[phase_id]
        want = next(expected) if want is None else want
        assert np.allclose(_pixel(image, ax, x, y), want, atol=2 / 255)
    # orix's key is drawn beside the map, on its own inverse-pole-figure axes.
    (key_ax,) = [a for a in fig.axes if a.name == "ipf"]
    assert key_ax.get_position().x0 > ax.get_position().x1
    _close(fig)


@pytest.mark.parametrize("space_group", [139, 62, 166, 176, 2, 205])  # 4/mmm mmm -3m 6/m -1 m-3
def test_ipf_map_for_other_point_groups(space_group):
    xmap = _map([Phase(name="p", space_group=space_group)], np.zeros(6, int), 2, 3)
    fig, ax = _ipf_figure(xmap, 0, "y")
    image = _rendered(fig)
    colours = _key_colours(xmap, 0, "y")
    for (x, y), want in zip(_centres(xmap), colours, strict=True):
        assert np.allclose(_pixel(image, ax, x, y), want, atol=2 / 255)
    _close(fig)


def test_phase_map_colours_and_legend(two_phases):
    fig, ax = _phase_figure(two_phases)
    image = _rendered(fig)
    drawn = {-1: set(), 0: set(), 1: set()}
    for (x, y), phase_id in zip(_centres(two_phases), two_phases.phase_id, strict=True):
        drawn[phase_id].add(tuple(np.round(_pixel(image, ax, x, y), 2)))
    assert all(len(colours) == 1 for colours in drawn.values())  # one colour a phase
    assert len(drawn[0] | drawn[1] | drawn[-1]) == 3
    assert drawn[-1] == {(0.0, 0.0, 0.0)}
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["ferrite (45.0 %)", "ti (40.0 %)", "not indexed (15.0 %)"]
    _close(fig)


def test_ncc_map_is_grey_levels_with_a_colour_bar(two_phases):
    fig, ax = _property_figure(two_phases, "ncc")
    image = _rendered(fig)
    ncc = two_phases.prop["ncc"]
    centres = _centres(two_phases)
    lo, hi = (_pixel(image, ax, *centres[i]) for i in (np.argmin(ncc), np.argmax(ncc)))
    assert np.allclose(lo, 0.0, atol=0.02) and np.allclose(hi, 1.0, atol=0.02)
    colour_bar = [a for a in fig.axes if a is not ax]
    assert len(colour_bar) == 1 and colour_bar[0].get_ylabel() == "NCC"
    _close(fig)


def test_single_phase_map(tmp_path):
    phase_id = np.zeros(12, int)
    phase_id[[3, 7]] = -1
    xmap = _map([Phase(name="Ni", space_group=225)], phase_id, 3, 4)
    paths = write_map_plots(xmap, tmp_path)
    assert [p.name for p in paths] == ["ipf_z_Ni.png", "phase_map.png", "ncc_map.png"]
    rgb = _ipf_map_rgb(xmap, 0)
    assert np.all(rgb.reshape(-1, 3)[[3, 7]] == 0.0)


def test_line_scan(tmp_path):
    phase_id = np.r_[np.zeros(9, int), -1]
    xmap = _map([Phase(name="Al2O3", space_group=167)], phase_id, 1, 10)
    assert xmap.y is None
    paths = write_map_plots(xmap, tmp_path)
    assert len(paths) == 3
    for path in paths:
        height, width, _ = mpimg.imread(path).shape
        assert height > 150 and width > 400
    fig, ax = _ipf_figure(xmap, 0)
    image = _rendered(fig)
    assert ax.get_window_extent().height > 40  # stretched across, not a hairline
    colours = iter(_key_colours(xmap, 0))
    for (x, y), phase_id in zip(_centres(xmap), xmap.phase_id, strict=True):
        want = NOT_INDEXED_RGB if phase_id < 0 else next(colours)
        assert np.allclose(_pixel(image, ax, x, y), want, atol=2 / 255)
    _close(fig)


def test_single_point(tmp_path):
    xmap = _map([Phase(name="olivine", space_group=62)], [0], 1, 1)
    assert len(write_map_plots(xmap, tmp_path)) == 3


def test_phase_names_made_file_safe_and_unique(tmp_path):
    phases = [
        Phase(name="Sn beta (I4_1/amd)", space_group=141),
        Phase(name="a b", space_group=225),
        Phase(name="a/b", space_group=229),
        Phase(name="", space_group=194),
    ]
    xmap = _map(phases, [0, 1, 2, 3], 2, 2)
    names = [p.name for p in write_map_plots(xmap, tmp_path)][:4]
    assert names == [
        "ipf_z_Sn_beta_I4_1_amd.png",
        "ipf_z_a_b_1.png",
        "ipf_z_a_b_2.png",
        "ipf_z_phase3.png",
    ]


def test_bad_inputs_are_refused(two_phases, tmp_path):
    with pytest.raises(ValueError, match="sample direction"):
        write_map_plots(two_phases, tmp_path, direction="w")
    with pytest.raises(TypeError, match="CrystalMap"):
        write_map_plots(two_phases.rotations, tmp_path)
    no_symmetry = _map([Phase(name="unknown")], [0, 0], 1, 2)
    with pytest.raises(ValueError, match="no point group"):
        write_map_plots(no_symmetry, tmp_path)
    assert not list(tmp_path.iterdir())
