"""Runs: specs and ids, training with checkpoints, evaluation, planning and launching."""
