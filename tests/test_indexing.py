import numpy as np
import pytest
import torch

from ebsdnet.cli import main
from ebsdnet.indexing import index
from ebsdnet.rotations import disorientation_deg
from ebsdnet.synthetic import simulate_map

MODEL = "ni-60"


@pytest.fixture(scope="module")
def sim_map():
    return simulate_map((5, 6), n_grains=4, dose=300.0, seed=3)


@pytest.fixture(scope="module")
def written(sim_map, tmp_path_factory):
    folder = tmp_path_factory.mktemp("maps")
    sim_map.save(folder / "map.h5")
    sim_map.save(folder / "map.dat")  # NORDIF binary
    return folder


def test_cli_round_trip_to_ang_that_orix_reads(sim_map, written, tmp_path):
    from orix import io

    out = tmp_path / "map.ang"
    png = tmp_path / "ipf.png"
    code = main(
        [
            "-q",
            "index",
            str(written / "map.h5"),
            "-o",
            str(out),
            "--ipf",
            str(png),
            "--model",
            MODEL,
        ]
    )
    assert code == 0 and png.stat().st_size > 1000
    xmap = io.load(out)
    assert xmap.shape == (5, 6)
    assert xmap.phases_in_data.point_groups[0].laue.name == "m-3m"
    direct = index(sim_map, model=MODEL, show_progressbar=False)
    ours = torch.tensor(xmap.rotations.data)
    # .ang stores Euler angles with 5 decimals (radians): ~0.001°.
    diff = disorientation_deg(ours, torch.tensor(direct.rotations.data))
    assert diff.max() < 0.01
    assert np.allclose(xmap.prop["ci"], direct.prop["ncc"], atol=1e-3)
    assert not list(tmp_path.glob(".*partial*"))


def test_two_formats_give_the_same_map(sim_map, written):
    import kikuchipy as kp

    h5 = kp.load(written / "map.h5", lazy=True)
    nordif = kp.load(written / "map.dat", scan_size=(6, 5), pattern_size=(60, 60))
    nordif.detector = h5.detector.deepcopy()
    nordif.static_background = h5.static_background
    a = index(h5, model=MODEL, show_progressbar=False)
    b = index(nordif, model=MODEL, show_progressbar=False)
    assert np.array_equal(a.rotations.data, b.rotations.data)
    assert np.array_equal(a.prop["ncc"], b.prop["ncc"])


def test_wrong_pattern_shape_is_refused(tmp_path):
    import kikuchipy as kp

    data = simulate_map((2, 2), n_grains=1).data[..., :50, :50]
    kp.signals.EBSD(data, detector=kp.detectors.EBSDDetector(shape=(50, 50))).save(
        tmp_path / "small.h5"
    )
    code = main(
        [
            "-q",
            "index",
            str(tmp_path / "small.h5"),
            "-o",
            str(tmp_path / "x.ang"),
            "--model",
            MODEL,
        ]
    )
    assert code == 2 and not (tmp_path / "x.ang").exists()


@pytest.mark.parametrize("suffix", [".ctf", ".h5"])
def test_other_outputs_round_trip_through_orix(sim_map, tmp_path, suffix):
    from orix import io

    from ebsdnet.indexing import save_map

    xmap = index(sim_map, model=MODEL, show_progressbar=False)
    back = io.load(save_map(xmap, tmp_path / f"map{suffix}"))
    assert back.shape == xmap.shape
    assert back.phases_in_data.point_groups[0].laue.name == "m-3m"
    diff = disorientation_deg(torch.tensor(back.rotations.data), torch.tensor(xmap.rotations.data))
    assert diff.max() < 0.01


def test_patterns_twice_the_model_size_are_rebinned(sim_map):
    from ebsdnet.projector import DetectorGeometry

    big = simulate_map(
        (5, 6), n_grains=4, dose=300.0, seed=3, geometry=DetectorGeometry((120, 120))
    )
    a = index(sim_map, model=MODEL, show_progressbar=False)
    b = index(big, model=MODEL, show_progressbar=False)
    diff = disorientation_deg(torch.tensor(a.rotations.data), torch.tensor(b.rotations.data))
    assert torch.quantile(diff, 0.5) < 2.0  # same crystal, different sampling and noise


