"""Stage-2 training step: gradient wiring, camera tracing, NaN skipping, resume
and multi-device equality.

Most tests use a tiny closed-form "blob" field (a handful of parameters) behind
the same ``ModelFns`` interface as the hash-grid field, so the whole step
(renders, Eq. 6 compositing, SDS, geometry, optimizer, pmap) is exercised while
compiling in seconds; an analytic Gaussian denoiser stands in for the diffusion
model. The real field + a real-format guidance model run in test_train_smoke.py.
"""
import functools
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import hoi
from interfusion_jax.nerf import camera as camera_lib
from interfusion_jax.stage2 import checkpoint as ckpt_lib
from interfusion_jax.stage2 import run_io
from interfusion_jax.nerf import model as model_lib
from interfusion_jax.stage2 import loop
from interfusion_jax.stage2 import setup as setup_lib
from interfusion_jax.stage2 import step as train
from interfusion_jax.body.anchor import Anchor
from interfusion_jax.guidance import core
from interfusion_jax.stage2 import config as config_lib

if not jax.config.jax_compilation_cache_dir:  # persistent XLA cache: reruns compile fast
  jax.config.update("jax_compilation_cache_dir",
                    os.environ.get("JAX_COMPILATION_CACHE_DIR", "/tmp/interfusion_jax_test_cache"))

H = 8


# --- A closed-form field behind the ModelFns interface. ---------------------

def _blob_init(key, center=(0.0, 0.0, 0.0)):
  k1, k2 = jax.random.split(key)
  return {"c": jnp.asarray(center, jnp.float32), "r": jnp.float32(0.6),
          "w": 0.3 * jax.random.normal(k1, (3, 3)), "b": 0.1 * jax.random.normal(k2, (3,))}


def _blob_density(p, x):
  d = jnp.sqrt(jnp.sum((x - p["c"]) ** 2, -1) + 1e-9)
  return jax.nn.softplus(20.0 * (p["r"] - d))


def _blob_field(p, x):
  sigma = _blob_density(p, x)
  g = jax.vmap(jax.grad(lambda y: _blob_density(p, y)))(x)
  n = -g / jnp.sqrt(jnp.sum(g * g, axis=-1, keepdims=True) + 1e-12)
  return sigma, jax.nn.sigmoid(x @ p["w"] + p["b"]), n


def _bg(p, dirs):
  return jnp.broadcast_to(jax.nn.sigmoid(p["rgb"]), dirs.shape)


def _init(key, object_center=(0.3, 0.0, 0.0)):
  kh, ko = jax.random.split(key)
  return {"human": _blob_init(kh), "object": _blob_init(ko, object_center),
          "bg_human": {"rgb": jnp.zeros(3)}, "bg_object": {"rgb": jnp.ones(3)}}


BLOB = model_lib.ModelFns(field=_blob_field, density=_blob_density, background=_bg, init=_init)


def _anchor(res=16, r=2.0, center=(0.0, 0.0, 0.0), radius=0.5, nan=False):
  lin = np.linspace(-r, r, res)
  g = np.stack(np.meshgrid(lin, lin, lin, indexing="ij"), -1)
  d = np.linalg.norm(g - np.asarray(center), axis=-1) - radius
  dist = np.abs(d).astype(np.float32)
  if nan:
    dist[:] = np.nan
  return Anchor(occupancy=jnp.asarray((d < 0).astype(np.float32)), distance=jnp.asarray(dist),
                vertices=jnp.zeros((3, 3)), faces=jnp.zeros((1, 3), jnp.int32),
                joints=jnp.zeros((55, 3)), head=jnp.array([0.0, 0.0, 0.45], jnp.float32),
                radius=r)


def _config(batch=1):
  cfg = hoi.get_config("smoke")
  cfg.render.height = cfg.render.width = H
  cfg.render.num_samples = 24
  cfg.render.sample_budget = 24       # no budget truncation: every sample is evaluated
  cfg.render.batch_size = batch
  cfg.occupancy.warmup_steps = 2
  cfg.occupancy.update_every = 2
  cfg.loss.geo_max_points = 1024
  cfg.train.steps = 6
  cfg.train.ckpt_every = 2
  cfg.train.val_every = 1000
  cfg.train.log_every = 1
  cfg.camera.trace_every = 3
  cfg.camera.trace_resolution = 8
  cfg.shading.ambient_only_steps = 3   # exercise both shading branches
  return cfg


