"""Files in and out: images and video frames in; point clouds, cameras, scenes, maps and previews out."""
