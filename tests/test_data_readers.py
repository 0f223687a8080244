"""Dataset readers on tiny fixtures written in each dataset's preprocessed layout, and mixtures.

Every fixture frame is a 32x24 view of the world plane Z = 4 from a known pose, with a flat colour that
encodes the frame. Readers must return the stored poses/intrinsics and world points on that plane
(tolerances = the depth encoding's quantisation), and sample views the way the reference does.
"""

import concurrent.futures
import dataclasses
import inspect
import os
import pathlib

import cv2
import numpy as np
import pytest

from fast3r_jax.config import TrainConfig, load_config_file
from fast3r_jax.data import layouts, readers
from fast3r_jax.data.mixture import Mixture, mixture_terms, parse_mixture

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"
W, H = 32, 24
PLANE_Z = 4.0
KEYS = {"img", "depthmap", "camera_intrinsics", "camera_pose", "pts3d", "valid_mask", "true_shape",
        "dataset", "label", "instance"}


def intrinsics(frame: int) -> np.ndarray:
    return np.array([[30.0 + frame, 0, 15.5], [0, 29.0 + frame, 11.0], [0, 0, 1]])


def pose(scene: int, frame: int) -> np.ndarray:
    a, b = 0.03 * frame + 0.1 * scene, -0.02 * frame
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    c2w = np.eye(4)
    c2w[:3, :3] = ry @ rx
    c2w[:3, 3] = (0.1 * frame, -0.05 * frame + scene, 0.2 * scene)
    return c2w


