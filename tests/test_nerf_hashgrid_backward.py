"""The hash grid's backward at every order: table gradients of losses on
analytic normals against autodiff of the plain gather formula and finite
differences, the table-gradient options, the C++ kernel, scatter counts and
export for other platforms."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hashgrid_reference import plain_encode
from interfusion_jax.nerf import field
from interfusion_jax.nerf import hashgrid

# Two dense levels (res 4, 8) and two hashed (res 16, 32).
SMALL = hashgrid.HashGridSpec(n_levels=4, n_features_per_level=2,
                              log2_hashmap_size=10, base_resolution=4,
                              per_level_scale=2.0, backend="jax")

# Four dense levels: three of at most ONE_HOT_MAX_ROWS rows (res 16, 24, 36),
# one larger (res 54: 166375 rows), then one hashed level (res 81).
MIXED = hashgrid.HashGridSpec(n_levels=5, n_features_per_level=2,
                              log2_hashmap_size=18, base_resolution=16,
                              per_level_scale=1.5, backend="jax")

def ours(spec):
  return lambda t, x: hashgrid.hash_encode({"table": t}, x, spec)


def reference(spec):
  return lambda t, x: plain_encode(t, x, spec)


def _table(spec, key=0, scale=1.0):
  return scale * jax.random.normal(jax.random.PRNGKey(key),
                                   (spec.total_rows, spec.n_features_per_level))


def _points(n, key=1, lo=0.0, hi=1.0):
  return jax.random.uniform(jax.random.PRNGKey(key), (n, 3), jnp.float32, lo, hi)


def normals_loss(enc, t, x, a, b):
  """A loss on features and on their nonlinear position gradient ("normals")."""
  def density(y):
    return jnp.sum(jnp.tanh(enc(t, y)) * a, axis=1)
  feats = enc(t, x)
  grad = jax.grad(lambda y: jnp.sum(density(y)))(x)
  n = grad / jnp.sqrt(jnp.sum(grad**2, axis=1, keepdims=True) + 1e-3)
  return jnp.sum(jnp.sin(feats) * b) + jnp.sum(n * jnp.array([1.0, -2.0, 0.5]))


def _normals_setup(spec, n=300):
  x = jnp.concatenate([_points(n), _points(20, 4, -0.2, 1.2)])
  a = jax.random.normal(jax.random.PRNGKey(5), (spec.output_dim,))
  b = jax.random.normal(jax.random.PRNGKey(6), (x.shape[0], spec.output_dim))
  return x, a, b


def _assert_close(got, want, rtol=1e-4):
  scale = float(jnp.abs(want).max())
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


def test_normals_loss_table_gradient_matches_autodiff_of_plain_formula():
  t = _table(SMALL)
  x, a, b = _normals_setup(SMALL)
  got = jax.jit(jax.grad(lambda t: normals_loss(ours(SMALL), t, x, a, b)))(t)
  want = jax.jit(jax.grad(lambda t: normals_loss(reference(SMALL), t, x, a, b)))(t)
  assert float(jnp.abs(want).max()) > 0
  _assert_close(got, want)


def test_normals_loss_table_gradient_matches_finite_differences():
  t = _table(SMALL)
  x, a, b = _normals_setup(SMALL, n=60)
  f = jax.jit(lambda t: normals_loss(ours(SMALL), t, x, a, b))
  g = np.asarray(jax.jit(jax.grad(lambda t: normals_loss(ours(SMALL), t, x, a, b)))(t))
  # A few rows of both blocks with large gradients; float64 is not available
  # for the kernel path, so use a step where float32 rounding stays small.
  dense_rows = SMALL.level_offsets[2]
  picks = [int(np.argmax(np.abs(g[:dense_rows, 0]))),
           dense_rows + int(np.argmax(np.abs(g[dense_rows:, 1])))]
  for r, col in zip(picks, (0, 1)):
    eps = 1e-2
    e = jnp.zeros_like(t).at[r, col].set(eps)
    fd = (float(f(t + e)) - float(f(t - e))) / (2 * eps)
    np.testing.assert_allclose(g[r, col], fd, rtol=2e-2, atol=2e-2 * abs(fd) + 1e-3)


def test_third_order_position_cotangent():
  """d/dx of a loss on the position gradient goes through _pos_grad's x rule."""
  t = _table(SMALL)
  x, a, _ = _normals_setup(SMALL, n=100)

  def loss(enc, x):
    g = jax.grad(lambda y: jnp.sum(jnp.tanh(enc(t, y)) * a))(x)
    return jnp.sum(g**2)

  got = jax.jit(jax.grad(lambda x: loss(ours(SMALL), x)))(x)
  want = jax.jit(jax.grad(lambda x: loss(reference(SMALL), x)))(x)
  _assert_close(got, want, rtol=1e-3)