def _guidance():
  gspec = core.GuidanceSpec(kind="gaussian", guidance_scale=2.0, weighting="uniform")
  abar = jnp.cumprod(1.0 - jnp.linspace(1e-4, 0.02, 1000))
  gparams = {"alphas_cumprod": abar, "mean": jnp.full((H, H, 3), 0.4), "std": jnp.float32(0.3)}
  text = {k: jax.random.normal(jax.random.PRNGKey(i), (4, 3, 5))
          for i, k in enumerate(["human", "head", "object", "interaction"])}
  text["uncond"] = jnp.zeros((3, 5))
  return gspec, gparams, text


@functools.lru_cache(maxsize=None)
def _spec(batch=1, devices=1):
  gspec, _, _ = _guidance()
  del devices  # the spec holds the global batch; the pmap binds the device count
  return setup_lib.train_spec(config_lib.parse(_config(batch)), gspec, model=BLOB)


def _frozen(nan_anchor=False):
  _, gparams, text = _guidance()
  return {"guidance": gparams, "text": text, "anchor": _anchor(nan=nan_anchor)}


def _norm(tree):
  return float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree_util.tree_leaves(tree)))


# --- Gradient wiring. ---------------------------------------------------------

TERMS = ("loss_sds_human", "loss_sds_head", "loss_sds_interaction", "loss_sds_object",
         "loss_geo_human", "loss_geo_object")


@pytest.mark.slow
def test_gradient_wiring():
  spec = _spec()
  state = train.init_state(jax.random.PRNGKey(0), spec)
  frozen = _frozen()
  key = jax.random.PRNGKey(3)

  @jax.jit
  def term_grads(params):
    f = lambda p: train.camera_losses(p, state, frozen, key, spec)[1]
    metrics, vjp = jax.vjp(f, params)
    # One backward trace, vmapped over one-hot cotangents (one per term).
    cots = {k: jnp.stack([jnp.asarray(k == t, v.dtype) for t in TERMS])
            for k, v in metrics.items()}
    grads = jax.vmap(lambda c: vjp(c)[0])(cots)
    out = {t: jax.tree_util.tree_map(lambda g, i=i: g[i], grads) for i, t in enumerate(TERMS)}
    return out, metrics

  grads, metrics = term_grads(state.params)
  for term in TERMS:
    assert np.isfinite(float(metrics[term])) and float(metrics[term]) != 0.0, term
  mine = {"loss_sds_human": "human", "loss_sds_head": "human",
          "loss_sds_interaction": "object", "loss_sds_object": "object",
          "loss_geo_human": "human", "loss_geo_object": "object"}
  for term, own in mine.items():
    other = "object" if own == "human" else "human"
    assert _norm(grads[term][own]) > 0.0, f"{term} must reach psi_{own}"
    assert _norm(grads[term][other]) == 0.0, f"{term} must not reach psi_{other}"
  # Geometry terms never touch the backgrounds; the interaction render does use one.
  for term in ("loss_geo_human", "loss_geo_object"):
    assert _norm(grads[term]["bg_human"]) + _norm(grads[term]["bg_object"]) == 0.0


def test_total_loss_is_eq8():
  spec = _spec()
  terms = {k[5:]: float(i + 1) for i, k in enumerate(
      TERMS + ("loss_orient", "loss_sparsity", "loss_opaque"))}
  w = {"lambda_object_sds": 0.3, "lambda_object_geo": 0.1, "lambda_orient": 50.0}
  expected = (1 + 2) + 3 + 0.3 * 4 + 5 + 0.1 * 6 + 50.0 * 7 + 1.0 * 8 + 0.0 * 9
  assert float(train.total_loss(terms, w, spec)) == pytest.approx(expected)


# --- Cameras and tracing. -----------------------------------------------------