def plane_view(K: np.ndarray, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact z-depth (H, W) of the plane Z = PLANE_Z and its world points (H, W, 3), float64."""
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u, float)], -1)
    dirs = rays @ c2w[:3, :3].T  # (H, W, 3)
    depth = (PLANE_Z - c2w[2, 3]) / dirs[..., 2]
    return depth, c2w[:3, 3] + depth[..., None] * dirs


def colour(scene: int, frame: int) -> np.ndarray:
    return np.array([40 + 20 * frame, 60 + 50 * scene, 200], np.uint8)


class Truth(dict):
    """(label, instance) -> (K, c2w, scene, frame) of every fixture frame."""

    def add(self, label, instance, scene, frame, K, c2w) -> np.ndarray:
        """Registers a frame; returns its exact depth map."""
        self[label, instance] = (K, c2w, scene, frame)
        return plane_view(K, c2w)[0]


def frame(truth: Truth, label: str, instance: str, scene: int, number: int) -> layouts.Frame:
    """A fixture frame (flat colour, plane depth) registered in `truth`."""
    K, c2w = intrinsics(number), pose(scene, number)
    depth = truth.add(label, instance, scene, number, K, c2w)
    return layouts.Frame(np.broadcast_to(colour(scene, number), (H, W, 3)), depth, K, c2w)


def check_sample(views, truth: Truth, num_views: int, depth_tol: float, dataset: str):
    """Sample format, stored geometry returned, points on the plane; returns [(scene, frame)]."""
    assert len(views) == num_views
    ids = []
    for view in views:
        assert set(view) == KEYS and view["dataset"] == dataset
        K, c2w, scene, frame = truth[view["label"], view["instance"]]
        assert view["img"].shape == (H, W, 3) and view["img"].dtype == np.uint8
        assert view["true_shape"].tolist() == [H, W] and view["true_shape"].dtype == np.int32
        assert view["depthmap"].dtype == np.float32 and view["pts3d"].dtype == np.float32
        assert view["camera_pose"].dtype == np.float32 and view["camera_intrinsics"].dtype == np.float32
        np.testing.assert_allclose(view["camera_pose"], c2w, atol=1e-6)
        np.testing.assert_allclose(view["camera_intrinsics"], K, atol=1e-6)
        # colour encodes the frame: checks the image <-> metadata pairing and the RGB channel order
        np.testing.assert_allclose(view["img"].reshape(-1, 3).mean(0), colour(scene, frame), atol=3)
        depth, pts = plane_view(K, c2w)
        valid = view["valid_mask"]
        assert valid.any()
        np.testing.assert_allclose(view["depthmap"][valid], depth[valid], rtol=depth_tol)
        np.testing.assert_allclose(view["pts3d"][valid], pts[valid], atol=depth_tol * 10)
        np.testing.assert_allclose(view["pts3d"][valid][:, 2], PLANE_Z, atol=depth_tol * 10)
        ids.append((scene, frame))
    return ids


# ----------------------------------------------------------------------------
# Fixture writers, one per layout.
# ----------------------------------------------------------------------------


def write_co3d(root, frames_per_seq=6) -> Truth:
    truth, sequences = Truth(), {}
    selected = {"apple": {"110_1": list(range(1, frames_per_seq + 1))}, "ball": {"220_2": [3, 5, 7, 9]}}
    mask = np.full((H, W), 255, np.uint8)
    mask[:, :5] = 0  # background: first 5 columns
    for scene, (cat, seqs) in enumerate(selected.items()):
        sequences[cat] = {seq: {n: dataclasses.replace(frame(truth, f"{cat}/{seq}", f"frame{n:06d}", scene, n),
                                                       mask=mask) for n in numbers}
                          for seq, numbers in seqs.items()}
    layouts.write_co3d(root, sequences)
    return truth


def _metadata_frames(scenes: dict[str, list[str]]) -> tuple[Truth, dict]:
    """Frames of ScanNet++/ARKitScenes-style all_metadata.npz layouts."""
    truth = Truth()
    frames = {name: {image: frame(truth, name, os.path.splitext(image)[0], scene, number)
                     for number, image in enumerate(images)}
              for scene, (name, images) in enumerate(scenes.items())}
    return truth, frames


def write_scannetpp(root) -> Truth:
    truth, frames = _metadata_frames({
        "0a5c013435": [f"frame_{i:06d}" for i in (0, 10, 20, 30, 40)] + ["DSC00012", "DSC00015", "DSC00019",
                                                                        "DSC00023"],
        "1b2d3f4e5a": [f"frame_{i:06d}" for i in range(5)]})
    layouts.write_scannetpp(root, frames)
    return truth


def write_arkitscenes(root) -> Truth:
    truth, frames = _metadata_frames({
        "41069021": [f"41069021_{t:.3f}.png" for t in (100.5, 101.0, 101.5, 102.0, 102.5, 103.0)],
        "42445991": [f"42445991_{t:.3f}.png" for t in (7.0, 7.5, 8.0, 8.5)]})
    layouts.write_arkitscenes(root, frames)
    return truth


def write_habitat(root, size=1000, drop=None) -> Truth:
    truth, scenes = Truth(), {}
    for scene, line in enumerate(["scene_a/00001", "scene_b/sub/00042"]):
        folder, key = os.path.split(line)
        scenes[line] = {i: frame(truth, folder, f"{key}_{i}", scene, i) for i in range(1, 6) if drop != (scene, i)}
    layouts.write_habitat(root, scenes, size=size)
    return truth


def write_blendedmvs(root) -> Truth:
    truth = Truth()
    scenes = {(0x5a3c, 21): [0, 1, 2, 3, 4], (0x5b00, 30): [2, 4, 6, 8]}  # seq_low 30 -> 'val'
    layouts.write_blendedmvs(root, {
        (high, low): {i: frame(truth, f"{high:08x}{low:016x}", f"{i:08d}", scene, i) for i in imgs}
        for scene, ((high, low), imgs) in enumerate(scenes.items())})
    return truth


def write_megadepth(root) -> Truth:
    truth = Truth()
    scenes = {"0001/0": ["1021_a", "1022_b", "1023_c", "1024_d", "1025_e"], "0015/1": ["7_x", "8_y", "9_z"]}
    layouts.write_megadepth(root, {name: {image: frame(truth, name, image, scene, number)
                                          for number, image in enumerate(images)}
                                   for scene, (name, images) in enumerate(scenes.items())})
    return truth


# ----------------------------------------------------------------------------
# Per-dataset tests.
# ----------------------------------------------------------------------------

QUANT_PNG16 = 2e-5  # relative depth error of depth / max * 65535 in uint16
QUANT_MM = 2e-4  # 0.5 mm at ~3-5 m
QUANT_HALF = 1e-3  # float16 EXR


def _samples(reader, count=6, seed=0):
    rng = np.random.default_rng(seed)
    return [reader.__getitem__(int(i), np.random.default_rng(seed + k))
            for k, i in enumerate(rng.integers(len(reader), size=count))]


def test_co3d(tmp_path):
    truth = write_co3d(str(tmp_path))
    reader = readers.Co3d(str(tmp_path), "train", num_views=3, window_degree_range=36,
                          num_samples_per_window=20, mask_bg=True)
    # combinations: 3 of the slots [i - 5, i + 5) of 100 slots; len = sequences x combinations
    combos = reader.combinations
    assert combos.shape[1] == 3 and len(np.unique(combos, axis=0)) == len(combos)
    assert (combos.max(1) - combos.min(1)).max() <= 9 and len(reader) == 2 * len(combos)
    seq_frames = {0: set(range(1, 7)), 1: {3, 5, 7, 9}}
    for index in (0, len(combos) - 1, len(combos), len(reader) - 1):
        views = reader.__getitem__(index, np.random.default_rng(index))
        ids = check_sample(views, truth, 3, QUANT_PNG16, "Co3d_v2")
        scene = index // len(combos)
        assert {s for s, _ in ids} == {scene} and {f for _, f in ids} <= seq_frames[scene]
        slots = combos[index % len(combos)]
        numbers = sorted(seq_frames[scene])
        # each frame is the combination slot moved by at most 4, clipped to the sequence
        lo = [numbers[int(np.clip(s - 4, 0, len(numbers) - 1))] for s in slots]
        hi = [numbers[int(np.clip(s + 4, 0, len(numbers) - 1))] for s in slots]
        assert all(a <= f <= b for (_, f), a, b in zip(ids, lo, hi))
        for view in views:  # object mask: the first 5 columns are background
            assert not view["valid_mask"][:, :5].any() and view["valid_mask"][:, 5:].all()
    unmasked = readers.Co3d(str(tmp_path), "train", num_views=3, window_degree_range=36,
                            num_samples_per_window=20, mask_bg=False)
    assert all(v["valid_mask"].all() for v in unmasked.__getitem__(5, np.random.default_rng(0)))
    assert reader.aug_crop == 16


def test_co3d_replaces_frames_without_depth(tmp_path):
    write_co3d(str(tmp_path))
    for n in (1, 2, 3, 4):  # only frames 5 and 6 of the first sequence keep an object
        cv2.imwrite(str(tmp_path / "apple/110_1/masks" / f"frame{n:06d}.png"), np.zeros((H, W), np.uint8))
    reader = readers.Co3d(str(tmp_path), "train", num_views=4, window_degree_range=36, num_samples_per_window=5)
    for index in range(0, len(reader.combinations), 7):
        views = reader.__getitem__(index, np.random.default_rng(index))
        assert len(views) == 4 and all(v["valid_mask"].any() for v in views)
        assert len({v["label"] for v in views}) == 1
        assert {v["instance"] for v in views} <= {"frame000005", "frame000006", "frame000003", "frame000007",
                                                  "frame000009"}


def test_scannetpp(tmp_path):
    truth = write_scannetpp(str(tmp_path))
    reader = readers.ScanNetpp(str(tmp_path), "train", num_views=3, window_size=4, num_samples_per_window=10)
    names = np.load(tmp_path / "all_metadata.npz")["images"]
    for combo in reader.combinations:  # one scene and one device per combination, within a window of 4
        assert len({str(names[i]).startswith("frame_") for i in combo}) == 1
        assert combo.max() - combo.min() <= 3
    for views in _samples(reader):
        ids = check_sample(views, truth, 3, QUANT_MM, "ScanNet++")
        assert len({s for s, _ in ids}) == 1
        assert len({v["instance"].startswith("frame_") for v in views}) == 1
    with pytest.raises(ValueError, match="train"):
        readers.ScanNetpp(str(tmp_path), "val")
    assert reader.aug_crop == 256


def test_arkitscenes(tmp_path):
    truth = write_arkitscenes(str(tmp_path))
    reader = readers.ARKitScenes(str(tmp_path), "train", num_views=2)
    # window 6 -> frames [i - 3, i + 3): all 2-frame tuples within 5 consecutive frames, no jitter
    frames = np.load(tmp_path / "Training/all_metadata.npz")["sceneids"]
    expected = {(a, b) for s in (0, 1) for a in np.flatnonzero(frames == s) for b in np.flatnonzero(frames == s)
                if a != b and abs(a - b) <= 5}
    assert {tuple(c) for c in reader.combinations} <= expected
    for index in range(0, len(reader), 5):
        views = reader.__getitem__(index, np.random.default_rng(index))
        check_sample(views, truth, 2, QUANT_MM, "arkitscenes")
        assert [v["instance"] for v in views] == [
            os.path.splitext(str(np.load(tmp_path / "Training/all_metadata.npz")["images"][i]))[0]
            for i in reader.combinations[index]]


def test_habitat(tmp_path):
    truth = write_habitat(str(tmp_path), drop=(1, 3))
    reader = readers.Habitat(str(tmp_path), "train", num_views=4, size=1000)
    assert len(reader) == 2
    for seed in range(8):
        for index in range(2):
            views = reader.__getitem__(index, np.random.default_rng(seed))
            ids = check_sample(views, truth, 4, QUANT_HALF, "Habitat")
            assert ids[0][1] == 1 and len({s for s, _ in ids}) == 1  # view 1 first
            if index == 0:
                assert len({f for _, f in ids}) == 4  # distinct views
            else:
                assert 3 not in {f for _, f in ids}  # missing view 3 replaced by view 4
    many = readers.Habitat(str(tmp_path), "train", num_views=7, size=1000)
    assert len(many.__getitem__(0, np.random.default_rng(0))) == 7  # repeats beyond 5 views


def test_blendedmvs(tmp_path):
    truth = write_blendedmvs(str(tmp_path))
    train = readers.BlendedMVS(str(tmp_path), "train", num_views=3, window_size=6, num_samples_per_window=10)
    val = readers.BlendedMVS(str(tmp_path), "val", num_views=3)
    assert {f[0] for f in train.frames} == {f"{0x5a3c:08x}{21:016x}"}
    assert {f[0] for f in val.frames} == {f"{0x5b00:08x}{30:016x}"}
    assert len(readers.BlendedMVS(str(tmp_path), None, num_views=3).frames) == 9
    for reader, scene in ((train, 0), (val, 1)):
        for views in _samples(reader, 4):
            assert {s for s, _ in check_sample(views, truth, 3, 1e-6, "BlendedMVS")} == {scene}


def test_megadepth(tmp_path):
    truth = write_megadepth(str(tmp_path))
    train = readers.MegaDepth(str(tmp_path), "train", num_views=3, window_size=8, num_samples_per_window=20)
    val = readers.MegaDepth(str(tmp_path), "val", num_views=3)
    for reader, scene in ((train, 0), (val, 1)):
        for views in _samples(reader, 4):
            assert {s for s, _ in check_sample(views, truth, 3, 1e-6, "MegaDepth")} == {scene}
    with pytest.raises(ValueError, match="split"):
        readers.MegaDepth(str(tmp_path), "test")


def test_readers_are_deterministic_given_the_rng(tmp_path):
    write_scannetpp(str(tmp_path))
    a = readers.ScanNetpp(str(tmp_path), num_views=3, window_size=4, num_samples_per_window=10, seed=5)
    b = readers.ScanNetpp(str(tmp_path), num_views=3, window_size=4, num_samples_per_window=10, seed=5)
    np.testing.assert_array_equal(a.combinations, b.combinations)
    va, vb = a.__getitem__(3, np.random.default_rng(1)), b.__getitem__(3, np.random.default_rng(1))
    assert [v["instance"] for v in va] == [v["instance"] for v in vb]
    assert [v["instance"] for v in a[3]] == [v["instance"] for v in b[3]]  # default rng from (seed, index)


def test_views_without_world_points(tmp_path):
    """world_points=False (what the input pipeline asks for) leaves out pts3d and nothing else."""
    write_scannetpp(str(tmp_path))
    reader = readers.ScanNetpp(str(tmp_path), num_views=3, window_size=4, num_samples_per_window=10)
    full = readers.load_sample(reader, 2, np.random.default_rng(1))
    bare = readers.load_sample(reader, 2, np.random.default_rng(1), world_points=False)
    for a, b in zip(full, bare):
        assert set(b) == KEYS - {"pts3d"}
        for key in b:
            np.testing.assert_array_equal(a[key], b[key])


def test_npz_files_load_from_many_threads(tmp_path):
    """numpy's header parsing is not thread-safe on CPython 3.11 (python/cpython#106905); read_npz serialises it."""
    paths = []
    for i in range(32):
        paths.append(str(tmp_path / f"{i}.npz"))
        np.savez(paths[-1], **{f"a{k}": np.full((2, k + 1), i, np.float32) for k in range(8)})
    keys = [f"a{k}" for k in range(8)]

    def load(i: int) -> bool:
        data = readers.read_npz(paths[i % len(paths)], "test", keys)
        return all(np.all(data[k] == i % len(paths)) for k in keys)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert all(pool.map(load, range(2000)))


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset root not found: .*nowhere"):
        readers.Co3d(str(tmp_path / "nowhere"), "train")
    with pytest.raises(FileNotFoundError, match="selected_seqs_test.json"):
        readers.Co3d(str(tmp_path), "test")
    with pytest.raises(FileNotFoundError, match="all_metadata_for_multiview.npz"):
        readers.MegaDepth(str(tmp_path), "train")
    with pytest.raises(FileNotFoundError, match="Habitat_1000000_scenes_train.txt"):
        readers.Habitat(str(tmp_path), "train")
    write_blendedmvs(str(tmp_path))
    scene = f"{0x5a3c:08x}{21:016x}"
    os.remove(tmp_path / scene / "00000002.exr")
    reader = readers.BlendedMVS(str(tmp_path), "train", num_views=5)  # every sample uses all 5 frames
    with pytest.raises(FileNotFoundError, match=rf"depth map not found: .*{scene}/00000002\.exr"):
        reader[0]


def test_index_out_of_range(tmp_path):
    write_habitat(str(tmp_path))
    reader = readers.Habitat(str(tmp_path), "train", size=1000)
    with pytest.raises(IndexError, match="out of range"):
        reader[2]


def test_a_window_smaller_than_the_views_fails_before_reading(tmp_path):
    with pytest.raises(ValueError, match=r"^BlendedMVS: window_size=6 draws views from at most 6 frames, fewer "
                                         r"than num_views=20; widen the window$"):
        readers.BlendedMVS(str(tmp_path / "nowhere"), "train", num_views=20)
    with pytest.raises(ValueError, match=r"^Co3d_v2: window_degree_range=36 draws views from at most 10 frames"):
        readers.Co3d(str(tmp_path / "nowhere"), "train", num_views=11, window_degree_range=36)


def write_one_scene(name: str, root: str, split: str | None, frames: int, size: int) -> None:
    """`frames` tiny frames of one scene (Habitat: one key) of the layout `name`, in `split`."""
    K = np.array([[8.0, 0, 3.5], [0, 8.0, 2.5], [0, 0, 1]])
    f = layouts.Frame(np.zeros((6, 8, 3), np.uint8), np.ones((6, 8), np.float32), K, np.eye(4))
    numbers = range(1, frames + 1)
    if name == "co3d":
        layouts.write_co3d(root, {"cat": {"seq": {i: f for i in numbers}}}, split)
    elif name == "scannetpp":
        layouts.write_scannetpp(root, {"scene": {f"frame_{i:06d}": f for i in numbers}})
    elif name == "arkitscenes":
        layouts.write_arkitscenes(root, {"scene": {f"{i:06d}.png": f for i in numbers}}, split)
    elif name == "habitat":
        layouts.write_habitat(root, {"scenes/key": {i: f for i in range(1, 6)}}, split, size)
    elif name == "blendedmvs":
        layouts.write_blendedmvs(root, {(1, 10 if split == "val" else 11): {i: f for i in numbers}})
    elif name == "megadepth":
        layouts.write_megadepth(root, {("0015" if split == "val" else "0001") + "/0": {str(i): f for i in numbers}})
    else:
        raise ValueError(f"no fixture for {name!r}")


TRAIN_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.py") if isinstance(load_config_file(p), TrainConfig))


def test_train_configs_are_found():
    assert {"train_builtin.py", "train_large.py", "train_tiny.py"} <= set(TRAIN_CONFIGS)


@pytest.mark.parametrize("config", TRAIN_CONFIGS)
def test_every_dataset_of_every_config_has_samples(config, tmp_path, monkeypatch):
    """Each reader of a training config, on one scene of exactly num_views frames, has at least one sample."""
    monkeypatch.setenv("FAST3R_DATA_ROOT", str(tmp_path))
    cfg = load_config_file(CONFIGS / config)
    for spec in (cfg.data.train, cfg.data.val):
        for _, name, args, kwargs in mixture_terms(spec):
            if name in readers.READERS:
                call = inspect.signature(readers.READERS[name]).bind(*args, **kwargs)
                call.apply_defaults()
                a = call.arguments
                write_one_scene(name, a["root"], a["split"], a["num_views"], a.get("size", 0))
        for size, source in parse_mixture(spec).entries:  # readers without samples raise here
            assert len(source) > 0 and size > 0


# ----------------------------------------------------------------------------
# Mixtures.
# ----------------------------------------------------------------------------


class Numbered:
    def __init__(self, n, name):
        self.n, self.name = n, name

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return [{"label": self.name, "instance": str(index)}]


def test_mixture_resamples_each_source_to_its_size():
    small, large = Numbered(3, "small"), Numbered(10, "large")
    mix = Mixture([(5, small), (7, large)])
    assert len(mix) == 12
    for epoch in (0, 1):
        picks = [mix.locate(i, epoch) for i in range(12)]
        assert all(src is small for src, _ in picks[:5]) and all(src is large for src, _ in picks[5:])
        # the reference rule: permutation seeded by epoch + 777, repeated, cut to size
        np.testing.assert_array_equal([j for _, j in picks[:5]],
                                      np.tile(np.random.default_rng(epoch + 777).permutation(3), 2)[:5])
        np.testing.assert_array_equal([j for _, j in picks[5:]],
                                      np.random.default_rng(epoch + 777).permutation(10)[:7])
    assert [mix.locate(i, 0) for i in range(5, 12)] != [mix.locate(i, 1) for i in range(5, 12)]
    assert mix[6] == large[mix.locate(6)[1]]
    with pytest.raises(IndexError):
        mix.locate(12)
    with pytest.raises(ValueError, match="positive"):
        Mixture([(0, small)])


def test_parse_mixture(tmp_path):
    write_habitat(str(tmp_path / "habitat"))
    write_megadepth(str(tmp_path / "megadepth"))
    mix = parse_mixture(f"8 @ habitat(root={str(tmp_path / 'habitat')!r}, split='train', size=1_000, num_views=2)"
                        f" + 1_0 @ megadepth(root={str(tmp_path / 'megadepth')!r}, split='train', num_views=2,"
                        f" window_size=4, num_samples_per_window=3)")
    assert [size for size, _ in mix.entries] == [8, 10]
    assert isinstance(mix.entries[0][1], readers.Habitat) and mix.entries[0][1].num_views == 2
    assert isinstance(mix.entries[1][1], readers.MegaDepth) and mix.entries[1][1].num_views == 2
    whole = parse_mixture([f"habitat({str(tmp_path / 'habitat')!r}, 'train', size=1000)"])
    assert whole.entries[0][0] == 2  # no 'N @': the source's own length
    with pytest.raises(ValueError, match="unknown data source 'os'"):
        parse_mixture("10 @ os(root='/')")
    with pytest.raises(ValueError, match="literals"):
        parse_mixture("10 @ habitat(root=__import__('os').getcwd(), split='train')")
    with pytest.raises(ValueError, match="integer"):
        parse_mixture("1.5 @ habitat(root='/x', split='train')")
    with pytest.raises(ValueError, match="expected"):
        parse_mixture("10 @ habitat")
