"""interfusion_jax: text -> 3D human-object interaction (InterFusion, ECCV 2024) in JAX."""

from interfusion_jax import accel as _accel

# Before anything can start a jax backend: XLA reads XLA_FLAGS only then.
_accel.apply_xla_workarounds()

__version__ = "0.1.0"