def test_broken_patterns_are_not_indexed_and_leave_the_rest_alone(sim_map):
    good = index(sim_map, model=MODEL, show_progressbar=False)
    broken = sim_map.deepcopy()
    data = broken.data.astype("float32")
    data[0, 0] = np.nan
    data[0, 1] = 7.0  # constant
    data[0, 2] = 255.0  # saturated
    broken = type(sim_map)(
        data, detector=sim_map.detector, static_background=sim_map.static_background
    )
    xmap = index(broken, model=MODEL, show_progressbar=False)
    assert list(xmap.phase_id[:3]) == [-1, -1, -1]
    assert np.all(xmap.prop["ncc"][:3] == 0)
    assert np.array_equal(xmap.rotations.data[3:], good.rotations.data[3:])
    # Integer patterns (no NaN possible) take their own check of the contrast.
    assert sim_map.data.dtype == np.uint8
    counts = sim_map.data.copy()
    counts[0, 1], counts[0, 2] = 7, 255
    broken = type(sim_map)(
        counts, detector=sim_map.detector, static_background=sim_map.static_background
    )
    xmap = index(broken, model=MODEL, show_progressbar=False)
    assert list(xmap.phase_id[:4]) == [0, -1, -1, 0]
    assert np.array_equal(xmap.rotations.data[3:], good.rotations.data[3:])


def test_refinement_sharpens_the_cnn(sim_map):
    truth = torch.tensor(sim_map.xmap.rotations.data)
    cnn = index(sim_map, model=MODEL, refine=False, show_progressbar=False)
    refined = index(sim_map, model=MODEL, show_progressbar=False)
    err_cnn = disorientation_deg(torch.tensor(cnn.rotations.data), truth, "m-3m")
    err = disorientation_deg(torch.tensor(refined.rotations.data), truth, "m-3m")
    assert err.mean() < 0.1 < err_cnn.mean()
    assert (refined.prop["ncc"] >= cnn.prop["ncc"] - 1e-4).all()


def test_real_patterns_index_with_the_dictionary_fallback():
    """The CNN misreads kikuchipy's 9 real Ni patterns; the fallback and refinement do not."""
    import kikuchipy as kp

    s = kp.data.nickel_ebsd_small()
    truth = torch.tensor(s.xmap.rotations.data)
    xmap = index(s, model=MODEL, show_progressbar=False)
    err = disorientation_deg(torch.tensor(xmap.rotations.data), truth, "m-3m")
    assert err.mean() <= 0.15 and err.max() < 0.5  # measured 0.076°, max 0.18°
    assert (xmap.phase_id == 0).all() and (xmap.prop["ncc"] > 0.3).all()
    without = index(s, model=MODEL, fallback_ncc=None, show_progressbar=False)
    err_without = disorientation_deg(torch.tensor(without.rotations.data), truth, "m-3m")
    # Refined from the CNN's answers alone, one stays lost (measured: 1 of 9, 1.46° mean);
    # from the hypothesis whose coarse NCC was highest, as index once did, 5 of 9.
    assert 1 <= int((err_without > 5).sum()) <= 2


