"""The leaf every layer may import: errors a user can act on and derived seeds. It imports no other package of
the project, so nothing in it can pull a layer upwards (tests/test_layers.py keeps that true)."""
