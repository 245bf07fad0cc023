"""Data only: configs/presets.yaml, read through importlib.resources (this file just makes it a package)."""