def test_derived_cameras_follow_paper():
  spec = _spec()
  cam = camera_lib.sample_camera(jax.random.PRNGKey(1), spec.camera)
  c_o = jnp.array([0.5, -0.4, 0.2])
  head = jnp.array([0.0, 0.1, 0.7])
  cams = train.derived_cameras(cam, c_o, head, spec)
  pos = np.asarray(cam.position)
  expect = {"object": (0.7 * pos + c_o, c_o), "interaction": (0.8 * pos + c_o / 2, c_o / 2),
            "human": (0.7 * pos, np.zeros(3)), "head": (0.2 * pos + head, head)}
  for name, (centre, target) in expect.items():
    c2w = np.asarray(cams[name].c2w)
    np.testing.assert_allclose(c2w[:3, 3], centre, atol=1e-5)
    # Official (systems/interfusion.py forward): the sampled rotation c_mtx is kept.
    np.testing.assert_array_equal(c2w[:3, :3], np.asarray(cam.c2w)[:3, :3])
    np.testing.assert_allclose(np.asarray(cams[name].light_position),
                               np.asarray(cam.light_position) + np.asarray(target), atol=1e-6)


def test_camera_tracing_moves_to_off_centre_object():
  spec = _spec()
  true_c = np.array([0.9, -0.6, 0.4], np.float32)
  p = _blob_init(jax.random.PRNGKey(0), true_c)
  c = np.asarray(train.object_center(p, jnp.zeros(3), spec))
  # NumPy reference: cell centres with 1 - exp(-0.2 sigma) > 0.5.
  g, r = spec.settings.trace_resolution, spec.render.radius
  lin = ((np.arange(g) + 0.5) / g * 2 - 1) * r
  pts = np.stack(np.meshgrid(lin, lin, lin, indexing="ij"), -1).reshape(-1, 3)
  d = np.linalg.norm(pts - true_c, axis=-1)
  sigma = np.logaddexp(0.0, 20.0 * (0.6 - d))
  occ = 1 - np.exp(-0.2 * sigma) > 0.5
  np.testing.assert_allclose(c, pts[occ].mean(0), atol=1e-5)
  assert np.linalg.norm(c - true_c) < np.linalg.norm(true_c) * 0.5
  # Empty field: the previous centre is kept.
  p_empty = dict(p, r=jnp.float32(-5.0))
  prev = jnp.array([0.1, 0.2, 0.3])
  np.testing.assert_allclose(train.object_center(p_empty, prev, spec), prev)


def test_view_index_matches_threestudio_rule():
  spec = _spec()
  for el, az, want in [(0, 0, 0), (10, 44, 0), (10, 46, 1), (10, -100, 1), (10, 136, 2),
                       (10, -170, 2), (61, 0, 3), (59, 180, 2)]:
    got = int(train.camera_view_index(jnp.deg2rad(el), jnp.deg2rad(az), spec))
    assert got == want, (el, az)


# --- NaN skipping. --------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _jit_step():
  return jax.jit(train.make_train_step(_spec()))  # one compile, shared by the tests below


def test_nan_step_is_skipped_and_counted():
  spec = _spec()
  step = _jit_step()
  state = train.init_state(jax.random.PRNGKey(0), spec)
  bad = _frozen(nan_anchor=True)
  s1, m1 = step(state, bad, jax.random.PRNGKey(1))
  assert float(m1["skipped"]) == 1.0 and not np.isfinite(float(m1["loss"]))
  s2, _ = step(s1, bad, jax.random.PRNGKey(2))
  assert int(s2.consecutive_skips) == 2 and int(s2.total_skips) == 2 and int(s2.step) == 2
  for a, b in zip(jax.tree_util.tree_leaves((state.params, state.opt_state)),
                  jax.tree_util.tree_leaves((s2.params, s2.opt_state))):
    np.testing.assert_array_equal(a, b)
  s3, m3 = step(s2, _frozen(), jax.random.PRNGKey(3))
  assert float(m3["skipped"]) == 0.0 and int(s3.consecutive_skips) == 0
  assert int(s3.total_skips) == 2
  assert _norm(jax.tree_util.tree_map(lambda a, b: a - b, s3.params, s2.params)) > 0
  assert ckpt_lib.all_finite(s3)


