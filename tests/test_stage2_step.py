"""stage2/step.py: gradient wiring, Eq. 8, the derived cameras, camera tracing, the
view rule, NaN skipping, pmap / sharded-jit and vmap equality, on the blob scene
(tests/blob_scene.py).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blob_scene import _blob_init, _config, _spec, _frozen, _norm
from interfusion_jax.nerf import camera as camera_lib
from interfusion_jax.stage2 import checkpoint as ckpt_lib
from interfusion_jax.stage2 import config as config_lib
from interfusion_jax.stage2 import loop
from interfusion_jax.stage2 import setup as setup_lib
from interfusion_jax.stage2 import step as step_lib


TERMS = ("loss_sds_human", "loss_sds_head", "loss_sds_interaction", "loss_sds_object",
         "loss_geo_human", "loss_geo_object")


@pytest.mark.slow
def test_gradient_wiring():
  spec = _spec()
  state = step_lib.init_state(jax.random.PRNGKey(0), spec)
  frozen = _frozen()
  key = jax.random.PRNGKey(3)

  @jax.jit
  def term_grads(params):
    f = lambda p: step_lib.camera_losses(p, state, frozen, key, spec)[1]
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
  assert float(step_lib.total_loss(terms, w, spec)) == pytest.approx(expected)


def test_derived_cameras_follow_paper():
  spec = _spec()
  cam = camera_lib.sample_camera(jax.random.PRNGKey(1), spec.camera)
  c_o = jnp.array([0.5, -0.4, 0.2])
  head = jnp.array([0.0, 0.1, 0.7])
  cams = step_lib.derived_cameras(cam, c_o, head, spec)
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
  c = np.asarray(step_lib.object_center(p, jnp.zeros(3), spec))
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
  np.testing.assert_allclose(step_lib.object_center(p_empty, prev, spec), prev)


def test_view_index_matches_threestudio_rule():
  spec = _spec()
  for el, az, want in [(0, 0, 0), (10, 44, 0), (10, 46, 1), (10, -100, 1), (10, 136, 2),
                       (10, -170, 2), (61, 0, 3), (59, 180, 2)]:
    got = int(step_lib.camera_view_index(jnp.deg2rad(el), jnp.deg2rad(az), spec))
    assert got == want, (el, az)


@functools.lru_cache(maxsize=None)
def _jit_step():
  return jax.jit(step_lib.make_train_step(_spec()))  # one compile, shared by the tests below


def test_nan_step_is_skipped_and_counted():
  spec = _spec()
  step = _jit_step()
  state = step_lib.init_state(jax.random.PRNGKey(0), spec)
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
  s1 = step_lib.init_state(jax.random.PRNGKey(0), spec)
  f1 = jax.jit(step_lib.make_train_step(spec))
  pstep = jax.pmap(step_lib.make_train_step(spec, axis_name="devices", num_shards=4),
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
  step = step_lib.make_train_step(spec)
  s = step_lib.init_state(jax.random.PRNGKey(0), spec)
  states = jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), s)
  frozen = _frozen()
  frozens = jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), frozen)
  keys = jnp.stack([jax.random.PRNGKey(1), jax.random.PRNGKey(2)])
  out, m = jax.jit(jax.vmap(step))(states, frozens, keys)
  single, ms = _jit_step()(s, frozen, jax.random.PRNGKey(2))
  np.testing.assert_allclose(float(m["loss"][1]), float(ms["loss"]), rtol=1e-4)
  for a, b in zip(jax.tree_util.tree_leaves(out.params), jax.tree_util.tree_leaves(single.params)):
    np.testing.assert_allclose(a[1], b, atol=1e-5)


def test_sds_terms_hand_the_camera_direction_to_every_guidance_call(monkeypatch):
  """The four SDS calls of one camera all receive its unit direction [1, 3]
  (camera-conditioned backends such as the built-in prior read it)."""
  import types

  def fake_apply(spec, params, img, emb, uncond, key, *, t_max=None, camera=None):
    del spec, params, img, emb, uncond, key, t_max
    code = jnp.sum(camera * jnp.array([[1.0, 10.0, 100.0]]))
    return code, {"t": jnp.zeros((1,), jnp.int32), "grad_norm": jnp.float32(0.0)}

  monkeypatch.setattr(step_lib.guidance_core, "guidance_apply", fake_apply)
  outs = {n: types.SimpleNamespace(rgb=jnp.zeros((4 * 4, 3))) for n in step_lib.RENDERS}
  text = {n: jnp.zeros((4, 1, 5)) for n in step_lib.RENDERS}
  text["uncond"] = jnp.zeros((1, 5))
  spec = types.SimpleNamespace(height=4, width=4, guidance=None, perp_neg=None)
  terms, _ = step_lib.sds_terms(outs, {"text": text, "guidance": {}}, jnp.int32(1),
                             jax.random.PRNGKey(0), jnp.float32(0.98), spec,
                             jnp.array([0.0, 0.6, 0.8]))
  for n in step_lib.RENDERS:
    np.testing.assert_allclose(float(terms[n]), 86.0, rtol=1e-6)


@pytest.mark.parametrize("perp_neg", [False, True])
def test_the_negative_prompt_is_the_unconditional_branch_of_all_four_sds_calls(
    monkeypatch, perp_neg):
  """config.prompt.negative -> the scene's text table (here the built-in prior's
  caption encoder) -> the ``uncond`` of every SDS call, with and without Perp-Neg
  (whose overhead negatives, weight 0, are the negative prompt too)."""
  import types
  from configs import hoi
  from interfusion_jax.guidance import builtin

  def fake_apply(spec, params, img, emb, uncond, key, *, t_max=None, camera=None,
                 neg_emb=None, neg_weights=None):
    del spec, params, img, key, t_max, camera
    code = jnp.sum(uncond)
    if neg_emb is not None:
      code = code + 10.0 * jnp.sum(neg_emb) + 100.0 * jnp.sum(jnp.abs(neg_weights) + 1.0)
    return code, {"t": jnp.zeros((1,), jnp.int32), "grad_norm": jnp.float32(0.0)}

  monkeypatch.setattr(step_lib.guidance_core, "guidance_apply", fake_apply)
  cfg = hoi.get_config("smoke")
  cfg.prompt.negative = "a horse"
  cfg.guidance.perp_neg = perp_neg
  run = config_lib.parse(cfg)
  text = setup_lib.text_table(run, "builtin")
  want = float(np.sum(builtin.embed_captions(["a horse"])[0]))
  assert want != float(np.sum(builtin.embed_captions([""])[0]))
  outs = {n: types.SimpleNamespace(rgb=jnp.zeros((4 * 4, 3))) for n in step_lib.RENDERS}
  spec = types.SimpleNamespace(height=4, width=4, guidance=None,
                               perp_neg=config_lib.perp_neg_spec(run))
  assert (spec.perp_neg is not None) == perp_neg
  terms, _ = step_lib.sds_terms(outs, {"text": text, "guidance": {}}, jnp.int32(3),
                                jax.random.PRNGKey(0), jnp.float32(0.98), spec,
                                azimuth_deg=jnp.float32(30.0))   # view 3: overhead
  expect = want + (10.0 * 2 * want + 100.0 * 2 if perp_neg else 0.0)
  for n in step_lib.RENDERS:
    np.testing.assert_allclose(float(terms[n]), expect, rtol=1e-5)


def test_perp_neg_sds_terms_with_a_prompt_blind_denoiser_are_the_cfg_terms():
  """The blob scene's Gaussian denoiser ignores the prompt, so eps_pos = eps_u =
  eps_neg: Perp-Neg's eps_u + s (e_pos + sum_k w_k perp(...)) and CFG's eps_c +
  s (eps_c - eps_u) are both that eps. The config switch, setup and the vmapped
  4 x 4 batch must then give CFG's four losses and image gradients."""
  import types
  from blob_scene import BLOB, H, _guidance
  cfg = _config()
  cfg.guidance.perp_neg = True
  spec_pn = setup_lib.train_spec(config_lib.parse(cfg), _guidance()[0], model=BLOB)
  assert spec_pn.perp_neg is not None and _spec().perp_neg is None
  images = jax.random.uniform(jax.random.PRNGKey(1), (4, H * H, 3))

  @functools.partial(jax.jit, static_argnums=0)
  def terms(spec, imgs, az):
    def f(x):
      outs = {n: types.SimpleNamespace(rgb=x[i]) for i, n in enumerate(step_lib.RENDERS)}
      t, _ = step_lib.sds_terms(outs, _frozen(), jnp.int32(0), jax.random.PRNGKey(2),
                                jnp.float32(0.98), spec, azimuth_deg=az)
      return sum(t.values()), t
    return jax.value_and_grad(f, has_aux=True)(imgs)

  for az in (20.0, 150.0):
    (l_pn, t_pn), g_pn = terms(spec_pn, images, jnp.float32(az))
    (l_cfg, t_cfg), g_cfg = terms(_spec(), images, jnp.float32(az))
    assert float(l_cfg) > 0.0
    for n in step_lib.RENDERS:
      np.testing.assert_allclose(float(t_pn[n]), float(t_cfg[n]), rtol=1e-5, err_msg=n)
    np.testing.assert_allclose(g_pn, g_cfg, rtol=1e-5, atol=1e-6)   # float32 rounding


