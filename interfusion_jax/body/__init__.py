"""Anchor body: SMPL/SMPL-X loading, LBS in JAX, anchor occupancy/distance grids."""
