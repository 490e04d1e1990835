"""Multiresolution hash encoding (Mueller et al. 2022, "instant-ngp").

PAPER.md "Official field ... defaults": 16 levels, 2 features per level, hash
table 2^19, base resolution 16, per-level scale 1.4472692 (finest 4096).

Layout (static, computed from ``HashGridSpec``):

* level ``l`` has resolution ``R_l = floor(base * scale^l)`` cells per axis and
  ``R_l + 1`` vertices per axis;
* a level is *dense* when its ``(R_l + 1)^3`` vertices fit in the table
  (``<= 2^log2_hashmap_size``): vertex ``(i, j, k)`` lives in row
  ``i + j (R+1) + k (R+1)^2``; otherwise it is *hashed* with the XOR-of-primes
  hash ``(i * 1) ^ (j * 2654435761) ^ (k * 805459861) mod 2^log2_hashmap_size``;
* all levels share one flat parameter table ``params["table"]`` of shape
  ``[total_rows, F]``; level ``l`` owns rows ``[offset_l, offset_l + rows_l)``.

The encoding is a ``jax.custom_vjp``: the forward gathers the 8 corners of
every level; the backward computes the table gradient with far fewer scatter
updates than autodiff (see ``_table_grad``) and the gradient w.r.t. the
positions (needed for analytic normals) from the trilinear weight derivatives.
The backward is itself written in differentiable jnp, so second derivatives
(e.g. a loss on analytic normals) work.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Params = dict[str, jax.Array]

# instant-ngp / tiny-cuda-nn "coherent prime hash" primes.
HASH_PRIMES = (1, 2654435761, 805459861)
# Relative slack so that e.g. 16 * 1.4472692**15 = 4095.998 counts as 4096.
_RES_RTOL = 1e-6


class HashGridConfigError(ValueError):
  """A hash-grid setting is invalid."""


@dataclasses.dataclass(frozen=True)
class HashGridSpec:
  """Static hash-grid settings (hashable; safe as a jit static argument)."""
  n_levels: int = 16
  n_features_per_level: int = 2
  log2_hashmap_size: int = 19
  base_resolution: int = 16
  per_level_scale: float = 1.4472692

  def __post_init__(self):
    for name in ("n_levels", "n_features_per_level", "base_resolution"):
      v = getattr(self, name)
      if not isinstance(v, (int, np.integer)) or v < 1:
        raise HashGridConfigError(
            f"HashGridSpec.{name} = {v!r}: must be a positive integer "
            f"(set config.field.{name}).")
    if not 8 <= int(self.log2_hashmap_size) <= 24:
      raise HashGridConfigError(
          f"HashGridSpec.log2_hashmap_size = {self.log2_hashmap_size!r}: must "
          "be an integer in [8, 24] (set config.field.log2_hashmap_size).")
    if not float(self.per_level_scale) >= 1.0:
      raise HashGridConfigError(
          f"HashGridSpec.per_level_scale = {self.per_level_scale!r}: must be "
          ">= 1 (set config.field.per_level_scale).")

  @classmethod
  def from_config(cls, field_cfg: Any) -> "HashGridSpec":
    """Builds the spec from ``config.field`` (configs/hoi.py)."""
    return cls(
        n_levels=int(field_cfg.n_levels),
        n_features_per_level=int(field_cfg.n_features_per_level),
        log2_hashmap_size=int(field_cfg.log2_hashmap_size),
        base_resolution=int(field_cfg.base_resolution),
        per_level_scale=float(field_cfg.per_level_scale))

  @property
  def hashmap_size(self) -> int:
    return 1 << int(self.log2_hashmap_size)

  @property
  def output_dim(self) -> int:
    """Width of ``hash_encode``'s output: n_levels * n_features_per_level."""
    return self.n_levels * self.n_features_per_level

  @property
  def resolutions(self) -> tuple[int, ...]:
    """Cells per axis of every level, ``floor(base * scale^l)``."""
    return tuple(
        int(math.floor(self.base_resolution * self.per_level_scale**l
                       * (1.0 + _RES_RTOL)))
        for l in range(self.n_levels))

  @property
  def dense(self) -> tuple[bool, ...]:
    """Whether each level is directly indexed ((R+1)^3 <= table size)."""
    return tuple((r + 1)**3 <= self.hashmap_size for r in self.resolutions)

  @property
  def level_rows(self) -> tuple[int, ...]:
    """Parameter rows of every level: (R+1)^3 if dense, else the table size."""
    return tuple((r + 1)**3 if d else self.hashmap_size
                 for r, d in zip(self.resolutions, self.dense))

  @property
  def level_offsets(self) -> tuple[int, ...]:
    """First row of every level inside the flat table."""
    return tuple(int(o) for o in np.cumsum((0,) + self.level_rows[:-1]))

  @property
  def total_rows(self) -> int:
    return int(sum(self.level_rows))


