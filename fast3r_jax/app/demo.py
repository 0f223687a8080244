"""`fast3r-jax demo`: a Gradio web app that reconstructs uploaded images or a video and shows the result.

    fast3r-jax demo [--checkpoint DIR] [--port 7860] [--host 127.0.0.1]

Upload images or a video (frames sampled by count or by fps), choose the image size, pose solver and dtype, run,
and get the scene as a GLB in the page plus downloads (points.ply, scene.glb, cameras.json, COLMAP zip) and the
time of each stage. The model is loaded and compiled once per process and kept between requests; requests are
queued one at a time. Scripts call the same job through the API endpoint `reconstruct`:

    from gradio_client import Client, handle_file
    glb, files, timings = Client("http://127.0.0.1:7860/").predict(
        image_files=[handle_file("a.png"), handle_file("b.png")], video=None, api_name="/reconstruct")

Safe by default: binds to 127.0.0.1, no share link, no analytics, and the page uses local fonts only.
"""

from __future__ import annotations

import atexit
import os
import pathlib
import shutil
import tempfile
import threading
import time

from fast3r_jax import reconstruct as reconstruct_lib
from fast3r_jax.checkpoint import load_config
from fast3r_jax.io import images

DEFAULT_MAX_VIEWS = 32
DEFAULT_MAX_UPLOAD_MB = 100
RESULT_TTL_S = 3600  # result folders and cached uploads older than this are deleted
SIZES = (128, 224, 256, 384, 512)
FRAME_MODES = ("count", "fps")
THEME_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]  # local fonts: the default theme loads Google Fonts
THEME_MONO_FONTS = ["ui-monospace", "monospace"]

