"""Image/video input: parity with the reference preprocessing and closed-form cases."""

import os
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from fast3r_jax.io import images

DATA = Path(__file__).parent / "data"
INPUTS = {"landscape": DATA / "img_landscape_640x480.png", "portrait": DATA / "img_portrait_480x640.png"}


def _expected(rgb: tuple[int, ...]) -> np.ndarray:
    """Normalised value of a uint8 RGB triple, (3,) float32."""
    return (np.array(rgb, np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)


# ----------------------------------------------------------------------------
# Parity with the reference output.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [512, 224])
@pytest.mark.parametrize("orientation", ["landscape", "portrait"])
def test_matches_reference_preprocessing(size, orientation):
    golden = np.load(DATA / "image_preproc.npz")
    view = images.load_image(INPUTS[orientation], size=size)
    ref_img = golden[f"size{size}_{orientation}_img"]
    np.testing.assert_array_equal(view["true_shape"], golden[f"size{size}_{orientation}_true_shape"])
    assert view["true_shape"].dtype == np.int32
    assert view["img"].dtype == np.float32 and view["img"].shape == ref_img.shape
    # Measured: bit-identical (max abs error 0.0) with Pillow 13.0.
    np.testing.assert_array_equal(view["img"], ref_img)


def test_reference_normalisation_is_a_true_division():
    """The golden separates x / 255 from x * (1 / 255): they differ in float32 for some
    uint8 values, and the reference pixels contain such values."""
    u = np.arange(256, dtype=np.float32)
    differs = u / np.float32(255) != u * np.float32(1 / 255)
    assert differs.any()
    ref = np.load(DATA / "image_preproc.npz")["size512_landscape_img"]
    values = np.round((ref * np.float32(0.5) + np.float32(0.5)) * 255).astype(int)
    assert differs[np.unique(values)].any()


def test_expected_shapes():
    assert images.load_image(INPUTS["landscape"])["true_shape"].tolist() == [[384, 512]]
    assert images.load_image(INPUTS["portrait"])["true_shape"].tolist() == [[512, 384]]


# ----------------------------------------------------------------------------
# Resize / crop geometry in closed form.
# ----------------------------------------------------------------------------


def test_resized_size_rounds_half_to_even():
    assert images.resized_size(1024, 301, 512) == (512, 150)  # 150.5 -> 150
    assert images.resized_size(1024, 303, 512) == (512, 152)  # 151.5 -> 152
    assert images.resized_size(640, 480, 299) == (299, 224)  # 224.25 -> 224


@pytest.mark.parametrize(
    "wh, size, square_ok, shape",
    [
        ((600, 600), 512, False, (384, 512)),  # square -> 4:3
        ((600, 600), 512, True, (512, 512)),
        ((700, 300), 512, False, (208, 512)),  # 219 rows -> 13 * 16
        ((100, 40), 512, False, (192, 512)),  # enlarged (bicubic): 205 rows -> 12 * 16
        ((640, 480), 224, False, (224, 224)),
        ((300, 900), 224, False, (224, 224)),
    ],
)
def test_output_shapes(wh, size, square_ok, shape):
    img = PIL.Image.new("RGB", wh, (10, 20, 30))
    view = images.load_image(img, size=size, square_ok=square_ok)
    assert view["true_shape"].tolist() == [list(shape)]
    assert view["img"].shape == (1, 3, *shape)
    # A solid colour survives resizing and cropping unchanged.
    np.testing.assert_allclose(view["img"][0, :, 0, 0], _expected((10, 20, 30)), atol=1e-6)


def test_crop_is_centred():
    """A 512x384 image already has the output size: identity up to normalisation."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (384, 512, 3), dtype=np.uint8)
    view = images.load_image(PIL.Image.fromarray(pixels))
    np.testing.assert_array_equal(view["img"][0], images.normalize(pixels))
    assert view["img"].min() >= -1 and view["img"].max() <= 1
    # 520x100 -> 512x96: 4 columns and 2 rows off each side.
    assert images.crop_box(520, 100, 1000) == (4, 2, 516, 98)


def test_normalize_closed_form():
    pixels = np.array([[[0, 255, 51]]], dtype=np.uint8)
    out = images.normalize(pixels)
    assert out.shape == (3, 1, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 0], [-1.0, 1.0, -0.6], atol=1e-7)
    with pytest.raises(ValueError, match="uint8"):
        images.normalize(pixels.astype(np.float32))


def test_size_must_be_valid():
    img = PIL.Image.new("RGB", (64, 48))
    with pytest.raises(ValueError, match="size"):
        images.load_image(img, size=8)


# ----------------------------------------------------------------------------
# Colour modes and EXIF orientation.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, colour, rgb",
    [
        ("RGBA", (10, 200, 30, 0), (10, 200, 30)),  # alpha is dropped
        ("L", 77, (77, 77, 77)),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
        ("I;16", 90, (90, 90, 90)),
    ],
)
def test_colour_modes_become_rgb(mode, colour, rgb):
    view = images.load_image(PIL.Image.new(mode, (64, 48), colour), size=64)
    assert view["img"].shape == (1, 3, 48, 64)
    np.testing.assert_allclose(view["img"][0], np.broadcast_to(_expected(rgb)[:, None, None], (3, 48, 64)), atol=1e-7)


def test_palette_and_alpha_files(tmp_path):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    rgba = np.concatenate([pixels, rng.integers(0, 256, (48, 64, 1), dtype=np.uint8)], -1)
    PIL.Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    palette = PIL.Image.fromarray(pixels).quantize(16)
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(images.load_image(tmp_path / "a.png", 64)["img"][0], images.normalize(pixels))
    want = np.asarray(palette.convert("RGB"))
    np.testing.assert_array_equal(images.load_image(tmp_path / "p.png", 64)["img"][0], images.normalize(want))


def test_exif_orientation_is_applied(tmp_path):
    """Orientation 6 = the stored image must be turned 90 degrees clockwise for display."""
    stored = np.zeros((48, 64, 3), np.uint8)  # landscape as stored
    stored[:, :32] = (255, 0, 0)  # left half red
    stored[:, 32:] = (0, 0, 255)  # right half blue
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    PIL.Image.fromarray(stored).save(path, quality=100, exif=exif)

    view = images.load_image(path, size=64)
    assert view["true_shape"].tolist() == [[64, 48]]  # displayed upright: portrait
    img = view["img"][0]
    # Clockwise turn: stored left (red) -> displayed top, stored right (blue) -> bottom.
    np.testing.assert_allclose(img[:, 8, 24], _expected((255, 0, 0)), atol=0.05)
    np.testing.assert_allclose(img[:, 56, 24], _expected((0, 0, 255)), atol=0.05)
    # Exact: same as turning the decoded (orientation-less) pixels by hand.
    with PIL.Image.open(path) as raw:
        decoded = np.asarray(raw.convert("RGB"))
    by_hand = images.load_image(PIL.Image.fromarray(np.rot90(decoded, k=-1).copy()), size=64)
    np.testing.assert_array_equal(img, by_hand["img"][0])


# ----------------------------------------------------------------------------
# Files, folders, globs and errors.
# ----------------------------------------------------------------------------


def _write(path: Path, value: int, fmt: str | None = None) -> None:
    PIL.Image.new("RGB", (32, 32), (value, value, value)).save(path, format=fmt)


def test_folder_glob_and_list_order(tmp_path):
    folder = tmp_path / "scene"
    folder.mkdir()
    _write(folder / "c.webp", 30, "WEBP")
    _write(folder / "a.jpg", 10)
    _write(folder / "B.png", 20)
    _write(folder / "b.png", 40)
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub.png").mkdir()  # a folder with an image-like name is skipped

    names = [os.path.basename(p) for p in images.expand_image_paths(folder)]
    assert names == ["B.png", "a.jpg", "b.png", "c.webp"]  # sorted by name, like os.listdir + sorted

    names = [os.path.basename(p) for p in images.expand_image_paths(str(folder / "*.png"))]
    assert names == ["B.png", "b.png"]

    paths = images.expand_image_paths([folder / "c.webp", str(folder / "a.jpg")])
    views = list(images.load_all(lambda p: images.load_image(p, size=32, square_ok=True), paths))
    assert [os.path.basename(v["name"]) for v in views] == ["c.webp", "a.jpg"]
    assert views[0]["true_shape"].tolist() == [[32, 32]]
    np.testing.assert_allclose(views[1]["img"], -1 + 2 * 10 / 255, atol=0.02)  # JPEG of grey 10


def test_missing_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        images.expand_image_paths([tmp_path / "nope.png"])
    with pytest.raises(FileNotFoundError, match="nope.png"):
        images.load_image(tmp_path / "nope.png")
    with pytest.raises(FileNotFoundError, match=r"\*\.jpg"):
        images.expand_image_paths(str(tmp_path / "*.jpg"))


def test_empty_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no image files"):
        images.expand_image_paths(tmp_path)


def test_corrupt_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ValueError, match="broken.png"):
        images.load_image(bad)
    truncated = tmp_path / "cut.jpg"
    _write(truncated, 100)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ValueError, match="cut.jpg"):
        images.load_image(truncated)


def test_video_path_is_refused_by_expand_image_paths(tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    with pytest.raises(ValueError, match="load_video_frames"):
        images.expand_image_paths(video)


# ----------------------------------------------------------------------------
# Video frames.
# ----------------------------------------------------------------------------


def _grey(i: int) -> int:
    return 10 + 20 * i  # frame index encoded as a grey level


@pytest.fixture(scope="module")
def video_path(tmp_path_factory) -> Path:
    import imageio_ffmpeg

    path = tmp_path_factory.mktemp("video") / "count.mp4"
    writer = imageio_ffmpeg.write_frames(str(path), (64, 48), fps=12, quality=10, ffmpeg_log_level="error")
    writer.send(None)
    for i in range(12):
        writer.send(np.full((48, 64, 3), _grey(i), np.uint8))
    writer.close()
    return path


def _decoded_index(view: dict) -> int:
    grey = (view["img"].mean() * 0.5 + 0.5) * 255
    return int(np.argmin([abs(grey - _grey(i)) for i in range(12)]))


@pytest.mark.parametrize(
    "kwargs, picked",
    [
        (dict(num_frames=4), [0, 4, 7, 11]),  # linspace(0, 11, 4) = 0, 3.67, 7.33, 11
        (dict(fps=4), [0, 3, 6, 9]),
        (dict(num_frames=50), list(range(12))),
        (dict(), list(range(12))),
    ],
)
def test_video_frame_sampling(video_path, kwargs, picked):
    views = images.load_video_frames(video_path, size=64, **kwargs)
    assert [v["frame_index"] for v in views] == picked
    assert [_decoded_index(v) for v in views] == picked  # content matches the index
    assert views[0]["true_shape"].tolist() == [[48, 64]]
    assert views[0]["name"].endswith("count.mp4#0")


def test_select_frame_indices_closed_form():
    assert images.select_frame_indices(100, 30.0, num_frames=3) == [0, 50, 99]  # 49.5 -> 50 (half to even)
    assert images.select_frame_indices(10, 29.97, fps=29.97 / 3) == [0, 3, 6, 9]
    assert images.select_frame_indices(5, 10.0, fps=100.0) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="not both"):
        images.select_frame_indices(10, 30.0, num_frames=2, fps=1.0)
    with pytest.raises(ValueError, match="positive"):
        images.select_frame_indices(10, 30.0, num_frames=0)


def test_video_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        images.load_video_frames(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 20)
    with pytest.raises(ValueError, match="junk.mp4"):
        images.load_video_frames(junk)


# ----------------------------------------------------------------------------
# Geometry of the resize and crop; hostile images; loading in parallel.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("width, height, size", [(640, 480, 512), (480, 640, 224), (854, 480, 512), (97, 61, 64)])
def test_geometry_maps_view_pixels_back_to_the_original_image(width, height, size):
    """A view pixel mapped back by Geometry.to_original lands where the resized-and-cropped ramp images (value =
    original column / row) say it came from; intrinsics mapped back project points onto the mapped pixels."""
    cols = np.broadcast_to(np.arange(width, dtype=np.float64)[None], (height, width))
    rows = np.broadcast_to(np.arange(height, dtype=np.float64)[:, None], (height, width))
    plan = images.plan_resize_and_crop(width, height, size)
    # A linear ramp is preserved by the resampling filters away from the borders, so the value at a view pixel
    # is the original coordinate of that pixel.
    resized_cols = np.asarray(PIL.Image.fromarray(cols.astype(np.float32), "F").resize(plan.resized,
                                                                                      PIL.Image.Resampling.BILINEAR))
    resized_rows = np.asarray(PIL.Image.fromarray(rows.astype(np.float32), "F").resize(plan.resized,
                                                                                      PIL.Image.Resampling.BILINEAR))
    left, top, right, bottom = plan.box
    view_cols, view_rows = resized_cols[top:bottom, left:right], resized_rows[top:bottom, left:right]
    h, w = view_cols.shape
    uv = np.stack(np.meshgrid(np.arange(w), np.arange(h)), -1)[2:-2, 2:-2]  # (h-4, w-4, 2) away from borders
    back = plan.to_original(uv)
    # PIL's filter windows are clipped to whole source pixels: a ramp comes back within 0.1 view pixel (a half-pixel
    # slip or a wrong scale would not)
    tolerance = 0.1 / plan.scale.min()
    np.testing.assert_allclose(back[..., 0], view_cols[2:-2, 2:-2], atol=tolerance)
    np.testing.assert_allclose(back[..., 1], view_rows[2:-2, 2:-2], atol=tolerance)
    k = np.array([[100.0, 0, w / 2 - 0.5], [0, 100.0, h / 2 - 0.5], [0, 0, 1]])
    k_original = plan.intrinsics_to_original(k)
    point = np.array([0.3, -0.2, 2.0])  # a camera-frame point projects onto corresponding pixels
    np.testing.assert_allclose(plan.to_original((k @ point)[:2] / point[2]), (k_original @ point)[:2] / point[2])


def test_tiny_and_huge_images_are_bad_images(tmp_path):
    PIL.Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    with pytest.raises(ValueError, match="too small"):
        images.load_image(tmp_path / "dot.png", size=128)
    bomb = tmp_path / "bomb.png"  # a valid PNG header claiming 100000 x 100000 pixels
    _png_header(bomb, 100_000, 100_000)
    with pytest.raises(ValueError, match="bomb.png"):
        images.load_image(bomb, size=128)


def _png_header(path: Path, width: int, height: int) -> None:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))


def test_corrupt_video_error_is_one_line_without_ffmpeg_banner(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 255, 4000, np.uint8).tobytes())
    with pytest.raises(ValueError) as err:
        images.load_video_frames(junk)
    message = str(err.value)
    assert "junk.mp4" in message and "\n" not in message and "ffmpeg version" not in message


def test_load_all_keeps_input_order_and_raises_at_the_item():
    import time

    order = list(images.load_all(lambda x: (time.sleep(0.01 * (5 - x)), x)[1], range(5)))
    assert order == list(range(5))

    def fail_on_two(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return x

    results = images.load_all(fail_on_two, [0, 1, 2, 3])
    assert [next(results), next(results)] == [0, 1]
    with pytest.raises(ValueError, match="two"):
        next(results)