def test_loop_aborts_after_consecutive_skips(tmp_path):
  cfg = _config()
  cfg.train.max_consecutive_skips = 2
  spec = _spec()
  scene = setup_lib.Scene(spec, _frozen(nan_anchor=True), None)
  paths = run_io.prepare_workdir(tmp_path)
  state = train.init_state(jax.random.PRNGKey(0), spec)
  with pytest.warns(UserWarning, match="non-finite"):
    with pytest.raises(loop.TooManySkipsError, match="2 consecutive"):
      _train_loop(state, scene, cfg, paths)
  assert ckpt_lib.latest_step(paths.checkpoints) is None or ckpt_lib.all_finite(
      ckpt_lib.restore_latest(ckpt_lib.make_manager(paths.checkpoints, 3), state)[1])


# --- Resume and multi-device equality. -------------------------------------------

def _train_loop(state, scene, cfg, paths, **kw):
  """The one loop on a single scene (a group of one)."""
  (out,), info = loop.train_loop([state], loop.single_group(scene, cfg, paths), progress=False,
                                 **kw)
  return out, info


def _leaves(state):
  return jax.tree_util.tree_leaves(jax.device_get(state))


def test_resume_is_bit_identical(tmp_path):
  cfg = _config()
  spec = _spec()
  scene = setup_lib.Scene(spec, _frozen(), None)
  fresh = lambda: train.init_state(jax.random.PRNGKey(cfg.seed), spec)
  # Uninterrupted run.
  full, _ = _train_loop(fresh(), scene, cfg, run_io.prepare_workdir(tmp_path / "a"))
  # "Killed" after 3 steps (checkpoint at 2 only), then resumed from disk.
  paths = run_io.prepare_workdir(tmp_path / "b")
  _train_loop(fresh(), scene, cfg, paths, stop_after=3)
  assert ckpt_lib.latest_step(paths.checkpoints) == 2
  state = loop.restore_or_init(cfg, spec, paths, resume=True)
  assert int(state.step) == 2
  resumed, _ = _train_loop(state, scene, cfg, paths)
  assert int(resumed.step) == int(full.step) == cfg.train.steps
  for a, b in zip(_leaves(full), _leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  rows = run_io.read_metrics(paths.metrics)
  assert [r["step"] for r in rows] == list(range(1, cfg.train.steps + 1))


def test_resume_flags(tmp_path):
  cfg = _config()
  spec = _spec()
  paths = run_io.prepare_workdir(tmp_path)
  with pytest.raises(setup_lib.TrainSetupError, match="no checkpoint"):
    loop.restore_or_init(cfg, spec, paths, resume=True)
  assert int(loop.restore_or_init(cfg, spec, paths, resume=None).step) == 0
  mgr = ckpt_lib.make_manager(paths.checkpoints, 2)
  ckpt_lib.save(mgr, 4, train.init_state(jax.random.PRNGKey(0), spec)._replace(
      step=jnp.int32(4)))
  with pytest.raises(setup_lib.TrainSetupError, match="--noresume"):
    loop.restore_or_init(cfg, spec, paths, resume=False)
  assert int(loop.restore_or_init(cfg, spec, paths, resume=None).step) == 4


def _replicate(tree, n):
  return jax.tree_util.tree_map(lambda x: jnp.stack([jnp.asarray(x)] * n), tree)


@pytest.mark.slow
def test_pmapped_step_equals_jitted_sharded_step():
  """The card's pmappable step: pmap over 4 devices (1 camera each, gradient pmean)
  equals the loop's jit with NamedSharding (4 cameras sharded over 4 devices) and
  the plain single-device jit."""
  assert jax.local_device_count() >= 4, "conftest forces 4 host devices"
  frozen = _frozen()
  spec = _spec(batch=4)
  s1 = train.init_state(jax.random.PRNGKey(0), spec)
  f1 = jax.jit(train.make_train_step(spec))
  pstep = jax.pmap(train.make_train_step(spec, axis_name="devices", num_shards=4),
                   axis_name="devices", in_axes=(0, 0, None))
  s4, fz4 = _replicate(s1, 4), _replicate(frozen, 4)
  sharded = loop.compile_group(spec, 1, num_devices=4)
  assert sharded.num_devices == 4
  ss = jax.device_put(loop.stack([s1]), sharded.scene_sharding)
  fzs = loop.place_frozen({"guidance": frozen["guidance"], "text": loop.stack([frozen["text"]]),
                           "anchor": loop.stack([frozen["anchor"]])}, sharded)
  for i in range(3):
    key = jax.random.PRNGKey(10 + i)
    s1, m1 = f1(s1, frozen, key)
    s4, m4 = pstep(s4, fz4, key)
    ss, ms = sharded.step(ss, fzs, key[None])
  assert float(m1["skipped"]) == 0.0
  np.testing.assert_allclose(float(m1["loss"]), float(m4["loss"][0]), rtol=1e-4)
  np.testing.assert_allclose(float(ms["loss"][0]), float(m4["loss"][0]), rtol=1e-4)
  for a, b, c in zip(jax.tree_util.tree_leaves(s1.params),
                     jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x: x[0], s4.params)),
                     jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x: x[0], ss.params))):
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(c, b, atol=1e-5)


