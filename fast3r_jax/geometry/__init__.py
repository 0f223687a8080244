"""Geometry on pointmaps and poses: rigid and similarity transforms, cameras from pointmaps, pose and
reconstruction metrics."""