def finest_resolution(spec: HashGridSpec) -> int:
  """Cells per axis of the finest level (4096 for the official defaults)."""
  return spec.resolutions[-1]


def init_hashgrid(key: jax.Array, spec: HashGridSpec) -> Params:
  """Initialises the tables ~ U(-1e-4, 1e-4) (instant-ngp).

  Returns:
    ``{"table": [spec.total_rows, spec.n_features_per_level] float32}``.
  """
  table = jax.random.uniform(
      key, (spec.total_rows, spec.n_features_per_level), jnp.float32,
      minval=-1e-4, maxval=1e-4)
  return {"table": table}


# --------------------------------------------------------------------------
# Index and weight computation.
# --------------------------------------------------------------------------

def _check_points(x01: jax.Array, spec: HashGridSpec) -> None:
  if x01.ndim != 2 or x01.shape[-1] != 3:
    raise ValueError(
        f"hash_encode expects points of shape [N, 3], got {x01.shape}; "
        "flatten batch dimensions first.")


def _level_cells(x01: jax.Array, res: int) -> tuple[jax.Array, jax.Array]:
  """Cell coordinates and in-cell fractions of one level.

  Args:
    x01: [N, 3] positions; values outside [0, 1] are clamped into the grid.
    res: cells per axis.

  Returns:
    (cell [N, 3] int32 in [0, res - 1], frac [N, 3] float32 in [0, 1]).
  """
  pos = jnp.clip(x01.astype(jnp.float32), 0.0, 1.0) * res
  cell = jnp.clip(jnp.floor(pos), 0, res - 1)
  frac = pos - cell
  return cell.astype(jnp.int32), frac


def _corner_bits() -> np.ndarray:
  """[8, 3] corner offsets; corner c has offset ((c>>0)&1, (c>>1)&1, (c>>2)&1)."""
  c = np.arange(8)
  return np.stack([c & 1, (c >> 1) & 1, (c >> 2) & 1], axis=-1).astype(np.int32)


def _level_corner_rows(cell: jax.Array, res: int, dense: bool,
                       spec: HashGridSpec) -> jax.Array:
  """Table rows (within the level) of the 8 corners of each cell.

  Args:
    cell: [N, 3] int32 cell coordinates.

  Returns:
    [N, 8] int32 rows in [0, level_rows).
  """
  corners = cell[:, None, :] + jnp.asarray(_corner_bits())[None]  # [N, 8, 3]
  if dense:
    stride = res + 1
    return corners[..., 0] + corners[..., 1] * stride + corners[..., 2] * stride**2
  c = corners.astype(jnp.uint32)
  h = (c[..., 0] * jnp.uint32(HASH_PRIMES[0])) ^ (
      c[..., 1] * jnp.uint32(HASH_PRIMES[1])) ^ (
          c[..., 2] * jnp.uint32(HASH_PRIMES[2]))
  return (h & jnp.uint32(spec.hashmap_size - 1)).astype(jnp.int32)


def _trilinear_weights(frac: jax.Array) -> jax.Array:
  """Trilinear corner weights prod_d (b_d ? f_d : 1 - f_d).

  Args:
    frac: [N, 3] in-cell fractions.

  Returns:
    [N, 8] weights (corner order of ``_corner_bits``), summing to 1.
  """
  bits = jnp.asarray(_corner_bits(), frac.dtype)  # [8, 3]
  per_axis = jnp.where(bits[None] > 0, frac[:, None, :], 1.0 - frac[:, None, :])
  return jnp.prod(per_axis, axis=-1)


def _trilinear_weight_grads(frac: jax.Array) -> jax.Array:
  """d weight_c / d frac_d of the trilinear weights.

  Args:
    frac: [N, 3].

  Returns:
    [N, 8, 3].
  """
  bits = jnp.asarray(_corner_bits(), frac.dtype)  # [8, 3]
  per_axis = jnp.where(bits[None] > 0, frac[:, None, :], 1.0 - frac[:, None, :])
  sign = 2.0 * bits - 1.0  # d(per_axis_d)/d frac_d
  out = []
  for d in range(3):
    others = [per_axis[..., e] for e in range(3) if e != d]
    out.append(sign[None, :, d] * others[0] * others[1])
  return jnp.stack(out, axis=-1)


def corner_rows_and_weights(x01: jax.Array, spec: HashGridSpec
                            ) -> tuple[jax.Array, jax.Array]:
  """Global table rows and trilinear weights of all corners of all levels.

  Args:
    x01: [N, 3] positions in [0, 1] (clamped).
    spec: the grid.

  Returns:
    (rows [L, N, 8] int32 into the flat table, weights [L, N, 8] float32).
    Level-major order keeps one level's table hot in cache at a time.
  """
  rows, weights = [], []
  for res, dense, off in zip(spec.resolutions, spec.dense, spec.level_offsets):
    cell, frac = _level_cells(x01, res)
    rows.append(_level_corner_rows(cell, res, dense, spec) + off)
    weights.append(_trilinear_weights(frac))
  return jnp.stack(rows), jnp.stack(weights)


