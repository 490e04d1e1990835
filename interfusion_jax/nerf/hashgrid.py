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

import ctypes
import dataclasses
import functools
import hashlib
import importlib.resources
import math
import os
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

  def __post_init__(self):
    if self.backend not in BACKENDS:
      raise HashGridConfigError(
          f"HashGridSpec.backend = {self.backend!r}: choose one of "
          f"{list(BACKENDS)} (config.field.hashgrid_backend).")
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


def _cells(x01: jax.Array, spec: HashGridSpec, start: int, stop: int
           ) -> tuple[jax.Array, jax.Array]:
  """Cell coordinates and in-cell fractions of levels ``start .. stop - 1`` at once.

  Args:
    x01: [N, 3] positions; values outside [0, 1] are clamped into the grid.

  Returns:
    (cell [N, G, 3] int32 in [0, R_l - 1], frac [N, G, 3] float32 in [0, 1]),
    G = stop - start.
  """
  res = np.asarray(spec.resolutions[start:stop], np.float32)[:, None]   # [G, 1]
  pos = jnp.clip(x01.astype(jnp.float32), 0.0, 1.0)[:, None, :] * res
  cell = jnp.clip(jnp.floor(pos), 0.0, res - 1.0)
  return cell.astype(jnp.int32), pos - cell


def corner_bits(c: int) -> tuple[int, int, int]:
  """Offset (bx, by, bz) of corner c in 0..7: bit d of c is the offset on axis d."""
  return (c & 1, (c >> 1) & 1, (c >> 2) & 1)


def _corner_rows(cell: jax.Array, c: int, spec: HashGridSpec, start: int, stop: int,
                 dense: bool) -> jax.Array:
  """Global table rows of corner ``c`` on levels ``start .. stop - 1``: [N, G, 3] -> [N, G].

  Dense levels index ``i + j S + k S^2`` with S = R + 1, hashed ones
  ``(i P0 ^ j P1 ^ k P2) mod T`` in uint32; both plus the level's row offset.
  """
  v = cell + np.asarray(corner_bits(c), np.int32)
  if dense:
    s = np.asarray(spec.resolutions[start:stop], np.int64) + 1
    v = v * np.stack([np.ones_like(s), s, s * s], axis=-1).astype(np.int32)
    rows = v[..., 0] + v[..., 1] + v[..., 2]
  else:
    u = v.astype(jnp.uint32) * np.asarray(HASH_PRIMES, np.uint32)
    rows = ((u[..., 0] ^ u[..., 1] ^ u[..., 2])
            & np.uint32(spec.hashmap_size - 1)).astype(jnp.int32)
  return rows + np.asarray(spec.level_offsets[start:stop], np.int32)


def _corner_weight(frac: jax.Array, c: int) -> jax.Array:
  """Trilinear weight of corner ``c``: prod_d (b_d ? f_d : 1 - f_d); [..., 3] -> [...]."""
  w = [frac[..., d] if b else 1.0 - frac[..., d] for d, b in enumerate(corner_bits(c))]
  return w[0] * w[1] * w[2]


def _corner_weight_grad(frac: jax.Array, c: int) -> jax.Array:
  """d weight_c / d frac_d of corner ``c``'s trilinear weight: [..., 3] -> [..., 3]."""
  b = corner_bits(c)
  ws = [frac[..., d] if b[d] else 1.0 - frac[..., d] for d in range(3)]
  per = []
  for d in range(3):
    e1, e2 = [e for e in range(3) if e != d]
    per.append((1.0 if b[d] else -1.0) * ws[e1] * ws[e2])
  return jnp.stack(per, axis=-1)


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
  return jnp.concatenate(rows, axis=1), jnp.concatenate(weights, axis=1)


def _block_corners(x01: jax.Array, spec: HashGridSpec, start: int, stop: int, dense: bool
                   ) -> tuple[jax.Array, jax.Array]:
  """``corners`` of one block of levels: (rows [N, G, 8] int32, weights [N, G, 8])."""
  cell, frac = _cells(x01, spec, start, stop)
  return (jnp.stack([_corner_rows(cell, c, spec, start, stop, dense) for c in range(8)], -1),
          jnp.stack([_corner_weight(frac, c) for c in range(8)], axis=-1))


