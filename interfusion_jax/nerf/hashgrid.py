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
every level; the backward computes the table gradient as one scatter per
block of levels (``_splat``) and the gradient w.r.t. the positions (needed
for analytic normals) from the Jacobian of the features, which the forward
rule computes together with them (``_encode_jac``). That is a custom VJP
again, so the table gradient of a loss on features AND analytic normals is
one splat per block for both, never autodiff's scatter per corner.
``HashGridSpec.table_grad`` picks how the dense levels' share is formed
(scatter, sorted segment sum, one-hot matmul).
"""
from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import importlib.resources
import math
import os
import re
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

Params = dict[str, jax.Array]

# instant-ngp / tiny-cuda-nn "coherent prime hash" primes.
HASH_PRIMES = (1, 2654435761, 805459861)
# Relative slack so that e.g. 16 * 1.4472692**15 = 4095.998 counts as 4096.
_RES_RTOL = 1e-6


BACKENDS = ("jax", "ffi", "auto")
# How the dense levels' table gradient is formed (the hashed levels always
# scatter): "scatter" (one scatter-add), "sorted_segment_sum" (sort + segmented
# scan, no scatter), "one_hot_matmul" (separable one-hot matmuls for dense
# levels of at most ONE_HOT_MAX_ROWS rows, sorted segment sum for the rest).
TABLE_GRADS = ("scatter", "sorted_segment_sum", "one_hot_matmul")


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
  # "auto" (default): the C++ jax.ffi kernel on CPU when it builds, else pure
  # JAX; "jax": pure JAX; "ffi": the C++ kernel (error if it cannot be built).
  backend: str = "auto"
  # How the jnp path forms the dense levels' table gradient (TABLE_GRADS);
  # all are equal to float32 rounding. Ignored where the C++ kernel runs.
  table_grad: str = "scatter"

  def __post_init__(self):
    if self.backend not in BACKENDS:
      raise HashGridConfigError(
          f"HashGridSpec.backend = {self.backend!r}: choose one of "
          f"{list(BACKENDS)} (config.field.hashgrid_backend).")
    if self.table_grad not in TABLE_GRADS:
      raise HashGridConfigError(
          f"HashGridSpec.table_grad = {self.table_grad!r}: choose one of "
          f"{list(TABLE_GRADS)} (config.field.hashgrid_table_grad).")
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
#
# Every pass runs level by level: a ``lax.scan`` over the levels of each
# block (the dense levels, the hashed levels) whose body handles one level's
# N points. One level's rows are gathered (or scattered) together, so the
# working set is one level's table (4 MB at the defaults), not all of them
# (50 MB); and the program holds one body per block, not one per level (16
# unrolled levels made the training step several times slower to trace and
# compile). The helpers below broadcast: a level's constants are scalars
# inside a scan, or [G, 1, 1] / [G, 1] arrays for a whole block at once.
# --------------------------------------------------------------------------

def _check_points(x01: jax.Array, spec: HashGridSpec) -> None:
  if x01.ndim != 2 or x01.shape[-1] != 3:
    raise ValueError(
        f"hash_encode expects points of shape [N, 3], got {x01.shape}; "
        "flatten batch dimensions first.")


def _level_groups(spec: HashGridSpec) -> tuple[tuple[int, int, bool], ...]:
  """The levels as at most two blocks (start, stop, dense): the dense levels and the
  hashed ones. Resolutions grow with the level, so the dense levels come first."""
  n_dense = sum(spec.dense)
  return tuple(g for g in ((0, n_dense, True), (n_dense, spec.n_levels, False))
               if g[1] > g[0])


def _levels(spec: HashGridSpec, start: int, stop: int, local: bool = False
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Constants of levels ``start .. stop - 1``, each [G]: the resolution R (float32),
  the dense row stride S = R + 1 (int32) and the first row (int32; relative to
  the block's first row when ``local``). The ``xs`` of a scan over the block."""
  res = np.asarray(spec.resolutions[start:stop], np.float32)
  offs = np.asarray(spec.level_offsets[start:stop], np.int64)
  if local:
    offs = offs - spec.level_offsets[start]
  return res, res.astype(np.int32) + 1, offs.astype(np.int32)


