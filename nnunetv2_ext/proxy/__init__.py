"""Offline proxy benchmark: BraTS-like data built from real anatomy, and the experiment run on it."""