def test_derivatives_of_the_table_gradient():
  """Differentiating the table gradient itself (the splat's own rule): a
  Hessian-vector product in the table, and d/dx of a table-gradient loss.
  (Forward mode does not apply to a custom VJP, as before.)"""
  t = _table(SMALL)
  x, a, _ = _normals_setup(SMALL, n=100)
  u = jax.random.normal(jax.random.PRNGKey(11), t.shape)

  def hvp(enc):
    grad_t = lambda t: jax.grad(lambda t: jnp.sum(jnp.sin(enc(t, x)) * a))(t)
    return jax.jit(jax.grad(lambda t: jnp.sum(grad_t(t) * u)))(t)  # reverse over reverse

  def dx(enc):
    def f(y):
      g = jax.grad(lambda t: jnp.sum(enc(t, y) * a))(t)
      return jnp.sum(jnp.sin(g) * u)
    return jax.jit(jax.grad(f))(x)

  _assert_close(hvp(ours(SMALL)), hvp(reference(SMALL)), rtol=1e-4)
  _assert_close(dx(ours(SMALL)), dx(reference(SMALL)), rtol=1e-3)


@pytest.mark.parametrize("table_grad", ["sorted_segment_sum", "one_hot_matmul"])
def test_table_grad_options_equal_scatter(table_grad):
  spec = dataclasses.replace(MIXED, table_grad=table_grad)
  assert spec.dense == (True, True, True, True, False)
  assert [r <= hashgrid.ONE_HOT_MAX_ROWS for r in spec.level_rows[:4]] == [
      True, True, True, False]
  t = _table(MIXED, scale=0.1)
  x, a, b = _normals_setup(MIXED, n=200)
  g = jax.random.normal(jax.random.PRNGKey(9), (x.shape[0], MIXED.output_dim))
  lin = lambda s: jax.jit(jax.grad(lambda t: jnp.sum(g * ours(s)(t, x))))(t)
  nrm = lambda s: jax.jit(jax.grad(lambda t: normals_loss(ours(s), t, x, a, b)))(t)
  _assert_close(lin(spec), lin(MIXED), rtol=1e-5)
  _assert_close(nrm(spec), nrm(MIXED), rtol=1e-4)


def test_table_grad_options_have_no_dense_scatter():
  x, a, b = _normals_setup(MIXED, n=64)
  t = _table(MIXED)
  # normals_loss encodes twice (the features; inside the gradient, whose
  # features and Jacobian share one splat): one scatter per block and encoding.
  for table_grad, want in (("scatter", 4), ("sorted_segment_sum", 2), ("one_hot_matmul", 2)):
    spec = dataclasses.replace(MIXED, table_grad=table_grad)
    txt = jax.jit(jax.grad(lambda t: normals_loss(ours(spec), t, x, a, b))).lower(t).as_text()
    # Only the hashed block scatters (once per use) under the scatter-free options.
    assert hashgrid.count_table_scatters(txt, MIXED.total_rows) == want, table_grad


def test_table_grad_option_validation():
  with pytest.raises(ValueError, match="config.field.hashgrid_table_grad"):
    hashgrid.HashGridSpec(table_grad="atomics")


def test_sorted_segment_sum_matches_numpy():
  rng = np.random.default_rng(0)
  rows = rng.integers(0, 50, 400).astype(np.int32)
  upd = rng.normal(size=(400, 2)).astype(np.float32)
  want = np.zeros((60, 2))
  np.add.at(want, rows, upd)
  got = jax.jit(hashgrid._sorted_segment_sum, static_argnums=2)(rows, upd, 60)  # pylint: disable=protected-access
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------
# Scatter counts.
# --------------------------------------------------------------------------

