"""Data only: profiles/*.yaml and cluster.sh, read through importlib.resources (this file just makes it a package)."""
