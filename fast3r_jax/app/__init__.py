"""Interactive front ends: `fast3r-jax view` (viewer.py, a viser 3D viewer of a reconstruction folder) and
`fast3r-jax demo` (demo.py, a Gradio web app). Both need the `demo` extra: `pip install -e '.[demo]'`."""
