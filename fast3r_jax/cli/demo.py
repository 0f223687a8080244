"""`fast3r-jax demo [--checkpoint DIR] [--port N] [--host 127.0.0.1]`: the web app (fast3r_jax.app.demo)."""

from __future__ import annotations

import argparse

from fast3r_jax.app import demo
from fast3r_jax.cli import positive_float, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Serves a Gradio app that reconstructs uploaded images or a video; open the printed address in a "
                     "browser. Also an API endpoint 'reconstruct'.")
    p.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the built-in checkpoint)")
    p.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--max-views", type=positive_int, default=demo.DEFAULT_MAX_VIEWS,
                   help=f"most views per request (default {demo.DEFAULT_MAX_VIEWS})")
    p.add_argument("--max-upload-mb", type=positive_float, default=demo.DEFAULT_MAX_UPLOAD_MB,
                   help=f"largest uploaded file in MB (default {demo.DEFAULT_MAX_UPLOAD_MB})")


def run(args: argparse.Namespace) -> int:
    """Serves the demo until interrupted."""
    app = demo.Demo(args.checkpoint, args.max_views, args.max_upload_mb)
    print(f"demo running: open http://{args.host}:{args.port} (Ctrl+C stops it)", flush=True)
    app.launch(args.host, args.port)
    return 0
