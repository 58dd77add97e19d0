"""Stability hooks: spike skip and rollback, z-loss, QK-norm, embedding-gradient shrink, NaN guard."""