class Demo:
    """The app's settings and its result folders (under one temporary root, pruned by age, removed at exit)."""

    def __init__(self, checkpoint: str | None = None, max_views: int = DEFAULT_MAX_VIEWS,
                 max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB) -> None:
        _no_telemetry()
        self.checkpoint, self.is_default = reconstruct_lib.resolve_checkpoint(checkpoint)
        self.default_size = load_config(self.checkpoint).image_size  # the size the model was trained at
        self.max_views = max_views
        self.max_upload_mb = max_upload_mb
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="fast3r-demo-"))
        self._reconstructor: reconstruct_lib.Reconstructor | None = None  # loaded on the first request, then kept
        self._lock = threading.Lock()
        atexit.register(shutil.rmtree, self.root, True)

    def _prune(self) -> None:
        """Deletes result folders older than RESULT_TTL_S."""
        for folder in self.root.iterdir():
            if time.time() - folder.stat().st_mtime > RESULT_TTL_S:
                shutil.rmtree(folder, ignore_errors=True)

    def run(self, image_files: list[str] | None, video: str | None = None, frame_mode: str = "count",
            frames: float = 16, size: int | None = None, pose_solver: str = "pnp", dtype: str | None = None,
            progress=None) -> tuple[str, list[str], str]:
        """(GLB path, download paths, timings as Markdown) of a reconstruction of the uploads."""
        import gradio as gr

        inputs = list(image_files or []) + ([video] if video else [])
        if not inputs:
            raise gr.Error("upload images or a video first")
        unknown = [os.path.basename(p) for p in inputs
                   if not p.lower().endswith(images.IMAGE_EXTENSIONS + images.VIDEO_EXTENSIONS)]
        if unknown:
            raise gr.Error(f"not an image or video: {', '.join(unknown)}")
        if len(image_files or []) > self.max_views:
            raise gr.Error(f"{len(image_files)} images, but this demo takes at most {self.max_views}")
        count = max(1, round(frames)) if frame_mode == "count" else None
        if video and count and count > self.max_views:
            raise gr.Error(f"{count} video frames, but this demo takes at most {self.max_views}")
        self._prune()
        out = pathlib.Path(tempfile.mkdtemp(dir=self.root)) / "result"
        config = reconstruct_lib.ReconstructConfig(
            size=int(size or self.default_size), dtype=dtype or reconstruct_lib.default_dtype(),
            pose_solver=pose_solver, max_views=self.max_views, video_frames=count,
            video_fps=float(frames) if frame_mode == "fps" else None,
            outputs=reconstruct_lib.DEFAULT_OUTPUTS + ("pointmaps",))
        try:
            with self._lock:  # one reconstruction at a time per model; Gradio's queue orders the requests
                if self._reconstructor is None:
                    if progress:
                        progress(0.0, desc="loading the model")
                    self._reconstructor = reconstruct_lib.Reconstructor(self.checkpoint)
                if progress:
                    progress(0.2, desc="reconstructing")
                summary = self._reconstructor(inputs, out, config, progress=False, notify=lambda _: None)
        except Exception as err:
            shutil.rmtree(out.parent, ignore_errors=True)
            if isinstance(err, reconstruct_lib.ReconstructError):
                raise gr.Error(str(err)) from err
            raise
        timings = {k: v for k, v in summary["timings"].items() if isinstance(v, float)}
        colmap = shutil.make_archive(str(out / "colmap"), "zip", out / "colmap")
        files = [str(out / "points.ply"), str(out / "scene.glb"), str(out / "cameras.json"), colmap]
        table = "| stage | seconds |\n|---|---|\n" + "".join(f"| {k[:-2]} | {v:.2f} |\n" for k, v in timings.items())
        return str(out / "scene.glb"), files, table

    def blocks(self):
        """The Gradio Blocks of the app."""
        import gradio as gr

        def run(image_files, video, frame_mode, frames, size, pose_solver, dtype, progress=gr.Progress()):
            return self.run(image_files, video, frame_mode, frames, size, pose_solver, dtype, progress)

        with gr.Blocks(title="Fast3R-JAX", analytics_enabled=False, delete_cache=(RESULT_TTL_S, RESULT_TTL_S)) as app:
            gr.Markdown(f"# Fast3R-JAX\nReconstruct a scene from images or a video. Checkpoint: `{self.checkpoint}`; "
                        f"at most {self.max_views} views and {self.max_upload_mb:g} MB per file.")
            with gr.Row():
                with gr.Column():
                    image_files = gr.File(label="Images", file_count="multiple", file_types=["image"])
                    video = gr.Video(label="Video", sources=["upload"])
                    with gr.Row():
                        frame_mode = gr.Radio(FRAME_MODES, value="count", label="Sample video frames by")
                        frames = gr.Number(16, label="Frames (count) or frames per second (fps)", minimum=0.01)
                    size = gr.Dropdown(sorted({*SIZES, self.default_size}), value=self.default_size,
                                       label="Image size (long side)")
                    pose_solver = gr.Radio(list(reconstruct_lib.POSE_SOLVERS), value="pnp", label="Pose solver")
                    dtype = gr.Radio(["float32", "bfloat16"], value=reconstruct_lib.default_dtype(), label="dtype")
                    button = gr.Button("Reconstruct", variant="primary")
                with gr.Column():
                    model = gr.Model3D(label="Scene (points and cameras)", clear_color=(1.0, 1.0, 1.0, 1.0))
                    downloads = gr.File(label="Downloads", file_count="multiple")
                    timings = gr.Markdown()
            button.click(run, [image_files, video, frame_mode, frames, size, pose_solver, dtype],
                         [model, downloads, timings], api_name="reconstruct")
        return app.queue(default_concurrency_limit=1)

    def launch(self, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
        """Starts the server (no share link, local fonts only); returns the running Blocks when block is False."""
        import gradio as gr

        theme = gr.themes.Default(font=THEME_FONTS, font_mono=THEME_MONO_FONTS)
        app = self.blocks()
        app.launch(server_name=host, server_port=port, share=False, theme=theme,
                   max_file_size=int(self.max_upload_mb * 1e6),
                   prevent_thread_lock=not block, quiet=True, allowed_paths=[str(self.root)])
        return app


def _no_telemetry() -> None:
    """Switches off Gradio's analytics and Hugging Face Hub calls (read at use, so set before the app starts)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
