"""Evaluation: pose and reconstruction protocols over datasets, and their plots."""