def _block_consts(spec: HashGridSpec, start: int, stop: int, local: bool = False
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``_levels`` shaped to broadcast over a whole block: ([G, 1, 1], [G, 1], [G, 1])."""
  res, stride, offs = _levels(spec, start, stop, local)
  return res[:, None, None], stride[:, None], offs[:, None]


def _cells(x01: jax.Array, res) -> tuple[jax.Array, jax.Array]:
  """Cell coordinates and in-cell fractions at resolution ``res``.

  Args:
    x01: [N, 3] positions; values outside [0, 1] are clamped into the grid.
    res: the resolution R: a scalar (one level) or [G, 1, 1] (a block).

  Returns:
    (cell int32 in [0, R - 1], frac float32 in [0, 1]), each [N, 3] or [G, N, 3].
  """
  pos = jnp.clip(x01.astype(jnp.float32), 0.0, 1.0) * res
  cell = jnp.clip(jnp.floor(pos), 0.0, res - 1.0)
  return cell.astype(jnp.int32), pos - cell


def corner_bits(c: int) -> tuple[int, int, int]:
  """Offset (bx, by, bz) of corner c in 0..7: bit d of c is the offset on axis d."""
  return (c & 1, (c >> 1) & 1, (c >> 2) & 1)


def _corner_rows(cell: jax.Array, c: int, spec: HashGridSpec, dense: bool,
                 stride, offset) -> jax.Array:
  """Table rows of corner ``c``: [..., 3] -> [...].

  Dense levels index ``i + j S + k S^2`` (S = ``stride`` = R + 1), hashed ones
  ``(i P0 ^ j P1 ^ k P2) mod T`` in uint32; both plus ``offset`` (the level's
  first row). ``stride`` and ``offset`` broadcast against ``cell[..., 0]``.
  """
  v = cell + np.asarray(corner_bits(c), np.int32)
  if dense:
    rows = v[..., 0] + stride * (v[..., 1] + stride * v[..., 2])
  else:
    u = v.astype(jnp.uint32) * np.asarray(HASH_PRIMES, np.uint32)
    rows = ((u[..., 0] ^ u[..., 1] ^ u[..., 2])
            & np.uint32(spec.hashmap_size - 1)).astype(jnp.int32)
  return rows + offset


def _all_corner_rows(cell: jax.Array, spec: HashGridSpec, dense: bool, stride, offset,
                     axis: int = -1) -> jax.Array:
  """``_corner_rows`` of the 8 corners stacked on ``axis``: [..., 3] -> [..., 8]
  (``axis`` -1) or [8, ...] (``axis`` 0)."""
  return jnp.stack([_corner_rows(cell, c, spec, dense, stride, offset) for c in range(8)],
                   axis)


def _axis_weights(frac: jax.Array, c: int) -> list[jax.Array]:
  """The three 1-D hat weights of corner ``c``: b_d ? f_d : 1 - f_d."""
  return [frac[..., d] if b else 1.0 - frac[..., d] for d, b in enumerate(corner_bits(c))]


def _corner_weight(frac: jax.Array, c: int) -> jax.Array:
  """Trilinear weight of corner ``c``: prod_d (b_d ? f_d : 1 - f_d); [..., 3] -> [...]."""
  w = _axis_weights(frac, c)
  return w[0] * w[1] * w[2]


def _corner_weight_grad(frac: jax.Array, c: int) -> jax.Array:
  """d weight_c / d frac_d of corner ``c``'s trilinear weight: [..., 3] -> [..., 3]."""
  b = corner_bits(c)
  ws = _axis_weights(frac, c)
  per = []
  for d in range(3):
    e1, e2 = [e for e in range(3) if e != d]
    per.append((1.0 if b[d] else -1.0) * ws[e1] * ws[e2])
  return jnp.stack(per, axis=-1)


def _corner_coef(frac: jax.Array, c: int, hs: jax.Array | None) -> jax.Array:
  """Corner ``c``'s coefficient: its weight w_c, or sum_d hs_d dw_c/dfrac_d.

  Args:
    frac: [..., 3]; hs: None, or [..., 3] direction already scaled by R
      (d frac / d x = R inside the grid).

  Returns:
    [...].
  """
  if hs is None:
    return _corner_weight(frac, c)
  b = corner_bits(c)
  ws = _axis_weights(frac, c)
  sh = [hs[..., d] if b[d] else -hs[..., d] for d in range(3)]
  return sh[0] * (ws[1] * ws[2]) + sh[1] * (ws[0] * ws[2]) + sh[2] * (ws[0] * ws[1])


def _inside(x01: jax.Array) -> jax.Array:
  """[N, 3] bool: the coordinate is not clamped (its position gradient is live)."""
  return (x01 >= 0.0) & (x01 <= 1.0)


def _scaled_direction(h: jax.Array | None, x01: jax.Array, res) -> jax.Array | None:
  """R * h, zero on clamped coordinates: [N, 3] -> [N, 3] (scalar ``res``) or
  [G, N, 3] (``res`` [G, 1, 1]); None stays None."""
  if h is None:
    return None
  return jnp.where(_inside(x01), h.astype(jnp.float32), 0.0) * res


def corners(x01: jax.Array, spec: HashGridSpec) -> tuple[jax.Array, jax.Array]:
  """Global table rows and trilinear weights of the 8 corners on every level.

  Corner c's vertex is ``cell + corner_bits(c)``; level l's rows lie in
  ``[level_offsets[l], level_offsets[l] + level_rows[l])``.

  Args:
    x01: [N, 3] positions in [0, 1] (clamped).
    spec: the grid.

  Returns:
    (rows [N, L, 8] int32, weights [N, L, 8] float32 summing to 1 over corners).
  """
  rows, weights = zip(*[_block_corners(x01, spec, *g) for g in _level_groups(spec)])
  return (jnp.transpose(jnp.concatenate(rows, axis=0), (1, 0, 2)),
          jnp.transpose(jnp.concatenate(weights, axis=0), (1, 0, 2)))


def _block_corners(x01: jax.Array, spec: HashGridSpec, start: int, stop: int, dense: bool,
                   h: jax.Array | None = None, local: bool = False
                   ) -> tuple[jax.Array, jax.Array]:
  """Rows and coefficients (``_corner_coef``) of a whole block at once:
  ([G, N, 8] int32, [G, N, 8])."""
  res, stride, offs = _block_consts(spec, start, stop, local)
  cell, frac = _cells(x01, res)
  hs = _scaled_direction(h, x01, res)
  return (_all_corner_rows(cell, spec, dense, stride, offs),
          jnp.stack([_corner_coef(frac, c, hs) for c in range(8)], axis=-1))


# --------------------------------------------------------------------------
# The two linear maps everything is built from, in plain jnp:
#
#   interp(table, x, h)[l, n] = sum_c coef_c(x_n, h_n) table[row_c(x_n, l)]
#   splat(v, x, h)            = its adjoint in the table: row_c += coef_c v[l, n]
#
# with coef_c = w_c (the encoding; h None) or sum_d R_l h_d dw_c/dfrac_d (the
# derivative of the encoding along h). Each block of levels is one scan; its
# body does one gather per corner, or one scatter for all corners, for one
# level.
# --------------------------------------------------------------------------

def _gather(table: jax.Array, rows: jax.Array) -> jax.Array:
  """table[rows] without bounds handling (rows are in range by construction).

  Args:
    table: [R, F]; rows: int32 [...].

  Returns:
    [..., F].
  """
  return table.at[rows].get(mode="promise_in_bounds")


def _interp(table: jax.Array, x01: jax.Array, spec: HashGridSpec,
            h: jax.Array | None = None) -> jax.Array:
  """Corner-weighted gathers, level-major: [L, N, F].

  With ``h`` None this is the encoding; with ``h`` [N, 3] it is the
  directional derivative d encode(x + t h) / dt at t = 0 (zero along clamped
  coordinates). Per level, the index computation, the gathers and the sum
  over the corners fuse into one loop (nothing [N, 8] sized materialises).
  """
  feats = []
  for start, stop, dense in _level_groups(spec):
    def level(carry, consts, dense=dense):
      res, stride, offset = consts
      cell, frac = _cells(x01, res)
      hs = _scaled_direction(h, x01, res)
      acc = 0.0
      for c in range(8):
        rows = _corner_rows(cell, c, spec, dense, stride, offset)
        acc = acc + _corner_coef(frac, c, hs)[..., None] * _gather(table, rows)
      return carry, acc                                              # [N, F]
    feats.append(jax.lax.scan(level, None, _levels(spec, start, stop))[1])
  return jnp.concatenate(feats, axis=0)


def _point_major(feats: jax.Array) -> jax.Array:
  """[L, N, F] -> [N, L*F] (level l in columns [l F, (l + 1) F))."""
  return jnp.transpose(feats, (1, 0, 2)).reshape(feats.shape[1], -1)


def _level_major(g: jax.Array, spec: HashGridSpec) -> jax.Array:
  """[N, L*F] -> [L, N, F] float32."""
  g = g.reshape(g.shape[0], spec.n_levels, spec.n_features_per_level)
  return jnp.transpose(g, (1, 0, 2)).astype(jnp.float32)


def _encode_reference(table: jax.Array, x01: jax.Array, spec: HashGridSpec
                      ) -> jax.Array:
  """The encoding as plain jnp (autodiff would scatter-add per corner); [N, L*F]."""
  return _point_major(_interp(table, x01, spec))


# Dense levels with at most this many rows take the one-hot matmul under
# table_grad="one_hot_matmul"; larger dense levels take the sorted segment sum.
ONE_HOT_MAX_ROWS = 1 << 16
# Points per one-hot matmul chunk: about this many floats in a [chunk, S^2] factor.
_ONE_HOT_CHUNK_FLOATS = 1 << 22


def _sorted_segment_sum(rows: jax.Array, upd: jax.Array, n_rows: int) -> jax.Array:
  """sum of upd[m] over rows[m] == r, for r < n_rows, without a scatter.

  Sorts the rows (carrying a permutation), sums runs of equal rows with a
  segmented associative scan and reads each row's total at the end of its
  run, found by binary search: sort, gathers and a scan only.

  Args:
    rows: [M] int32 in [0, n_rows); upd: [M, F].

  Returns:
    [n_rows, F].
  """
  srows, perm = jax.lax.sort((rows, jnp.arange(rows.shape[0], dtype=jnp.int32)),
                             num_keys=1)
  supd = upd[perm]
  first = jnp.concatenate([jnp.ones((1,), bool), srows[1:] != srows[:-1]])

  def combine(a, b):
    return jnp.where(b[1][..., None], b[0], a[0] + b[0]), a[1] | b[1]

  run, _ = jax.lax.associative_scan(combine, (supd, first))
  want = jnp.arange(n_rows, dtype=jnp.int32)
  lo = jnp.searchsorted(srows, want, side="left")
  hi = jnp.searchsorted(srows, want, side="right")
  return jnp.where((hi > lo)[:, None], run[jnp.maximum(hi - 1, 0)], 0.0)


def _one_hot_level(vals: jax.Array, cell: jax.Array, frac: jax.Array,
                   hs: jax.Array | None, res: int) -> jax.Array:
  """Splat of one dense level as one-hot matmuls, no scatter.

  The trilinear weight is a product of 1-D hats, w_c = a_x(i) a_y(j) a_z(k),
  so the level's gradient grid[k, j, i] = sum_n a_z[n, k] a_y[n, j] a_x[n, i]
  v[n] is a matmul [S^2, n] @ [n, S F] over chunks of points (S = R + 1); the
  derivative coefficient sum_d hs_d dw/dfrac_d is three such products.

  Args:
    vals: [N, F]; cell, frac: [N, 3]; hs: None or [N, 3] (R-scaled direction);
    res: the level's resolution R.

  Returns:
    [(R + 1)^3, F] in the dense row order i + j S + k S^2.
  """
  s = res + 1
  n, f = vals.shape
  chunk = max(1, min(n, _ONE_HOT_CHUNK_FLOATS // (s * s)))
  pad = (-n) % chunk
  padded = lambda a: jnp.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1)).reshape(
      (n + pad) // chunk, chunk, *a.shape[1:])
  xs = (padded(vals), padded(cell), padded(frac),
        padded(hs) if hs is not None else None)

  def body(acc, xs):
    v, ce, fr, h = xs
    oh0 = jax.nn.one_hot(ce, s, dtype=jnp.float32)             # [n, 3, S]
    oh1 = jax.nn.one_hot(ce + 1, s, dtype=jnp.float32)
    hat = oh0 * (1.0 - fr)[..., None] + oh1 * fr[..., None]     # [n, 3, S]
    if h is None:
      terms = [(hat[:, 0], hat[:, 1], hat[:, 2])]
    else:
      dhat = (oh1 - oh0) * h[..., None]
      terms = [(dhat[:, 0], hat[:, 1], hat[:, 2]), (hat[:, 0], dhat[:, 1], hat[:, 2]),
               (hat[:, 0], hat[:, 1], dhat[:, 2])]
    for ax, ay, az in terms:
      p = (az[:, :, None] * ay[:, None, :]).reshape(-1, s * s)  # [n, (k, j)]
      q = (ax[:, :, None] * v[:, None, :]).reshape(-1, s * f)   # [n, (i, f)]
      acc = acc + jnp.dot(p.T, q, precision=jax.lax.Precision.HIGHEST)
    return acc, None

  acc, _ = jax.lax.scan(body, jnp.zeros((s * s, s * f), jnp.float32), xs)
  return acc.reshape(s * s * s, f)


def _dense_block_splat(vals: jax.Array, x01: jax.Array, spec: HashGridSpec,
                       start: int, stop: int, h: jax.Array | None) -> jax.Array:
  """Scatter-free splat of the dense block (``spec.table_grad`` != "scatter").

  Returns:
    [sum of the block's level rows, F] (the block's first row is row 0).
  """
  parts = []
  seg_levels = []
  for l in range(start, stop):
    if spec.table_grad == "one_hot_matmul" and spec.level_rows[l] <= ONE_HOT_MAX_ROWS:
      res = np.float32(spec.resolutions[l])
      cell, frac = _cells(x01, res)
      parts.append(_one_hot_level(vals[l], cell, frac, _scaled_direction(h, x01, res),
                                  spec.resolutions[l]))
    else:
      seg_levels.append(l)
  if seg_levels:
    # Levels not taken by the one-hot matmul are the largest ones: a suffix.
    lo, hi = seg_levels[0], seg_levels[-1] + 1
    rows, coef = _block_corners(x01, spec, lo, hi, True, h, local=True)   # [G, N, 8]
    upd = coef[..., None] * vals[lo:hi, :, None, :]
    n_rows = sum(spec.level_rows[lo:hi])
    parts.append(_sorted_segment_sum(rows.reshape(-1), upd.reshape(-1, upd.shape[-1]),
                                     n_rows))
  return jnp.concatenate(parts, axis=0)


def _axis_direction(x01: jax.Array, d: int) -> jax.Array:
  """The unit direction e_d at every point: [N, 3]."""
  return jnp.broadcast_to(np.eye(3, dtype=np.float32)[d], x01.shape)


def _jacobian_jnp(table: jax.Array, x01: jax.Array, spec: HashGridSpec) -> jax.Array:
  """d interp(table, x) / dx, level-major: [L, N, F, 3] (zero along clamped axes).

  Per level the corner rows are gathered once and materialised ([N, 8, F],
  behind an optimisation barrier) before the weight derivatives combine
  them: fused into the [N, F, 3] output, XLA would redo every gather and
  hash once per axis.
  """
  out = []
  for start, stop, dense in _level_groups(spec):
    def level(carry, consts, dense=dense):
      res, stride, offset = consts
      cell, frac = _cells(x01, res)
      rows = _all_corner_rows(cell, spec, dense, stride, offset)
      corner_feats = jax.lax.optimization_barrier(_gather(table, rows))  # [N, 8, F]
      acc = 0.0
      for c in range(8):
        acc = acc + corner_feats[:, c, :, None] * _corner_weight_grad(frac, c)[:, None, :]
      return carry, acc * res                                         # [N, F, 3]
    out.append(jax.lax.scan(level, None, _levels(spec, start, stop))[1])
  return jnp.where(_inside(x01)[None, :, None, :], jnp.concatenate(out, axis=0), 0.0)


def _splat_jnp(vals: jax.Array, x01: jax.Array, spec: HashGridSpec,
               h: jax.Array | None = None, jvals: jax.Array | None = None
               ) -> jax.Array:
  """The table cotangent of ``_interp``: every corner row += coef_c * vals[l, n].

  With ``h`` None: d sum(vals * interp(table, x)) / d table (the encoding's
  table gradient); with ``h`` [N, 3]: d sum(vals * interp(table, x, h)) / d
  table, which is the table gradient of position_grad(table, vals, x) . h.
  With ``jvals`` [L, N, F, 3] the table cotangent of the Jacobian,
  d sum(jvals * jacobian(table, x)) / d table, is added in the SAME scatter
  (the features' and the normals' cotangents in one splat).

  The hashed block (and, under ``spec.table_grad == "scatter"``, the dense
  one) is a scan over its levels carrying the [total_rows, F] gradient: the
  body forms one level's rows and updates ([8, N] and [8, N, F]) and
  scatter-adds them in ONE scatter, in place. Levels own disjoint rows, so
  every row receives its updates in point order.

  Args:
    vals: [L, N, F] level-major; x01: [N, 3]; h: None or [N, 3];
    jvals: None or [L, N, F, 3].

  Returns:
    [total_rows, F] float32.
  """
  out = jnp.zeros((spec.total_rows, vals.shape[-1]), jnp.float32)
  for start, stop, dense in _level_groups(spec):
    if dense and spec.table_grad != "scatter":
      part = _dense_block_splat(vals, x01, spec, start, stop, h)
      if jvals is not None:
        for d in range(3):
          part = part + _dense_block_splat(jvals[..., d], x01, spec, start, stop,
                                           _axis_direction(x01, d))
      out = jax.lax.dynamic_update_slice(out, part, (0, 0))
      continue

    def level(out, xs, dense=dense):
      (res, stride, offset), v, jv = xs
      cell, frac = _cells(x01, res)
      hs = _scaled_direction(h, x01, res)
      rows = _all_corner_rows(cell, spec, dense, stride, offset, axis=0)  # [8, N]
      coef = jnp.stack([_corner_coef(frac, c, hs) for c in range(8)])  # [8, N]
      upd = coef[..., None] * v                                        # [8, N, F]
      if jv is not None:
        for d in range(3):
          e = _scaled_direction(_axis_direction(x01, d), x01, res)
          dcoef = jnp.stack([_corner_coef(frac, c, e) for c in range(8)])
          upd = upd + dcoef[..., None] * jv[..., d]
      return out.at[rows].add(upd, mode="promise_in_bounds"), None

    jv = None if jvals is None else jvals[start:stop]
    out, _ = jax.lax.scan(level, out, (_levels(spec, start, stop), vals[start:stop], jv))
  return out


def _position_grad_jnp(table: jax.Array, vals: jax.Array, x01: jax.Array,
                       spec: HashGridSpec) -> jax.Array:
  """Gradient of sum(vals * interp(table, x)) w.r.t. the (clamped) positions.

  Per level, the corner dot products <table[row_c], vals[l, n]> are
  materialised ([N, 8], behind an optimisation barrier) before they are
  combined with the weight derivatives: fused into the [N, 3] output, XLA
  would redo every gather and hash once per axis (2.8x slower on CPU).

  Args:
    table: [total_rows, F]; vals: [L, N, F]; x01: [N, 3].

  Returns:
    [N, 3] (zero where a coordinate was clamped).
  """
  out = jnp.zeros(x01.shape, jnp.float32)
  for start, stop, dense in _level_groups(spec):
    def level(out, xs, dense=dense):
      (res, stride, offset), v = xs
      cell, frac = _cells(x01, res)
      rows = _all_corner_rows(cell, spec, dense, stride, offset)
      gv = jax.lax.optimization_barrier(
          jnp.sum(_gather(table, rows) * v[:, None, :], axis=-1))      # [N, 8]
      per_level = 0.0
      for c in range(8):
        per_level = per_level + gv[:, c, None] * _corner_weight_grad(frac, c)
      return out + per_level * res, None
    out, _ = jax.lax.scan(level, out, (_levels(spec, start, stop), vals[start:stop]))
  return jnp.where(_inside(x01), out, 0.0).astype(x01.dtype)


# --------------------------------------------------------------------------
# Optional C++ kernel (jax.ffi), built on first use with the system compiler.
# --------------------------------------------------------------------------

# The kernel source: hashgrid_kernel.cc beside this module (package data).
_KERNEL_FILE = "hashgrid_kernel.cc"

_CXX_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread",
              "-ffp-contract=off")


class KernelUnavailableError(RuntimeError):
  """The optional C++ hash-grid kernel could not be built or loaded."""


@functools.lru_cache(maxsize=None)
def kernel_source() -> str:
  """The C++ source of the optional kernel (``nerf/hashgrid_kernel.cc``, package data)."""
  return importlib.resources.files(__package__).joinpath(_KERNEL_FILE).read_text()


def _kernel_cache_dir() -> str:
  return os.environ.get(
      "INTERFUSION_JAX_KERNEL_CACHE",
      os.path.join(os.path.expanduser("~"), ".cache", "interfusion_jax", "kernels"))


@functools.lru_cache(maxsize=None)
def _register_ffi_kernel() -> str:
  """Builds (once, cached on disk) and registers the C++ kernel.

  Returns:
    The path of the shared library.

  Raises:
    KernelUnavailableError: no C++ compiler, or the build failed.
  """
  cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
  if not cxx:
    raise KernelUnavailableError(
        "hash-grid backend 'ffi' needs a C++17 compiler (g++/c++, or set CXX); "
        "none found. Use config.field.hashgrid_backend=jax (pure JAX).")
  key = hashlib.sha256(
      (kernel_source() + jax.__version__ + " ".join(_CXX_FLAGS)).encode()).hexdigest()[:16]
  so_path = os.path.join(_kernel_cache_dir(), f"hashgrid_{key}.so")
  if not os.path.exists(so_path):
    os.makedirs(os.path.dirname(so_path), exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
      src = os.path.join(tmp, "hashgrid.cc")
      out = os.path.join(tmp, "hashgrid.so")
      with open(src, "w") as f:
        f.write(kernel_source())
      cmd = [cxx, *_CXX_FLAGS, "-I", jax.ffi.include_dir(), src, "-o", out]
      proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
      if proc.returncode != 0:
        raise KernelUnavailableError(
            "building the hash-grid C++ kernel failed (use "
            "config.field.hashgrid_backend=jax):\n" + proc.stderr[-2000:])
      shutil.move(out, so_path + f".{os.getpid()}")
      os.replace(so_path + f".{os.getpid()}", so_path)
  lib = ctypes.cdll.LoadLibrary(so_path)
  jax.ffi.register_ffi_target("ifj_hashgrid_fwd", jax.ffi.pycapsule(lib.IfjHashgridFwd),
                              platform="cpu")
  jax.ffi.register_ffi_target("ifj_hashgrid_bwd", jax.ffi.pycapsule(lib.IfjHashgridBwd),
                              platform="cpu")
  jax.ffi.register_ffi_target("ifj_hashgrid_bwd_dir",
                              jax.ffi.pycapsule(lib.IfjHashgridBwdDir), platform="cpu")
  jax.ffi.register_ffi_target("ifj_hashgrid_bwd_jac",
                              jax.ffi.pycapsule(lib.IfjHashgridBwdJac), platform="cpu")
  return so_path


@functools.lru_cache(maxsize=None)
def ffi_kernel_available() -> bool:
  """True if the optional C++ kernel builds and loads on this machine."""
  try:
    _register_ffi_kernel()
    return True
  except (KernelUnavailableError, OSError):
    return False


def _level_table(spec: HashGridSpec) -> jax.Array:
  """[L, 3] int32 (resolution, dense, row offset) for the kernel."""
  return jnp.asarray(np.array(
      [[r, int(d), o] for r, d, o in zip(spec.resolutions, spec.dense,
                                         spec.level_offsets)], np.int32))


def _interp_ffi(table: jax.Array, x01: jax.Array, spec: HashGridSpec) -> jax.Array:
  """The encoding through the C++ kernel: [N, 3] -> [L, N, F] (not differentiable)."""
  n, f = x01.shape[0], spec.n_features_per_level
  out = jax.ShapeDtypeStruct((spec.n_levels, n, f), jnp.float32)
  return jax.ffi.ffi_call("ifj_hashgrid_fwd", out, vmap_method="sequential")(
      table.astype(jnp.float32), x01.astype(jnp.float32), _level_table(spec),
      log2_t=np.int32(spec.log2_hashmap_size))


# Whether the splat of a Jacobian cotangent (analytic normals) runs the kernel's
# ``ifj_hashgrid_bwd_jac`` entry on CPU. Off: with it, a sweep's sharded,
# vmapped group drifted from the single runs by 1.8e-5 after 2 steps (the bar
# is 1e-5, tests/test_sweep_multihost.py; 3e-6 with the jnp splat, the same
# as before the entry existed), and the cause is not yet understood. The
# features' splats keep the kernel.
KERNEL_JACOBIAN_SPLAT = False


def _splat_ffi(vals: jax.Array, x01: jax.Array, spec: HashGridSpec,
               h: jax.Array | None = None, jvals: jax.Array | None = None) -> jax.Array:
  """``_splat_jnp`` through the C++ kernel (not differentiable): [total_rows, F]."""
  out = jax.ShapeDtypeStruct((spec.total_rows, spec.n_features_per_level), jnp.float32)
  args = [vals.astype(jnp.float32), x01.astype(jnp.float32)]
  name = "ifj_hashgrid_bwd"
  if h is not None and jvals is not None:
    # Not produced by the rules below; two kernel calls keep it correct.
    return _splat_ffi(vals, x01, spec, h) + _splat_ffi(jnp.zeros_like(vals), x01, spec,
                                                       None, jvals)
  if h is not None:
    name = "ifj_hashgrid_bwd_dir"
    args.append(jnp.where(_inside(x01), h.astype(jnp.float32), 0.0))
  if jvals is not None:
    name = "ifj_hashgrid_bwd_jac"
    args.append(jvals.astype(jnp.float32))
  return jax.ffi.ffi_call(name, out, vmap_method="sequential")(
      *args, _level_table(spec), log2_t=np.int32(spec.log2_hashmap_size))


# --------------------------------------------------------------------------
# Backend choice.
# --------------------------------------------------------------------------

def uses_ffi_kernel(spec: HashGridSpec) -> bool:
  """Whether the CPU lowering of ``hash_encode`` runs the C++ kernel (trace time).

  "ffi" always does (and raises ``KernelUnavailableError`` if the kernel
  cannot be built); "auto" does when the kernel builds. Other platforms
  (GPU, TPU) never run it under "auto": see ``_dispatch``.
  """
  if spec.backend == "ffi":
    _register_ffi_kernel()  # raises KernelUnavailableError with the reason
    return True
  return spec.backend == "auto" and ffi_kernel_available()


def _dispatch(spec: HashGridSpec, kernel_fn, jnp_fn, *args):
  """``kernel_fn(*args)`` where the C++ kernel serves, else ``jnp_fn(*args)``.

  "auto" decides per platform being lowered for (``lax.platform_dependent``):
  the CPU lowering calls the kernel, every other platform the jnp path, so a
  function using the hash grid exports for ("cuda", "tpu") from a CPU host.
  "ffi" calls the kernel unconditionally (CPU only).
  """
  if not uses_ffi_kernel(spec):
    return jnp_fn(*args)
  if spec.backend == "ffi":
    return kernel_fn(*args)
  return jax.lax.platform_dependent(*args, cpu=kernel_fn, default=jnp_fn)


# --------------------------------------------------------------------------
# The differentiable encoding: four custom VJPs.
#
#   _encode(table, x)         -> features; cotangents: splat (table),
#                                J^T g with the Jacobian J from the forward (x)
#   _encode_jac(table, x)     -> (features, J = d features / dx), the forward
#                                rule of _encode; cotangents: ONE splat for
#                                both outputs (table), x
#   _pos_grad(table, v, x)    -> J^T v computed directly; cotangents: splat
#                                with derivative weights (table), interp (v), x
#   _splat(v, x, h, jv)       -> table cotangent; cotangents: interp and
#                                Jacobian (v, jv), gathers (x, h)
#
# Every rule's primal is computed by one of these functions, so any order of
# differentiation meets these rules, never autodiff of the gathers. A loss on
# analytic normals differentiated w.r.t. the table reaches _encode_jac with
# cotangents for the features (density, albedo) and for J (the normals):
# one scatter per block of levels for both, and with the C++ kernel on CPU
# none in XLA.
# --------------------------------------------------------------------------

@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _splat(vals: jax.Array, x01: jax.Array, h: jax.Array | None,
           jvals: jax.Array | None, spec: HashGridSpec) -> jax.Array:
  """``_splat_jnp`` (or its kernel), with explicit gather-only cotangents."""
  if jvals is not None and not KERNEL_JACOBIAN_SPLAT:
    return _splat_jnp(vals, x01, spec, h, jvals)
  return _dispatch(spec, lambda v, x, d, j: _splat_ffi(v, x, spec, d, j),
                   lambda v, x, d, j: _splat_jnp(v, x, spec, d, j), vals, x01, h, jvals)


def _splat_fwd(vals, x01, h, jvals, spec):
  return _splat(vals, x01, h, jvals, spec), (vals, x01, h, jvals)


def _splat_bwd(spec, res, t_bar):
  vals, x01, h, jvals = res
  # <t_bar, splat> = <v, interp(t_bar, x, h)> + <jv, jacobian(t_bar, x)>: linear
  # in v and jv; x and h enter through the coefficients only (t_bar constant:
  # gathers, no scatter).
  def pairing(y, d):
    out = jnp.sum(vals * _interp(t_bar, y, spec, d))
    if jvals is not None:
      out = out + jnp.sum(jvals * _jacobian_jnp(t_bar, y, spec))
    return out
  _, vjp = jax.vjp(pairing, x01, h)
  x_bar, h_bar = vjp(jnp.ones((), jnp.float32))
  if h is None:
    v_bar = _dispatch(spec, functools.partial(_interp_ffi, spec=spec),
                      functools.partial(_interp, spec=spec), t_bar, x01)
  else:
    v_bar = _interp(t_bar, x01, spec, h)
  j_bar = None if jvals is None else _jacobian_jnp(t_bar, x01, spec)
  return v_bar, x_bar, h_bar, j_bar


_splat.defvjp(_splat_fwd, _splat_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _pos_grad(table: jax.Array, vals: jax.Array, x01: jax.Array, spec: HashGridSpec
              ) -> jax.Array:
  """``_position_grad_jnp``: [N, 3]."""
  return _position_grad_jnp(table, vals, x01, spec)


def _pos_grad_fwd(table, vals, x01, spec):
  return _pos_grad(table, vals, x01, spec), (table, vals, x01)


def _pos_grad_bwd(spec, res, h):
  table, vals, x01 = res
  # <h, pos_grad> = <vals, interp(table, x, h)>: table cotangent one splat with
  # derivative weights, vals cotangent gathers; the x cotangent differentiates
  # the jnp form in x alone (table, vals constant: no scatter).
  _, vjp_x = jax.vjp(lambda y: _position_grad_jnp(table, vals, y, spec), x01)
  (x_bar,) = vjp_x(h)
  return (_splat(vals, x01, h, None, spec).astype(table.dtype),
          _interp(table, x01, spec, h), x_bar)


_pos_grad.defvjp(_pos_grad_fwd, _pos_grad_bwd)


def _forward(table: jax.Array, x01: jax.Array, spec: HashGridSpec) -> jax.Array:
  return _point_major(_dispatch(spec, functools.partial(_interp_ffi, spec=spec),
                                functools.partial(_interp, spec=spec), table, x01))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _encode_jac(table: jax.Array, x01: jax.Array, spec: HashGridSpec
                ) -> tuple[jax.Array, jax.Array]:
  """(features [N, L*F], their Jacobian in x01, level-major [L, N, F, 3])."""
  return _forward(table, x01, spec), _jacobian_jnp(table, x01, spec)


def _encode_jac_fwd(table, x01, spec):
  return _encode_jac(table, x01, spec), (table, x01)


def _encode_jac_bwd(spec, res, cts):
  table, x01 = res
  g, jvals = cts
  vals = _level_major(g, spec)
  jvals = jvals.astype(jnp.float32)
  _, vjp_x = jax.vjp(lambda y: _jacobian_jnp(table, y, spec), x01)
  (x_jac,) = vjp_x(jvals)
  x_bar = _pos_grad(table, vals, x01, spec) + x_jac
  return (_splat(vals, x01, None, jvals, spec).astype(table.dtype),
          x_bar.astype(x01.dtype))


_encode_jac.defvjp(_encode_jac_fwd, _encode_jac_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _encode(table: jax.Array, x01: jax.Array, spec: HashGridSpec) -> jax.Array:
  return _forward(table, x01, spec)


def _encode_fwd(table, x01, spec):
  # The primal and its Jacobian through _encode_jac: differentiating this rule
  # again (a loss on the position gradient) meets _encode_jac's rule, whose
  # table cotangent covers the features and the Jacobian in one splat. The
  # Jacobian is removed by XLA when the position gradient is not used.
  feats, jac = _encode_jac(table, x01, spec)
  return feats, (table, x01, jac)


def _encode_bwd(spec, res, g):
  table, x01, jac = res
  vals = _level_major(g, spec)
  x_bar = jnp.einsum("lnf,lnfd->nd", vals, jac, precision=jax.lax.Precision.HIGHEST)
  return (_splat(vals, x01, None, None, spec).astype(table.dtype),
          x_bar.astype(x01.dtype))


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


# --------------------------------------------------------------------------
# Lowered-program inspection.
# --------------------------------------------------------------------------

_SCATTER_START = re.compile(r'(=\s*"?stablehlo\.scatter"?[\s(]|=\s*\S+\s+scatter\()')
_RESULT_DIMS = (re.compile(r"->\s*\(?tensor<((?:\d+x)+)"),      # StableHLO result type
                re.compile(r"=\s*\(?\s*[a-z]\w*\[([\d,]+)\]"))  # HLO result shape


def _scatter_result_dims(hlo_text: str) -> list[tuple[int, ...]]:
  """Result dimensions of every scatter op in the text (() if unparsed).

  StableHLO prints a scatter over several lines (its combiner region); the
  result type follows on the line that closes the region.
  """
  lines = hlo_text.splitlines()
  out = []
  for i, ln in enumerate(lines):
    if not _SCATTER_START.search(ln):
      continue
    if "stablehlo" in ln:
      closing = [e for e in lines[i + 1:i + 64] if e.lstrip().startswith("})")]
      m = _RESULT_DIMS[0].search(ln) or (closing and _RESULT_DIMS[0].search(closing[0]))
      dims = m.group(1).strip("x").split("x") if m else []
    else:
      m = _RESULT_DIMS[1].search(ln)
      dims = m.group(1).split(",") if m else []
    out.append(tuple(int(v) for v in dims if v))
  return out


def count_scatters(hlo_text: str) -> int:
  """Number of scatter ops in lowered program text: StableHLO
  (``jax.jit(f).lower(...).as_text()``) or HLO (``as_text(dialect="hlo")``)."""
  return len(_scatter_result_dims(hlo_text))


def count_table_scatters(hlo_text: str, table_rows) -> int:
  """Number of scatter ops whose result is a hash-grid table.

  A scatter counts when one of its result's dimensions is in ``table_rows``
  (an int or a collection of ints: the ``total_rows`` of the grids in the
  program; pick specs whose row counts no other scattered array shares).
  Any dimension, not just the first, so that tables carrying a batch or
  device axis (a vmapped or pmapped step) count too. Apply it to a whole
  lowered training step to count its table scatters.

  Args:
    hlo_text: lowered program text (StableHLO or HLO).
    table_rows: int or iterable of ints.
  """
  rows = {int(table_rows)} if np.ndim(table_rows) == 0 else {int(r) for r in table_rows}
  return sum(any(d in rows for d in dims) for dims in _scatter_result_dims(hlo_text))
