"""`fast3r-jax demo`: the Gradio app served on a free port, called through its `reconstruct` API endpoint."""

import glob
import json
import os
import socket
import time
import urllib.request
import zipfile

import pytest
import trimesh
from gradio_client import Client, handle_file

from fast3r_jax import cli
from fast3r_jax.app import demo
from tests.helpers.small_model import with_image_size

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIEWS = sorted(glob.glob(os.path.join(ROOT, "examples", "synthetic_room", "*.png")))[:4]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served():
    app = demo.Demo(max_views=3)
    port = free_port()
    blocks = app.launch(port=port, block=False)
    yield app, f"http://127.0.0.1:{port}/"
    blocks.close()


def test_page_is_served_with_local_fonts_only(served):
    _, url = served
    page = urllib.request.urlopen(url, timeout=30).read().decode()
    assert "Fast3R-JAX" in page and "fonts.googleapis.com" not in page
    theme = urllib.request.urlopen(url + "theme.css", timeout=30).read().decode()
    assert "system-ui" in theme and "googleapis" not in theme


def test_reconstruct_endpoint_returns_a_glb_with_points_and_the_downloads(served):
    app, url = served
    client = Client(url, verbose=False)
    glb, files, timings = client.predict(image_files=[handle_file(p) for p in VIEWS[:3]], video=None,
                                         api_name="/reconstruct")
    scene = trimesh.load(glb)
    clouds = [g for g in scene.geometry.values() if isinstance(g, trimesh.PointCloud)]
    assert len(clouds) == 1 and len(clouds[0].vertices) > 1000
    names = sorted(os.path.basename(f) for f in files)
    assert names == ["cameras.json", "colmap.zip", "points.ply", "scene.glb"]
    cameras = json.loads(open(next(f for f in files if f.endswith(".json"))).read())["cameras"]
    assert len(cameras) == 3
    with zipfile.ZipFile(next(f for f in files if f.endswith(".zip"))) as z:
        assert sorted(z.namelist()) == ["cameras.bin", "images.bin", "points3D.bin"]  # the binary model
    for stage in ("checkpoint", "images", "inference", "cameras", "export"):
        assert f"| {stage} |" in timings
    results = list(app.root.iterdir())
    assert len(results) == 1  # one result folder per request, under the app's own root

    old = time.time() - demo.RESULT_TTL_S - 60
    os.utime(results[0], (old, old))
    start = time.perf_counter()
    client.predict(image_files=[handle_file(p) for p in VIEWS[1:]], video=None, api_name="/reconstruct")
    assert time.perf_counter() - start < 60  # the model stays loaded
    assert not results[0].exists() and len(list(app.root.iterdir())) == 1  # the expired result was deleted


def test_default_size_is_the_checkpoints_training_size(served, tmp_path):
    assert served[0].default_size == 128  # the built-in model's config.json: image_size
    copy = with_image_size(served[0].checkpoint, tmp_path / "ckpt", 64)
    assert demo.Demo(str(copy)).default_size == 64


def test_too_many_views_get_a_clear_message(served):
    _, url = served
    with pytest.raises(Exception, match="4 images, but this demo takes at most 3"):
        Client(url, verbose=False).predict(image_files=[handle_file(p) for p in VIEWS], video=None,
                                           api_name="/reconstruct")


def test_uploads_above_the_size_limit_are_refused_with_a_clear_message():
    port = free_port()
    blocks = demo.Demo(max_upload_mb=0.01).launch(port=port, block=False)
    try:
        with pytest.raises(ValueError, match="exceeds the maximum file size of 10000 bytes"):
            Client(f"http://127.0.0.1:{port}/", verbose=False).predict(
                image_files=[handle_file(VIEWS[0])], video=None, api_name="/reconstruct")
    finally:
        blocks.close()


def test_demo_command_names_a_bad_checkpoint(tmp_path, capsys):
    assert cli.main(["demo", "--checkpoint", str(tmp_path / "missing")]) == 2
    assert "checkpoint folder not found" in capsys.readouterr().err