@pytest.mark.slow
def test_vmap_over_scenes():
  spec = _spec()
  step = train.make_train_step(spec)
  s = train.init_state(jax.random.PRNGKey(0), spec)
  states = jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), s)
  frozen = _frozen()
  frozens = jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), frozen)
  keys = jnp.stack([jax.random.PRNGKey(1), jax.random.PRNGKey(2)])
  out, m = jax.jit(jax.vmap(step))(states, frozens, keys)
  single, ms = _jit_step()(s, frozen, jax.random.PRNGKey(2))
  np.testing.assert_allclose(float(m["loss"][1]), float(ms["loss"]), rtol=1e-4)
  for a, b in zip(jax.tree_util.tree_leaves(out.params), jax.tree_util.tree_leaves(single.params)):
    np.testing.assert_allclose(a[1], b, atol=1e-5)


def test_ctrl_c_writes_checkpoint_and_exits_cleanly(tmp_path, monkeypatch):
  cfg = _config()
  cfg.train.ckpt_every = 100
  spec = _spec()
  real = loop.cached_compile(spec, 1)
  calls = []

  def step(*args):
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt
    return real.step(*args)

  import dataclasses
  monkeypatch.setattr(loop, "cached_compile",
                      lambda *a, **k: dataclasses.replace(real, step=step))
  paths = run_io.prepare_workdir(tmp_path)
  state, info = _train_loop(train.init_state(jax.random.PRNGKey(0), spec),
                            setup_lib.Scene(spec, _frozen(), None), cfg, paths)
  assert info["interrupted"] and int(state.step) == 2
  assert ckpt_lib.latest_step(paths.checkpoints) == 2
  restored = loop.restore_or_init(cfg, spec, paths, resume=True)
  for a, b in zip(_leaves(state), _leaves(restored)):
    np.testing.assert_array_equal(a, b)


def test_sds_terms_hand_the_camera_direction_to_every_guidance_call(monkeypatch):
  """The four SDS calls of one camera all receive its unit direction [1, 3]
  (camera-conditioned backends such as the built-in prior read it)."""
  import types

  def fake_apply(spec, params, img, emb, uncond, key, *, t_max=None, camera=None):
    del spec, params, img, emb, uncond, key, t_max
    code = jnp.sum(camera * jnp.array([[1.0, 10.0, 100.0]]))
    return code, {"t": jnp.zeros((1,), jnp.int32), "grad_norm": jnp.float32(0.0)}

  monkeypatch.setattr(train.guidance_core, "guidance_apply", fake_apply)
  outs = {n: types.SimpleNamespace(rgb=jnp.zeros((4 * 4, 3))) for n in train.RENDERS}
  text = {n: jnp.zeros((4, 1, 5)) for n in train.RENDERS}
  text["uncond"] = jnp.zeros((1, 5))
  spec = types.SimpleNamespace(height=4, width=4, guidance=None)
  terms, _ = train.sds_terms(outs, {"text": text, "guidance": {}}, jnp.int32(1),
                             jax.random.PRNGKey(0), jnp.float32(0.98), spec,
                             jnp.array([0.0, 0.6, 0.8]))
  for n in train.RENDERS:
    np.testing.assert_allclose(float(terms[n]), 86.0, rtol=1e-6)


# --- Object blob at the placement rule's position (config.field.object_blob). --