def _field_normals_loss(spec, x):
  def loss(p):
    s, a, n = field.field_forward_with_normals(p, x, spec)
    return jnp.sum(s) + jnp.sum(jnp.sin(a)) + jnp.sum(n * jnp.array([1.0, 2.0, 3.0]))
  return loss


def test_count_helpers_on_known_programs():
  t = _table(SMALL)
  x = _points(32)
  # Autodiff of the plain formula: one scatter per level and corner.
  txt = jax.jit(jax.grad(lambda t: jnp.sum(plain_encode(t, x, SMALL)))).lower(t).as_text()
  assert hashgrid.count_scatters(txt) == 8 * SMALL.n_levels
  assert hashgrid.count_table_scatters(txt, SMALL.total_rows) == 8 * SMALL.n_levels
  assert hashgrid.count_table_scatters(txt, SMALL.total_rows + 1) == 0
  hlo = jax.jit(jax.grad(lambda t: jnp.sum(plain_encode(t, x, SMALL)))).lower(t).as_text(
      dialect="hlo")
  assert hashgrid.count_table_scatters(hlo, [SMALL.total_rows]) == 8 * SMALL.n_levels


def test_field_normals_gradient_scatters_each_block_once():
  spec = field.FieldSpec(grid=SMALL, mlp_width=16)
  p = field.init_field(jax.random.PRNGKey(0), spec)
  x = jax.random.uniform(jax.random.PRNGKey(1), (64, 3), minval=-1.5, maxval=1.5)
  txt = jax.jit(jax.grad(_field_normals_loss(spec, x))).lower(p).as_text()
  n = hashgrid.count_table_scatters(txt, SMALL.total_rows)
  print(f"field analytic-normal loss gradient: {n} table scatters")  # 32 before
  # The features' and the normals' cotangents share one splat per block.
  assert n == 2
  assert hashgrid.count_scatters(txt) == 2


def test_field_normals_gradient_matches_plain_formula(monkeypatch):
  spec = field.FieldSpec(grid=SMALL, mlp_width=16)
  p = field.init_field(jax.random.PRNGKey(0), spec)
  p["grid"] = {"table": p["grid"]["table"] * 1e3}
  x = jax.random.uniform(jax.random.PRNGKey(1), (128, 3), minval=-2.2, maxval=2.2)
  got = jax.jit(jax.grad(_field_normals_loss(spec, x)))(p)
  monkeypatch.setattr(hashgrid, "hash_encode",
                      lambda params, y, s: plain_encode(params["table"], y, s))
  want = jax.jit(jax.grad(_field_normals_loss(spec, x)))(p)
  for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    _assert_close(g, w, rtol=1e-3)


# --------------------------------------------------------------------------
# The C++ kernel.
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kernel():
  if not hashgrid.ffi_kernel_available():
    pytest.skip("optional C++ hash-grid kernel cannot be built here (no g++?)")


@pytest.mark.parametrize("jacobian_kernel", [False, True])
def test_kernel_serves_the_normals_backward(kernel, jacobian_kernel, monkeypatch):  # pylint: disable=unused-argument
  """The kernel's backward of a loss on features and normals equals the jnp one.
  With ``KERNEL_JACOBIAN_SPLAT`` (off by default, see its comment) the joint
  splat runs in the kernel too and no table scatter is left in XLA; without
  it, that splat is XLA's, one scatter per block of levels."""
  monkeypatch.setattr(hashgrid, "KERNEL_JACOBIAN_SPLAT", jacobian_kernel)
  spec = dataclasses.replace(SMALL, backend="ffi")
  t = _table(SMALL)
  x, a, b = _normals_setup(SMALL)
  got = jax.jit(jax.grad(lambda t: normals_loss(ours(spec), t, x, a, b)))(t)
  want = jax.jit(jax.grad(lambda t: normals_loss(ours(SMALL), t, x, a, b)))(t)
  _assert_close(got, want)
  txt = jax.jit(jax.grad(lambda t: normals_loss(ours(spec), t, x, a, b))).lower(t).as_text()
  blocks = len({d for d in SMALL.dense})
  assert hashgrid.count_table_scatters(txt, SMALL.total_rows) == (0 if jacobian_kernel
                                                                  else blocks)
  assert ("ifj_hashgrid_bwd_jac" in txt) == jacobian_kernel