def test_a_small_scan_without_a_background_in_the_file_uses_its_blurred_mean():
    """Files of some formats hold no static background (EDAX .up2, Oxford .ebsp): a small
    map then has too few grains for a plain mean, and none at all loses real patterns."""
    import kikuchipy as kp

    s = kp.data.nickel_ebsd_small()
    truth = torch.tensor(s.xmap.rotations.data)
    bare = kp.signals.EBSD(s.data.copy(), detector=s.detector)  # the file's background gone
    xmap = index(bare, model=MODEL, show_progressbar=False)
    err = disorientation_deg(torch.tensor(xmap.rotations.data), truth, "m-3m")
    # Measured: all 9, 0.18° mean, max 0.31° (no background: 3 of 9 indexed).
    assert (xmap.phase_id == 0).all() and err.mean() < 0.3 and err.max() < 0.5
    few_grains = simulate_map((4, 4), n_grains=2, seed=1)
    bare = kp.signals.EBSD(few_grains.data, detector=few_grains.detector)
    xmap = index(bare, model=MODEL, show_progressbar=False)
    truth = torch.tensor(few_grains.xmap.rotations.data)
    err = disorientation_deg(torch.tensor(xmap.rotations.data), truth, "m-3m")
    assert err.mean() < 0.03  # measured 0.011° over 3 maps; the plain mean 0.104°


def test_the_fallback_keeps_the_best_refinement_of_every_dictionary_candidate(master_pattern):
    """Patterns no candidate lifts above the fallback threshold (noise) try them all:
    the kept NCC is the best of the start's and each dictionary candidate's refinement."""
    from ebsdnet.indexing import (
        FALLBACK_CANDIDATES,
        FALLBACK_NCC,
        REFINE_ITERATIONS,
        _refine,
        fallback_dictionary,
    )
    from ebsdnet.preprocess import PreprocessConfig, preprocess
    from ebsdnet.projector import DetectorGeometry, Projector
    from ebsdnet.refine import refine_orientations
    from ebsdnet.stream import random_quaternions

    config = PreprocessConfig()
    projector = Projector(master_pattern, DetectorGeometry())
    noise = preprocess(torch.rand(3, 60, 60, generator=torch.Generator().manual_seed(3)), config)
    start = random_quaternions(3, generator=torch.Generator().manual_seed(4))
    pcs = projector.default_pc.expand(3, 3)
    _, _, ncc = _refine(
        noise, start, pcs, projector, config, False, FALLBACK_NCC, REFINE_ITERATIONS
    )
    candidates, _ = fallback_dictionary(projector, pcs[0], config).top(noise, FALLBACK_CANDIDATES)
    tried = [refine_orientations(noise, start, projector, pcs, config).ncc] + [
        refine_orientations(
            noise, candidates[:, k], projector, pcs, config, max_iterations=2 * REFINE_ITERATIONS
        ).ncc
        for k in range(FALLBACK_CANDIDATES)
    ]
    assert (ncc < FALLBACK_NCC).all()
    torch.testing.assert_close(ncc, torch.stack(tried, 1).amax(1), atol=1e-4, rtol=0)


def test_a_roughly_known_pattern_centre_is_corrected(tmp_path):
    """The file's PC is 0.01 off in each coordinate: ``refine_pc`` recovers it."""
    true_pc = np.array([0.425, 0.213, 0.501])
    signal = simulate_map((8, 8), n_grains=3, dose=300.0, seed=8, file_pc=true_pc + 0.01)
    truth = torch.tensor(signal.xmap.rotations.data)
    plain = index(signal, model=MODEL, show_progressbar=False)
    fitted = index(signal, model=MODEL, refine_pc=True, show_progressbar=False)
    err_plain = disorientation_deg(torch.tensor(plain.rotations.data), truth, "m-3m")
    err = disorientation_deg(torch.tensor(fitted.rotations.data), truth, "m-3m")
    assert err.mean() < 0.15 < err_plain.mean()
    found = np.column_stack([fitted.prop[f"pc{axis}"] for axis in "xyz"])
    assert np.abs(found - true_pc).max() < 0.002
    code = main(
        ["-q", "index", "x.h5", "-o", str(tmp_path / "a.ang"), "--no-refine", "--refine-pc"]
    )
    assert code == 2