def test_placement_blob_starts_at_the_origin_given_and_is_never_trained():
  import dataclasses
  from interfusion_jax.nerf import field as field_lib
  cfg = _config()
  cfg.field.object_blob = "placement"
  model = setup_lib.model_fns(config_lib.parse(cfg))   # the real hash-grid field
  spec = setup_lib.train_spec(config_lib.parse(cfg), _spec().guidance, model=model)
  origin = np.array([0.1, -0.35, -0.25], np.float32)
  state = train.init_state(jax.random.PRNGKey(0), spec, origin)
  np.testing.assert_array_equal(state.params["object"]["blob_center"], origin)
  np.testing.assert_array_equal(state.object_center, origin)
  np.testing.assert_array_equal(state.params["human"]["blob_center"], 0.0)
  # The official setting keeps the parameter tree of the paper.
  assert "blob_center" not in train.init_state(jax.random.PRNGKey(0), _spec()).params["object"]
  # The blob (raw density ~ 0 at init) is where the origin says.
  dens = model.density(state.params["object"], jnp.asarray(np.stack([origin, -origin])))
  assert float(dens[0]) > 5.0 and float(dens[1]) < 1.0
  step = jax.jit(train.make_train_step(spec))
  s = state
  for i in range(2):
    s, m = step(s, _frozen(), jax.random.PRNGKey(i))
  assert float(m["skipped"]) == 0.0
  np.testing.assert_array_equal(s.params["object"]["blob_center"], origin)
  moved = jax.tree_util.tree_map(lambda a, b: a - b, s.params["object"]["grid"],
                                 state.params["object"]["grid"])
  assert _norm(moved) > 0
  assert field_lib.blob_frame(s.params["object"], jnp.asarray(origin[None]))[0].tolist() == [0, 0, 0]


def test_object_origin_puts_the_named_object_where_the_prior_places_it():
  import types
  import warnings as _w
  from interfusion_jax.pose import library
  from interfusion_jax.prior import mannequin
  poses, orients, labels, _ = library.library_arrays()
  i = labels.index("sitting on a chair")
  body = mannequin.posed_mannequin(poses[i], orients[i])
  anchor = types.SimpleNamespace(vertices=body.vertices, faces=body.faces, joints=body.joints)
  cfg = hoi.get_config("cpu")
  assert cfg.field.object_blob == "placement"
  assert hoi.get_config("paper").field.object_blob == "origin"
  cfg.prompt.object = "a blue chair"
  o = setup_lib.object_origin(cfg, anchor)
  pelvis = np.asarray(body.joints)[0]
  # "under the pelvis": below it, within a chair's half-depth horizontally.
  assert o.shape == (3,) and o[2] < pelvis[2] - 0.1
  assert np.linalg.norm(o[:2] - pelvis[:2]) < 0.4
  cfg.prompt.object = "a spaceship"
  with pytest.warns(UserWarning, match="names no object of the built-in library"):
    assert setup_lib.object_origin(cfg, anchor) is None
  cfg.field.object_blob = "origin"
  with _w.catch_warnings():
    _w.simplefilter("error")
    assert setup_lib.object_origin(cfg, anchor) is None


def test_compilation_cache_keeps_small_programs(tmp_path):
  """enable_compilation_cache caches every program (JAX's default skips those that
  compile in under 1 s): a tiny jitted function leaves an entry, and a second
  process loads it instead of compiling. Subprocesses: the cache is set up once
  per process."""
  code = ("import jax, jax.numpy as jnp\n"
          "from interfusion_jax.stage2 import setup\n"
          "setup.enable_compilation_cache()\n"
          "print(float(jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(jnp.float32(0.5))))\n")
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"), JAX_PLATFORMS="cpu",
             JAX_LOG_COMPILES="1", XLA_FLAGS="")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  runs = [subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True,
                         text=True, timeout=120, check=True) for _ in range(2)]
  expected = math.sin(0.5) * 3.0 + 1.0
  assert all(abs(float(r.stdout.split()[-1]) - expected) < 1e-6 for r in runs)
  assert list((tmp_path / "cache").glob("jit__lambda*")), "no cache entry for a small program"
  assert "cache hit" not in runs[0].stderr and "cache hit for 'jit__lambda" in runs[1].stderr