def test_kernel_direction_splat_matches_jnp(kernel):  # pylint: disable=unused-argument
  x = jnp.concatenate([_points(500), _points(50, 4, -0.2, 1.2)])
  v = jax.random.normal(jax.random.PRNGKey(2), (SMALL.n_levels, x.shape[0], 2))
  h = jax.random.normal(jax.random.PRNGKey(3), (x.shape[0], 3))
  got = jax.jit(lambda v, x, h: hashgrid._splat_ffi(v, x, SMALL, h))(v, x, h)  # pylint: disable=protected-access
  want = jax.jit(lambda v, x, h: hashgrid._splat_jnp(v, x, SMALL, h))(v, x, h)  # pylint: disable=protected-access
  _assert_close(got, want, rtol=1e-5)
  # Features and Jacobian cotangents in one pass (ifj_hashgrid_bwd_jac).
  j = jax.random.normal(jax.random.PRNGKey(4), v.shape + (3,))
  got = jax.jit(lambda v, x, j: hashgrid._splat_ffi(v, x, SMALL, None, j))(v, x, j)  # pylint: disable=protected-access
  want = jax.jit(lambda v, x, j: hashgrid._splat_jnp(v, x, SMALL, None, j))(v, x, j)  # pylint: disable=protected-access
  _assert_close(got, want, rtol=1e-5)


# --------------------------------------------------------------------------
# Export for other platforms.
# --------------------------------------------------------------------------

def _export_text(fn, args, platforms):
  shapes = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args]
  # The kernel's targets carry no compatibility guarantee: allow them so that
  # the CPU export shows them (the GPU/TPU exports must not contain them).
  allow = [jax.export.DisabledSafetyCheck.custom_call(n) for n in
           ("ifj_hashgrid_fwd", "ifj_hashgrid_bwd", "ifj_hashgrid_bwd_dir",
            "ifj_hashgrid_bwd_jac")]
  return jax.export.export(jax.jit(fn), platforms=platforms, disabled_checks=allow)(
      *shapes).mlir_module()


def test_auto_backend_exports_for_gpu_and_tpu_without_the_kernel():
  spec = dataclasses.replace(SMALL, backend="auto")
  t = _table(SMALL)
  x, a, b = _normals_setup(SMALL, n=16)
  enc_loss = lambda t, x: jnp.sum(ours(spec)(t, x)**2)
  fns = {"encode fwd+bwd": (jax.value_and_grad(enc_loss, (0, 1)), (t, x)),
         "normals loss grad": (jax.grad(lambda t, x: normals_loss(ours(spec), t, x, a, b)),
                               (t, x))}
  for name, (fn, args) in fns.items():
    text = _export_text(fn, args, ("cuda", "tpu"))
    assert "ifj_hashgrid" not in text, name
    if hashgrid.ffi_kernel_available():
      assert "ifj_hashgrid" in _export_text(fn, args, ("cpu",)), name


def test_table_grad_from_config():
  from configs.hoi import get_config  # pylint: disable=import-outside-toplevel
  from interfusion_jax.stage2 import config as config_lib  # pylint: disable=import-outside-toplevel
  cfg = get_config("smoke")
  assert config_lib.hashgrid_spec(config_lib.parse(cfg)).table_grad == "scatter"
  cfg.field.hashgrid_table_grad = "one_hot_matmul"
  assert config_lib.hashgrid_spec(config_lib.parse(cfg)).table_grad == "one_hot_matmul"
  cfg.field.hashgrid_table_grad = "atomics"
  with pytest.raises(ValueError, match="hashgrid_table_grad"):
    config_lib.parse(cfg)


@pytest.mark.parametrize("table_grad", ["sorted_segment_sum", "one_hot_matmul"])
def test_scatter_free_options_export_for_tpu(table_grad):
  spec = dataclasses.replace(MIXED, table_grad=table_grad, backend="auto")
  t = _table(MIXED)
  x, a, b = _normals_setup(MIXED, n=16)
  fn = jax.grad(lambda t, x: normals_loss(ours(spec), t, x, a, b))
  text = _export_text(fn, (t, x), ("tpu",))
  assert "ifj_hashgrid" not in text
  # Only the hashed block scatters (twice in normals_loss, see above).
  assert hashgrid.count_table_scatters(text, MIXED.total_rows) == 2
