"""TensorBoard event files written with the `tensorboard` package alone (no TensorFlow, no torch)."""

from __future__ import annotations

import io
import os
import time

import numpy as np
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class SummaryWriter:
    """Scalars and images for one run directory."""

    def __init__(self, logdir: str | os.PathLike):
        self._writer = EventFileWriter(str(logdir))

    def _write(self, step: int, value: summary_pb2.Summary.Value) -> None:
        event = event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=[value]))
        self._writer.add_event(event)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._write(step, summary_pb2.Summary.Value(tag=tag, simple_value=float(value)))

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.scalar(tag, value, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """image: (H, W) or (H, W, 3) uint8."""
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"image must be (H, W) or (H, W, 3) uint8, got {image.shape} {image.dtype}")
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        channels = 1 if image.ndim == 2 else image.shape[2]
        encoded = summary_pb2.Summary.Image(height=image.shape[0], width=image.shape[1], colorspace=channels,
                                            encoded_image_string=buf.getvalue())
        self._write(step, summary_pb2.Summary.Value(tag=tag, image=encoded))

    def text(self, tag: str, text: str, step: int = 0) -> None:
        from tensorboard.plugins.text.summary_v2 import text_pb  # noqa: PLC0415 (optional plugin)

        for value in text_pb(tag, text).value:
            self._write(step, value)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def normalise_to_uint8(x: np.ndarray) -> np.ndarray:
    """Maps a float map to 0..255 between its 1st and 99th percentile (for depth / confidence images)."""
    lo, hi = np.percentile(x, [1, 99])
    return (np.clip((x - lo) / max(hi - lo, 1e-12), 0, 1) * 255).astype(np.uint8)
