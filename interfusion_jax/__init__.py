"""interfusion_jax: text -> 3D human-object interaction (InterFusion, ECCV 2024) in JAX."""

__version__ = "0.1.0"