def test_placement_blob_starts_at_the_origin_given_and_is_never_trained():
  from interfusion_jax.nerf import field as field_lib
  cfg = _config()
  cfg.field.object_blob = "placement"
  model = setup_lib.model_fns(config_lib.parse(cfg))   # the real hash-grid field
  spec = setup_lib.train_spec(config_lib.parse(cfg), _spec().guidance, model=model)
  origin = np.array([0.1, -0.35, -0.25], np.float32)
  state = step_lib.init_state(jax.random.PRNGKey(0), spec, origin)
  np.testing.assert_array_equal(state.params["object"]["blob_center"], origin)
  np.testing.assert_array_equal(state.object_center, origin)
  np.testing.assert_array_equal(state.params["human"]["blob_center"], 0.0)
  # The official setting keeps the parameter tree of the paper.
  assert "blob_center" not in step_lib.init_state(jax.random.PRNGKey(0), _spec()).params["object"]
  # The blob (raw density ~ 0 at init) is where the origin says.
  dens = model.density(state.params["object"], jnp.asarray(np.stack([origin, -origin])))
  assert float(dens[0]) > 5.0 and float(dens[1]) < 1.0
  step = jax.jit(step_lib.make_train_step(spec))
  s = state
  for i in range(2):
    s, m = step(s, _frozen(), jax.random.PRNGKey(i))
  assert float(m["skipped"]) == 0.0
  np.testing.assert_array_equal(s.params["object"]["blob_center"], origin)
  moved = jax.tree_util.tree_map(lambda a, b: a - b, s.params["object"]["grid"],
                                 state.params["object"]["grid"])
  assert _norm(moved) > 0
  assert field_lib.blob_frame(s.params["object"], jnp.asarray(origin[None]))[0].tolist() == [0, 0, 0]
