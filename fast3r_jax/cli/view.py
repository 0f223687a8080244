"""`fast3r-jax view OUT [--port N] [--host 127.0.0.1] [--max-points N]`: the interactive viewer (fast3r_jax.app.viewer)
of a reconstruction folder."""

from __future__ import annotations

import argparse
import time

from fast3r_jax.app import viewer
from fast3r_jax.cli import note, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Serves an interactive 3D viewer (viser) of a folder written by fast3r-jax reconstruct; open the "
                     "printed address in a browser.")
    p.add_argument("folder", metavar="OUT", help="folder written by fast3r-jax reconstruct")
    p.add_argument("--port", type=int, default=8080, help="port to serve on (default 8080)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--max-points", type=positive_int, default=viewer.DEFAULT_MAX_POINTS,
                   help=f"most points drawn at once, the most confident first (default {viewer.DEFAULT_MAX_POINTS}); "
                        "the viewer's 'Full resolution' box lifts it")


def run(args: argparse.Namespace) -> int:
    """Serves the viewer until interrupted."""
    scene = viewer.load_scene(args.folder)
    if not scene.per_view:
        note(f"{args.folder} has no pointmaps.npz: showing points.ply (global head only, no per-view filtering)")
    server = viewer.Viewer(scene, args.host, args.port, args.max_points)
    print(f"viewer of {args.folder} running: open {server.address} (Ctrl+C stops it)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
    return 0