# --------------------------------------------------------------------------
# Forward / backward.
# --------------------------------------------------------------------------

def _gather(table: jax.Array, rows: jax.Array) -> jax.Array:
  """table[rows] without bounds handling (rows are in range by construction).

  Args:
    table: [R, F]; rows: int32 [...].

  Returns:
    [..., F].
  """
  return table.at[rows].get(mode="promise_in_bounds")


def _encode_reference(table: jax.Array, x01: jax.Array, spec: HashGridSpec
                      ) -> jax.Array:
  """The encoding as plain jnp (autodiff would scatter-add); [N, L*F].

  Written per level so that XLA fuses index computation, gather and the
  weighted sum into one loop per level (nothing [N, 8]-sized materialises).
  """
  feats = []
  for res, dense, off in zip(spec.resolutions, spec.dense, spec.level_offsets):
    cell, frac = _level_cells(x01, res)
    rows = _level_corner_rows(cell, res, dense, spec) + off  # [N, 8]
    w = _trilinear_weights(frac)  # [N, 8]
    feats.append(jnp.sum(w[..., None] * _gather(table, rows), axis=1))
  return jnp.concatenate(feats, axis=-1)


def _table_grad(g: jax.Array, rows: jax.Array, weights: jax.Array,
                spec: HashGridSpec) -> jax.Array:
  """Gradient of sum(g * encode) w.r.t. the flat table.

  Args:
    g: [N, L, F] output cotangent.
    rows, weights: [L, N, 8] from ``corner_rows_and_weights``.

  Returns:
    [total_rows, F].
  """
  upd = weights[..., None] * jnp.transpose(g, (1, 0, 2))[:, :, None, :]
  return jnp.zeros((spec.total_rows, spec.n_features_per_level), g.dtype).at[
      rows].add(upd, mode="promise_in_bounds")


def _position_grad(table: jax.Array, g: jax.Array, x01: jax.Array,
                   spec: HashGridSpec) -> jax.Array:
  """Gradient of sum(g * encode) w.r.t. the (clamped) positions.

  Args:
    table: [total_rows, F]; g: [N, L, F]; x01: [N, 3].

  Returns:
    [N, 3] (zero where a coordinate was clamped).
  """
  out = jnp.zeros(x01.shape, jnp.float32)
  for l, (res, dense, off) in enumerate(
      zip(spec.resolutions, spec.dense, spec.level_offsets)):
    cell, frac = _level_cells(x01, res)
    rows = _level_corner_rows(cell, res, dense, spec) + off
    vals = _gather(table, rows)  # [N, 8, F]
    gv = jnp.einsum("ncf,nf->nc", vals, g[:, l])
    out = out + res * jnp.einsum("nc,ncd->nd", gv, _trilinear_weight_grads(frac))
  inside = (x01 >= 0.0) & (x01 <= 1.0)
  return jnp.where(inside, out, 0.0).astype(x01.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _encode(table: jax.Array, x01: jax.Array, spec: HashGridSpec) -> jax.Array:
  return _encode_reference(table, x01, spec)


def _encode_fwd(table, x01, spec):
  return _encode_reference(table, x01, spec), (table, x01)


def _encode_bwd(spec, res, g):
  table, x01 = res
  n = x01.shape[0]
  g = g.reshape(n, spec.n_levels, spec.n_features_per_level).astype(jnp.float32)
  rows, weights = corner_rows_and_weights(x01, spec)
  return (_table_grad(g, rows, weights, spec).astype(table.dtype),
          _position_grad(table, g, x01, spec))


_encode.defvjp(_encode_fwd, _encode_bwd)


def hash_encode(params: Params, x01: jax.Array, spec: HashGridSpec
                ) -> jax.Array:
  """Multiresolution hash encoding of points.

  Args:
    params: ``{"table": [spec.total_rows, F]}`` from ``init_hashgrid``.
    x01: [N, 3] positions in [0, 1]^3 (scene box normalised); points outside
      are clamped into the grid (zero gradient w.r.t. clamped coordinates).
    spec: the grid.

  Returns:
    [N, spec.n_levels * spec.n_features_per_level] float32 features, level-major
    (level l occupies columns [l F, (l + 1) F)).
  """
  _check_points(x01, spec)
  table = params["table"]
  if table.shape != (spec.total_rows, spec.n_features_per_level):
    raise ValueError(
        f"hash-grid table has shape {table.shape}, but the spec needs "
        f"{(spec.total_rows, spec.n_features_per_level)}; re-run init_hashgrid "
        "with the same config.field settings.")
  return _encode(table, x01, spec)