def test_the_inference_copy_of_a_model_gives_its_answers():
    from ebsdnet.cards import load_model
    from ebsdnet.models import for_inference

    net, _ = load_model(MODEL)
    fast = for_inference(net)
    x = torch.randn(16, 60, 60, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = net(x), fast(x)
    assert torch.allclose(a["sixd"], b["sixd"], atol=1e-3)
    assert torch.equal(a["logits"].argmax(-1), b["logits"].argmax(-1))
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # original intact
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())


def test_the_sigmoid_gelu_copy_computes_x_sigmoid_1702x_and_reads_alike():
    """The int8 path's network: each convolution's GELU is x·σ(1.702x), written as a
    SiLU between rescaled layers; the answers stay those of the exact GELUs."""
    from ebsdnet.cards import load_model
    from ebsdnet.models import Liu2016, for_inference, sigmoid_gelu

    net, _ = load_model(MODEL)
    fast = for_inference(net)
    approx = sigmoid_gelu(fast)
    assert not any(isinstance(m, torch.nn.SiLU) for m in fast.modules())  # original intact
    assert sum(isinstance(m, torch.nn.SiLU) for m in approx.modules()) == len(fast.features)
    x = torch.randn(8, 60, 60, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # Exactly the sigmoid form, computed the plain way on the unscaled copy:
        def sigmoid_form(module, args, output):
            return args[0] * torch.sigmoid(1.702 * args[0])

        hooks = [block[-1].register_forward_hook(sigmoid_form) for block in fast.features]
        expected = fast(x)
        for hook in hooks:
            hook.remove()
        a, b = fast(x), approx(x)
    assert torch.allclose(b["sixd"], expected["sixd"], atol=1e-4)
    qa, qb = fast.to_quaternions(a), approx.to_quaternions(b)
    # Random-noise inputs are ill-posed patterns: median 0.66° apart with the retrained
    # ni-60 (the exact-form check above is the tight one).
    assert disorientation_deg(qa, qb, "m-3m").median() < 1.0
    liu = Liu2016().eval()  # no GELUs: an exact copy
    with torch.no_grad():
        assert torch.equal(sigmoid_gelu(liu)(x[:2])["euler"], liu(x[:2])["euler"])


def test_the_cnn_in_bfloat16_reads_what_it_reads_in_float32(sim_map):
    """``precision`` changes the CNN's arithmetic; its answers stay, the refined map too."""
    from ebsdnet.models import inference_autocast

    truth = torch.tensor(sim_map.xmap.rotations.data)
    maps = {
        p: index(sim_map, model=MODEL, refine=False, precision=p, show_progressbar=False)
        for p in ("float32", "bfloat16")
    }
    a, b = (torch.tensor(maps[p].rotations.data) for p in ("float32", "bfloat16"))
    assert disorientation_deg(a, b, "m-3m").mean() < 1.0
    assert disorientation_deg(b, truth, "m-3m").mean() < 3.0
    refined = index(sim_map, model=MODEL, precision="bfloat16", show_progressbar=False)
    err = disorientation_deg(torch.tensor(refined.rotations.data), truth, "m-3m")
    assert err.mean() < 0.1
    conv = torch.nn.Conv2d(1, 1, 3)
    x = torch.randn(1, 1, 8, 8)
    for precision, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        with torch.no_grad(), inference_autocast("cpu", precision):
            assert conv(x).dtype == dtype
    with pytest.raises(ValueError, match="precision"):
        inference_autocast("cpu", "float16")


def test_the_compiled_cnn_reads_what_the_plain_one_reads(sim_map):
    """``compiled`` runs the CNN and the NCC's projection through torch.compile: same map,
    and one compiled network serves every later call (no recompiling per call)."""
    from ebsdnet import indexing

    options = {"model": MODEL, "refine": False, "precision": "bfloat16", "show_progressbar": False}
    plain = index(sim_map, **options)
    maps, kernels = [], []
    for _ in range(2):
        maps.append(index(sim_map, compiled=True, **options))
        [(net, _)] = indexing._INFERENCE_NETS.values()
        kernels.append(indexing._CNN_KERNELS[(id(net), None)][1])
    a = torch.tensor(plain.rotations.data)
    for xmap in maps:
        b = torch.tensor(xmap.rotations.data)
        diff = disorientation_deg(a, b, "m-3m")  # bfloat16 rounded in another order
        assert diff.mean() < 0.15 and diff.max() < 1.0
        same = (diff < 1e-4).numpy()  # same answer: the compiled NCC must equal the plain one
        assert same.sum() >= len(same) // 4  # 9 of 30 with the retrained ni-60
        assert np.allclose(plain.prop["ncc"][same], xmap.prop["ncc"][same], atol=1e-4)
    assert kernels[0] is kernels[1]  # the second call reuses the first one's graphs
    assert kernels[0].compiled is not None and not kernels[0].failed


def test_the_int8_cnn_of_compiled_maps_reads_what_the_float_one_reads(sim_map, written, tmp_path):
    """Compiled on a CPU, ``auto`` quantizes the CNN to int8: its answers stay those of
    the float network (measured: mean 0.98° vs 0.98° noise-free), the refined map too."""
    from ebsdnet import indexing
    from ebsdnet.models import resolve_precision

    assert resolve_precision("cpu", "auto", compiled=True) == "int8"
    truth = torch.tensor(sim_map.xmap.rotations.data)
    plain = index(sim_map, model=MODEL, refine=False, show_progressbar=False)
    options = {"model": MODEL, "compiled": True, "batch_size": 16, "show_progressbar": False}
    int8 = index(sim_map, refine=False, **options)
    # int8 takes whole batches: the 30 patterns go as two of 15, not 16 and 14 padded to 16.
    sizes = {key[1] for key in indexing._CNN_KERNELS}
    assert 15 in sizes and 16 not in sizes
    a, b = (torch.tensor(m.rotations.data) for m in (plain, int8))
    assert disorientation_deg(a, b, "m-3m").mean() < 0.3
    err_plain = disorientation_deg(a, truth, "m-3m").mean()
    assert disorientation_deg(b, truth, "m-3m").mean() < err_plain + 0.2
    refined = index(sim_map, **options)
    assert disorientation_deg(torch.tensor(refined.rotations.data), truth, "m-3m").mean() < 0.1
    with pytest.raises(ValueError, match="int8"):
        index(sim_map, model=MODEL, precision="int8", compiled=False, show_progressbar=False)
    args = ["-q", "index", str(written / "map.h5"), "-o", str(tmp_path / "m.ang")]
    assert main([*args, "--precision", "int8", "--compile", "off"]) == 2
    assert not (tmp_path / "m.ang").exists()


def test_a_failing_int8_quantization_falls_back_with_one_warning(sim_map, monkeypatch, caplog):
    from ebsdnet import indexing

    def broken(*args, **kwargs):
        raise RuntimeError("no int8 here")

    monkeypatch.setattr(indexing, "quantized_int8", broken)
    monkeypatch.setattr(indexing, "_CNN_KERNELS", {})
    with caplog.at_level("WARNING", logger="ebsdnet.indexing"):
        xmap = index(sim_map, model=MODEL, refine=False, compiled=True, show_progressbar=False)
    assert caplog.text.count("int8 quantization failed (no int8 here)") == 1
    truth = torch.tensor(sim_map.xmap.rotations.data)
    assert disorientation_deg(torch.tensor(xmap.rotations.data), truth, "m-3m").mean() < 3.0


def test_a_two_worker_local_cluster_gives_the_single_process_map(sim_map, written, tmp_path):
    """``--scheduler``: the batches run on a dask.distributed cluster, the map is the same."""
    from distributed import LocalCluster
    from orix import io

    # Batches of 8: the 30 patterns make 4 tasks, spread over both workers.
    single = index(sim_map, model=MODEL, batch_size=8, show_progressbar=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster:
        spread = index(
            sim_map, model=MODEL, batch_size=8, scheduler=cluster.scheduler_address,
            show_progressbar=False,
        )  # fmt: skip
        out = tmp_path / "map.h5"
        args = ["-q", "index", str(written / "map.h5"), "-o", str(out), "--batch-size", "8"]
        code = main([*args, "--scheduler", cluster.scheduler_address])
        assert code == 0
    a, b = (torch.tensor(m.rotations.data) for m in (single, spread))
    # Workers run one torch thread each: reductions may round differently, nothing more.
    assert disorientation_deg(a, b, "m-3m").max() < 1e-3
    assert np.allclose(single.prop["ncc"], spread.prop["ncc"], atol=1e-5)
    assert np.array_equal(single.phase_id, spread.phase_id)
    from_cli = torch.tensor(io.load(out).rotations.data)
    assert disorientation_deg(from_cli, a, "m-3m").max() < 1e-3


def test_an_unreachable_scheduler_is_one_clear_error(written, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("ebsdnet.indexing.SCHEDULER_TIMEOUT_S", 2)
    out = tmp_path / "map.ang"
    args = ["-q", "index", str(written / "map.h5"), "-o", str(out)]
    code = main([*args, "--scheduler", "tcp://127.0.0.1:9"])
    assert code == 2 and not out.exists()
    assert "cannot reach the dask scheduler" in capsys.readouterr().err


def test_16_bit_patterns_index_like_8_bit_ones(sim_map):
    assert sim_map.data.dtype == np.uint8
    counts = type(sim_map)(
        sim_map.data.astype(np.uint16) * 200,  # a 16-bit detector's range
        detector=sim_map.detector,
        static_background=sim_map.static_background.astype(np.float32) * 200,
    )
    eight = index(sim_map, model=MODEL, show_progressbar=False)
    sixteen = index(counts, model=MODEL, show_progressbar=False)
    diff = disorientation_deg(
        torch.tensor(sixteen.rotations.data), torch.tensor(eight.rotations.data)
    )
    assert diff.max() < 0.01 and sixteen.is_indexed.all()


@pytest.mark.parametrize(("rows", "cols"), [(1, 3), (3, 1), (1, 1)])
def test_a_line_scan_or_a_single_pattern_is_written_and_drawn(sim_map, tmp_path, rows, cols):
    from orix import io

    part = sim_map.inav[:cols, :rows]
    if rows == cols == 1:
        part = sim_map.inav[0, 0]  # no navigation axis at all
    part.save(tmp_path / "part.h5")
    # orix's .ctf reader takes no one-line file: a single point is checked in .h5
    out = tmp_path / ("map.h5" if rows == cols == 1 else "map.ctf")
    png = tmp_path / "ipf.png"
    args = ["-q", "index", str(tmp_path / "part.h5"), "-o", str(out), "--ipf", str(png)]
    assert main(args) == 0 and png.stat().st_size > 1000
    back = io.load(out)
    assert back.size == rows * cols and back.is_indexed.all()
    # orix writes no .ang of fewer than four points: refused before any indexing
    ang = tmp_path / "part.ang"
    assert main(["-q", "index", str(tmp_path / "part.h5"), "-o", str(ang)]) == 2
    assert not ang.exists()


def test_points_not_indexed_are_black_in_the_ipf_map(sim_map):
    from ebsdnet.indexing import ipf_image

    xmap = index(sim_map, model=MODEL, show_progressbar=False, min_ncc=0.0)
    assert ipf_image(xmap).shape == (5, 6, 3) and ipf_image(xmap).max(-1).min() > 0
    xmap = index(sim_map, model=MODEL, show_progressbar=False, min_ncc=1.0)  # none
    assert not ipf_image(xmap).any()


def test_the_map_may_not_overwrite_its_patterns(written, capsys):
    src = written / "map.h5"
    before = src.read_bytes()
    assert main(["-q", "index", str(src), "-o", str(src), "--force"]) == 2
    assert "overwrite the pattern file" in capsys.readouterr().err
    assert src.read_bytes() == before