# --------------------------------------------------------------------------
# Forward / backward.
#
# Each function handles the dense and the hashed levels as two blocks, every
# block with one gather (or scatter) per corner over all its levels: the
# program size does not grow with the number of levels (16 unrolled levels
# made the training step several times slower to trace and compile).
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

  Per block, the index computation, the gathers and the weighted sum over the
  corners fuse into one loop (nothing [N, L, 8] sized materialises).
  """
  feats = []
  for start, stop, dense in _level_groups(spec):
    cell, frac = _cells(x01, spec, start, stop)
    acc = 0.0
    for c in range(8):
      rows = _corner_rows(cell, c, spec, start, stop, dense)
      acc = acc + _corner_weight(frac, c)[..., None] * _gather(table, rows)
    feats.append(acc)                                              # [N, G, F]
  return jnp.concatenate(feats, axis=1).reshape(x01.shape[0], spec.output_dim)


def _table_grad(g: jax.Array, x01: jax.Array, spec: HashGridSpec) -> jax.Array:
  """Gradient of sum(g * encode) w.r.t. the flat table (the trilinear splat).

  Per block, rows and weighted updates of all its levels and corners are
  materialised first (an optimisation barrier keeps XLA from fusing the hash
  into the scatter loop, which is several times slower on CPU) and scattered
  in one scatter-add into one buffer (the second block's updates it in
  place). Levels own disjoint rows, so every row receives its updates in
  point order.

  Args:
    g: [N, L, F] output cotangent.
    x01: [N, 3] positions.

  Returns:
    [total_rows, F].
  """
  out = jnp.zeros((spec.total_rows, g.shape[-1]), g.dtype)
  for start, stop, dense in _level_groups(spec):
    rows, w = _block_corners(x01, spec, start, stop, dense)             # [N, G, 8]
    rows, upd = jax.lax.optimization_barrier(
        (rows, w[..., None] * g[:, start:stop, None, :]))
    out = out.at[rows].add(upd, mode="promise_in_bounds")
  return out


def _position_grad(table: jax.Array, g: jax.Array, x01: jax.Array,
                   spec: HashGridSpec) -> jax.Array:
  """Gradient of sum(g * encode) w.r.t. the (clamped) positions.

  Args:
    table: [total_rows, F]; g: [N, L, F]; x01: [N, 3].

  Returns:
    [N, 3] (zero where a coordinate was clamped).
  """
  out = 0.0
  for start, stop, dense in _level_groups(spec):
    cell, frac = _cells(x01, spec, start, stop)
    per_level = 0.0
    for c in range(8):
      rows = _corner_rows(cell, c, spec, start, stop, dense)
      gv = jnp.sum(_gather(table, rows) * g[:, start:stop], axis=-1)    # [N, G]
      per_level = per_level + gv[..., None] * _corner_weight_grad(frac, c)
    res = np.asarray(spec.resolutions[start:stop], np.float32)[:, None]
    out = out + jnp.sum(per_level * res, axis=1)                       # [N, 3]
  inside = (x01 >= 0.0) & (x01 <= 1.0)
  return jnp.where(inside, out, 0.0).astype(x01.dtype)


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


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _encode_ffi(table: jax.Array, x01: jax.Array, spec: HashGridSpec) -> jax.Array:
  """Forward through the C++ kernel: [N, 3] -> [N, L*F].

  Differentiating it directly (only happens for higher-order derivatives,
  through the custom VJP's forward rule) uses the jnp path.
  """
  _register_ffi_kernel()
  n, f = x01.shape[0], spec.n_features_per_level
  out = jax.ShapeDtypeStruct((spec.n_levels, n, f), jnp.float32)
  feats = jax.ffi.ffi_call("ifj_hashgrid_fwd", out, vmap_method="sequential")(
      table.astype(jnp.float32), x01.astype(jnp.float32), _level_table(spec),
      log2_t=np.int32(spec.log2_hashmap_size))  # [L, N, F]
  return jnp.transpose(feats, (1, 0, 2)).reshape(n, spec.output_dim)


@_encode_ffi.defjvp
def _encode_ffi_jvp(spec, primals, tangents):
  return jax.jvp(lambda t, x: _encode_reference(t, x, spec), primals, tangents)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _table_grad_ffi(g: jax.Array, x01: jax.Array, spec: HashGridSpec) -> jax.Array:
  """``_table_grad`` through the C++ kernel; differentiable via the jnp path."""
  _register_ffi_kernel()
  out = jax.ShapeDtypeStruct((spec.total_rows, spec.n_features_per_level), jnp.float32)
  return jax.ffi.ffi_call("ifj_hashgrid_bwd", out, vmap_method="sequential")(
      jnp.transpose(g.reshape(g.shape[0], spec.n_levels, -1), (1, 0, 2)).astype(jnp.float32),
      x01.astype(jnp.float32),
      _level_table(spec), log2_t=np.int32(spec.log2_hashmap_size))


@_table_grad_ffi.defjvp
def _table_grad_ffi_jvp(spec, primals, tangents):
  return jax.jvp(lambda g, x: _table_grad(g, x, spec), primals, tangents)


# --------------------------------------------------------------------------
# The differentiable encoding.
# --------------------------------------------------------------------------

def uses_ffi_kernel(spec: HashGridSpec) -> bool:
  """Whether ``hash_encode`` runs the C++ kernel for this spec (trace time)."""
  if spec.backend == "ffi":
    _register_ffi_kernel()  # raises KernelUnavailableError with the reason
    return True
  # The kernel is a CPU kernel: on GPU/TPU "auto" always takes the jnp path.
  return (spec.backend == "auto" and jax.default_backend() == "cpu"
          and ffi_kernel_available())


def _forward(table: jax.Array, x01: jax.Array, spec: HashGridSpec) -> jax.Array:
  if uses_ffi_kernel(spec):
    return _encode_ffi(table, x01, spec)
  return _encode_reference(table, x01, spec)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _encode(table: jax.Array, x01: jax.Array, spec: HashGridSpec) -> jax.Array:
  return _forward(table, x01, spec)


def _encode_fwd(table, x01, spec):
  return _forward(table, x01, spec), (table, x01)


def _encode_bwd(spec, res, g):
  table, x01 = res
  n = x01.shape[0]
  g = g.reshape(n, spec.n_levels, spec.n_features_per_level).astype(jnp.float32)
  table_grad = (_table_grad_ffi(g, x01, spec) if uses_ffi_kernel(spec)
                else _table_grad(g, x01, spec))
  return (table_grad.astype(table.dtype), _position_grad(table, g, x01, spec))


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
