"""Tests for interfusion_jax/guidance/builtin.py: exact posterior, captions, SDS."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from interfusion_jax.guidance import analytic, core
from interfusion_jax.prior import assets
from interfusion_jax.guidance import captions as colors
from interfusion_jax.guidance import builtin as denoiser


@pytest.fixture()
def builtin_backend(monkeypatch):
  """Registers the prior as guidance kind "builtin" if core does not yet."""
  if "builtin" not in core.BACKENDS:
    monkeypatch.setitem(core.BACKENDS, "builtin", (denoiser.encode, denoiser.predict_eps))
  return core


def brute_force_posterior_mean(x_t, a, b, bank, log_prior, s, tau):
  """float64 loop over mixture components (independent re-derivation)."""
  out = []
  for xi, ai, bi, lp in zip(x_t, a, b, log_prior):
    var = ai ** 2 * s ** 2 + bi ** 2
    logw = np.array([lp[i] - np.sum((xi - ai * m) ** 2) / (2 * var * tau)
                     for i, m in enumerate(bank)])
    w = np.exp(logw - logw.max())
    w /= w.sum()
    # Gaussian conditioning of x0 ~ N(m, s^2) on x_t = a x0 + b eps.
    comp = [m + ai * s ** 2 / var * (xi - ai * m) for m in bank]
    out.append(sum(wi * c for wi, c in zip(w, comp)))
  return np.stack(out)


@pytest.mark.parametrize("s, tau", [(0.0, 1.0), (0.3, 1.0), (0.1, 7.0)])
def test_posterior_mean_matches_brute_force(s, tau):
  rng = np.random.default_rng(0)
  bank = rng.uniform(-1, 1, (6, 12))
  x_t = rng.normal(size=(3, 12))
  abar = np.array([0.9, 0.5, 0.05])
  a, b = np.sqrt(abar), np.sqrt(1 - abar)
  lp = rng.normal(size=(3, 6))
  got = denoiser.posterior_mean(jnp.asarray(x_t, jnp.float32), jnp.asarray(a, jnp.float32),
                                jnp.asarray(b, jnp.float32), jnp.asarray(bank, jnp.float32),
                                jnp.asarray(lp, jnp.float32), s, tau)
  want = brute_force_posterior_mean(x_t, a, b, bank, lp, s, tau)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-4)


def test_unsmoothed_unconditional_denoiser_equals_guidance_targets_eps():
  rng = np.random.default_rng(1)
  bank = rng.uniform(-1, 1, (5, 4, 4, 3)).astype(np.float32)
  abar = jnp.asarray(np.linspace(0.999, 0.01, 1000), jnp.float32)
  x_t = jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32)
  t = jnp.array([100, 700])
  attrs = np.tile(denoiser.attributes_of(dict(kind="human")), (5, 1))
  emb = jnp.asarray(denoiser.embed_captions(["", ""]))
  ours = denoiser.denoise_eps(x_t, t, abar, jnp.asarray(bank), jnp.asarray(attrs), emb,
                              smoothing=0.0, temperature=1.0, mix=0.01)
  ref = analytic.targets_eps(x_t, t, abar, jnp.asarray(bank))
  np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=1e-4)


def test_log_prior_weights_match_numpy_product():
  rng = np.random.default_rng(2)
  attrs = np.stack([rng.integers(-1, n, 40) for n in denoiser.FACTOR_SIZES], 1)
  emb = np.concatenate([rng.dirichlet(np.ones(n)) for n in denoiser.FACTOR_SIZES])
  mix, view_mix = 0.1, 0.4
  want = np.zeros(40)
  start = 0
  for f, n in enumerate(denoiser.FACTOR_SIZES):
    q = emb[start:start + n]
    m = view_mix if f == 1 else mix
    for i in range(40):
      qa = q[attrs[i, f]] if attrs[i, f] >= 0 else 1.0 / n
      want[i] += np.log((1 - m) * qa + m / n)
    start += n
  got = denoiser.log_prior_weights(jnp.asarray(attrs), jnp.asarray(emb, jnp.float32), mix,
                                   view_mix)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


def test_camera_factor_is_a_von_mises_fisher_term_and_off_for_a_zero_direction():
  rng = np.random.default_rng(3)
  n = 30
  attrs = np.stack([rng.integers(-1, k, n) for k in denoiser.FACTOR_SIZES], 1)
  dirs = rng.normal(size=(n, 3))
  dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
  caption = np.concatenate([rng.dirichlet(np.ones(k)) for k in denoiser.FACTOR_SIZES])
  d = np.array([0.6, 0.0, 0.8])
  kappa = 5.0
  base = np.asarray(denoiser.log_prior_weights(jnp.asarray(attrs), jnp.asarray(caption, jnp.float32),
                                               0.1, 0.4))
  with_cam = denoiser.log_prior_weights(
      jnp.asarray(attrs), jnp.asarray(np.concatenate([caption, d]), jnp.float32), 0.1, 0.4,
      jnp.asarray(dirs, jnp.float32), kappa)
  np.testing.assert_allclose(np.asarray(with_cam), base + kappa * dirs @ d, rtol=1e-5, atol=1e-5)
  zero = denoiser.log_prior_weights(
      jnp.asarray(attrs), jnp.asarray(np.concatenate([caption, np.zeros(3)]), jnp.float32),
      0.1, 0.4, jnp.asarray(dirs, jnp.float32), kappa)
  np.testing.assert_allclose(np.asarray(zero), base, rtol=1e-6)


def test_sharpness_raises_the_prior_weights_to_a_power():
  """denoise_eps with sharpness lam is the brute-force posterior under pi_i^lam."""
  rng = np.random.default_rng(4)
  n, r = 7, 3
  bank = rng.uniform(-1, 1, (n, r, r, 3)).astype(np.float32)
  attrs = np.stack([rng.integers(-1, k, n) for k in denoiser.FACTOR_SIZES], 1)
  dirs = rng.normal(size=(n, 3))
  dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
  emb = np.concatenate([denoiser.embed_caption("a photo of a red chair, side view")[0],
                        [0.0, 0.6, 0.8]]).astype(np.float32)
  abar = np.linspace(0.999, 0.01, 1000).astype(np.float32)
  t = np.array([30, 400])
  x_t = rng.normal(size=(2, r, r, 3)).astype(np.float32)
  lam, kappa, s, tau = 5.0, 3.0, 0.1, 4.0
  got = denoiser.denoise_eps(jnp.asarray(x_t), jnp.asarray(t), jnp.asarray(abar),
                             jnp.asarray(bank), jnp.asarray(attrs),
                             jnp.asarray(np.stack([emb, emb])[:, None]), smoothing=s,
                             temperature=tau, mix=0.01, view_mix=0.5,
                             dirs=jnp.asarray(dirs, jnp.float32), camera_kappa=kappa,
                             sharpness=lam)
  lp = np.asarray(denoiser.log_prior_weights(jnp.asarray(attrs), jnp.asarray(emb), 0.01, 0.5,
                                             jnp.asarray(dirs, jnp.float32), kappa), np.float64)
  a, b = np.sqrt(abar[t].astype(np.float64)), np.sqrt(1 - abar[t].astype(np.float64))
  x0 = brute_force_posterior_mean(x_t.reshape(2, -1).astype(np.float64), a, b,
                                  bank.reshape(n, -1).astype(np.float64),
                                  np.stack([lam * lp, lam * lp]), s, tau)
  want = (x_t.reshape(2, -1) - a[:, None] * x0) / b[:, None]
  np.testing.assert_allclose(np.asarray(got).reshape(2, -1), want, atol=2e-3, rtol=1e-3)


def test_object_sharpness_applies_to_object_and_interaction_captions_only():
  """Per-caption lambda: a human caption uses ``sharpness``, an object and an
  interaction caption ``object_sharpness``, the empty caption halfway; each
  row equals the brute-force posterior under pi_i^lambda(y)."""
  rng = np.random.default_rng(5)
  n, r = 9, 3
  bank = rng.uniform(-1, 1, (n, r, r, 3)).astype(np.float32)
  attrs = np.stack([rng.integers(-1, k, n) for k in denoiser.FACTOR_SIZES], 1)
  caps = ["a man in a red shirt, side view", "a blue chair, side view",
          "a man in a red shirt sitting on a blue chair", ""]
  embs = denoiser.embed_captions(caps)                               # [4, 1, E]
  lam, lam_o = 2.0, 7.0
  np.testing.assert_allclose(
      denoiser.caption_sharpness(jnp.asarray(embs[:, 0]), lam, lam_o),
      [lam, lam_o, lam_o, 0.5 * (lam + lam_o)], rtol=1e-6)
  abar = np.linspace(0.999, 0.01, 1000).astype(np.float32)
  t = np.array([50, 50, 50, 50])
  x_t = rng.normal(size=(4, r, r, 3)).astype(np.float32)
  s, tau = 0.1, 4.0
  got = denoiser.denoise_eps(jnp.asarray(x_t), jnp.asarray(t), jnp.asarray(abar),
                             jnp.asarray(bank), jnp.asarray(attrs), jnp.asarray(embs),
                             smoothing=s, temperature=tau, mix=0.01, view_mix=0.5,
                             sharpness=lam, object_sharpness=lam_o)
  a, b = np.sqrt(abar[t].astype(np.float64)), np.sqrt(1 - abar[t].astype(np.float64))
  lams = np.array([lam, lam_o, lam_o, 0.5 * (lam + lam_o)])
  lp = np.stack([np.asarray(denoiser.log_prior_weights(jnp.asarray(attrs), jnp.asarray(e[0]),
                                                      0.01, 0.5), np.float64) for e in embs])
  x0 = brute_force_posterior_mean(x_t.reshape(4, -1).astype(np.float64), a, b,
                                  bank.reshape(n, -1).astype(np.float64),
                                  lams[:, None] * lp, s, tau)
  want = (x_t.reshape(4, -1) - a[:, None] * x0) / b[:, None]
  np.testing.assert_allclose(np.asarray(got).reshape(4, -1), want, atol=2e-3, rtol=1e-3)
  # Without object_sharpness every caption uses ``sharpness`` (the old behaviour).
  same = denoiser.denoise_eps(jnp.asarray(x_t), jnp.asarray(t), jnp.asarray(abar),
                              jnp.asarray(bank), jnp.asarray(attrs), jnp.asarray(embs),
                              smoothing=s, temperature=tau, mix=0.01, view_mix=0.5,
                              sharpness=lam)
  x0 = brute_force_posterior_mean(x_t.reshape(4, -1).astype(np.float64), a, b,
                                  bank.reshape(n, -1).astype(np.float64), lam * lp, s, tau)
  want = (x_t.reshape(4, -1) - a[:, None] * x0) / b[:, None]
  np.testing.assert_allclose(np.asarray(same).reshape(4, -1), want, atol=2e-3, rtol=1e-3)


def test_camera_conditioned_sds_pulls_toward_the_image_seen_from_that_side(builtin_backend):
  """Two bank images with the same caption, a red one seen from +x and a blue
  one from -x: SDS from a camera at +x pushes the render red, from -x blue;
  a text-only spec (no camera factor) cannot tell them apart."""
  bank = np.zeros((2, 8, 8, 3), np.uint8)
  bank[0, ..., 0] = 255
  bank[1, ..., 2] = 255
  attrs = np.tile(denoiser.attributes_of(dict(kind="object", object="ball")), (2, 1))
  params = denoiser.make_params(bank, attrs, denoiser.PriorSpec(camera_kappa=8.0),
                                dirs=np.array([[1.0, 0, 0], [-1.0, 0, 0]]))
  emb = jnp.asarray(denoiser.embed_captions(["a photo of a ball"] * 4))
  unc = jnp.asarray(denoiser.embed_caption(""))
  x = jnp.full((4, 8, 8, 3), 0.5)
  key = jax.random.PRNGKey(0)
  red_minus_blue = {}
  for cond in (True, False):
    spec = builtin_backend.GuidanceSpec(kind="builtin", guidance_scale=0.0, weighting="uniform",
                                        camera_conditioning=cond)
    for side in (1.0, -1.0):
      cam = jnp.tile(jnp.array([[side, 0.0, 0.0]]), (4, 1))
      g = jax.grad(lambda im: builtin_backend.guidance_apply(spec, params, im, emb, unc, key,
                                                             camera=cam)[0])(x)
      step = -np.asarray(g).reshape(-1, 3).sum(0)
      red_minus_blue[cond, side] = step[0] - step[2]
  assert red_minus_blue[True, 1.0] > 0 > red_minus_blue[True, -1.0]
  np.testing.assert_allclose(red_minus_blue[False, 1.0], red_minus_blue[False, -1.0], rtol=1e-5)
  with pytest.raises(ValueError, match="camera"):
    builtin_backend.guidance_apply(
        builtin_backend.GuidanceSpec(kind="builtin", guidance_scale=1.0, weighting="uniform",
                                     camera_conditioning=True), params, x, emb, unc, key)


@pytest.mark.parametrize("caption, want", [
    ("a photo of a man in a red shirt riding a blue bike, front view, 8K, HD",
     dict(kind="interaction", view="front", human_color="red", object="bicycle",
          object_color="blue")),
    ("a photo of the head of a woman in a green shirt, back view, 8K, HD",
     dict(kind="head", view="back", human_color="green", object=None, object_color=None)),
    # The official wording: view suffix last, "head of" without "the".
    ("a photo of head of a woman in a green shirt, 8K, HD, back view",
     dict(kind="head", view="back", human_color="green", object=None, object_color=None)),
    ("a photo of a man in a red shirt riding a blue bike, 8K, HD, front view",
     dict(kind="interaction", view="front", human_color="red", object="bicycle",
          object_color="blue")),
    ("a photo of a yellow couch, overhead view, 8K, HD",
     dict(kind="object", view="overhead", human_color=None, object="sofa",
          object_color="yellow")),
    ("a man wearing a WORLD lettered T-shirt, side view",
     dict(kind="human", view="side", human_color=None, object=None, object_color=None)),
    ("", dict(kind=None, view=None, human_color=None, object=None, object_color=None)),
    # A colourless object caption stands for the object's typical colour; an
    # interaction caption leaves the object colour open.
    ("a photo of a bike, side view",
     dict(kind="object", view="side", human_color=None, object="bicycle",
          object_color="red")),
    ("a man wearing a WORLD lettered T-shirt riding a bike",
     dict(kind="interaction", view=None, human_color=None, object="bicycle",
          object_color=None)),
])
def test_parse_caption(caption, want):
  assert denoiser.parse_caption(caption) == want


def test_empty_caption_embeds_uniform_and_named_factors_one_hot():
  e = denoiser.embed_caption("")
  assert e.shape == (1, denoiser.EMBED_DIM)
  start = 0
  for n in denoiser.FACTOR_SIZES:
    np.testing.assert_allclose(e[0, start:start + n], 1.0 / n)
    start += n
  e = denoiser.embed_caption("a photo of a blue chair, side view")[0]
  kinds = e[:4]
  assert kinds[denoiser.KINDS.index("object")] == 1.0 and kinds.sum() == 1.0


# --- A tiny real bank and SDS through the guidance interface. ----------------

COLOURS = ("red", "blue", "green", "yellow", "purple", "orange")


@pytest.fixture(scope="module")
def tiny_bank():
  spec = assets.BankSpec(objects=("chair", "bicycle"), colors=COLOURS, human_views=2,
                         head_views=1, object_views=2, interaction_views=1,
                         placement_resolution=48, body="mannequin")
  return assets.build_bank(spec, progress=False)


def _sds_images(core_mod, params, captions, steps=120, scale=10.0):
  """Optimises one free 32x32 image per caption (batched) with SDS + Adam."""
  spec = core_mod.GuidanceSpec(kind="builtin", guidance_scale=scale, weighting="uniform")
  emb = jnp.asarray(denoiser.embed_captions(captions))
  unc = jnp.asarray(denoiser.embed_caption(""))
  opt = optax.adam(0.03)

  @jax.jit
  def run(x):
    def body(i, carry):
      x, st = carry
      g = jax.grad(lambda im: core_mod.guidance_apply(
          spec, params, im, emb, unc, jax.random.PRNGKey(i))[0])(x)
      up, st = opt.update(g, st)
      return jnp.clip(optax.apply_updates(x, up), 0.0, 1.0), st
    return jax.lax.fori_loop(0, steps, body, (x, opt.init(x)))[0]

  return np.asarray(run(jnp.full((len(captions), 32, 32, 3), 0.5)))


PAIRS = (("red", "blue"), ("green", "yellow"), ("purple", "orange"))


@pytest.mark.slow
def test_sds_with_the_prior_reaches_the_named_colours(builtin_backend, tiny_bank):
  """3 (clothing, object) colour pairs: a free grey image driven by SDS with
  the prior ends with its saturated pixels' mean hue within 30 deg of the
  colour its caption names."""
  params = assets.prior_params(tiny_bank)
  captions, wanted = [], []
  for human, obj in PAIRS:
    captions += [f"a photo of a man in a {human} shirt, front view, 8K, HD",
                 f"a photo of a {obj} chair, side view, 8K, HD"]
    wanted += [human, obj]
  imgs = _sds_images(builtin_backend, params, captions)
  for img, caption, colour in zip(imgs, captions, wanted):
    hue = colors.mean_hue(img, min_saturation=0.3)
    assert colors.hue_distance(hue, colors.color_hue(colour)) <= 30, (caption, hue)
    # It moved: some pixels are now saturated (the start is flat grey).
    assert (colors.rgb_to_hsv(img.reshape(-1, 3))[:, 1] > 0.3).mean() > 0.01


def test_guidance_apply_plugs_in_and_pulls_toward_the_caption(builtin_backend, tiny_bank):
  params = assets.prior_params(tiny_bank)
  spec = builtin_backend.GuidanceSpec(kind="builtin", guidance_scale=10.0,
                                      weighting="uniform")
  unc = jnp.asarray(denoiser.embed_caption(""))
  x = jnp.full((8, 48, 48, 3), 0.5)   # trainer-size renders, resized by encode
  f = jax.jit(jax.value_and_grad(lambda im, emb, k: builtin_backend.guidance_apply(
      spec, params, im, jnp.broadcast_to(emb, (8,) + emb.shape), unc, k)[0]))
  steps = {}
  for colour in ("red", "green"):
    emb = jnp.asarray(denoiser.embed_caption(f"a photo of a man in a {colour} shirt"))
    loss, g = f(x, emb, jax.random.PRNGKey(0))   # same t and noise for both
    assert np.isfinite(float(loss)) and g.shape == x.shape
    steps[colour] = -np.asarray(g).reshape(-1, 3).sum(0)
  # Same noise, different caption: the red caption's descent step pushes
  # the red-minus-green opponent channel up, the green caption's pushes it
  # down (white/grey silhouette differences cancel in R - G).
  opponent = {c: s[0] - s[1] for c, s in steps.items()}
  assert opponent["red"] > 0 > opponent["green"]


def test_make_params_rejects_bad_banks():
  with pytest.raises(ValueError, match="uint8"):
    denoiser.make_params(np.zeros((2, 4, 4, 3), np.float32), np.zeros((2, 5), np.int32))
  with pytest.raises(ValueError, match="attrs"):
    denoiser.make_params(np.zeros((2, 4, 4, 3), np.uint8), np.zeros((2, 3), np.int32))
  with pytest.raises(ValueError, match="dirs"):
    denoiser.make_params(np.zeros((2, 4, 4, 3), np.uint8), np.zeros((2, 5), np.int32),
                         dirs=np.zeros((3, 3)))
  with pytest.raises(ValueError, match="camera_kappa"):
    denoiser.PriorSpec(camera_kappa=-1.0)
  with pytest.raises(ValueError, match="sharpness"):
    denoiser.PriorSpec(sharpness=0.5)
  with pytest.raises(ValueError, match="object_sharpness"):
    denoiser.PriorSpec(object_sharpness=0.0)


def test_every_object_has_a_visible_typical_colour():
  from interfusion_jax.prior import objects
  from interfusion_jax.guidance import captions as colors
  assert set(objects.TYPICAL_COLORS) == set(objects.OBJECT_NAMES)
  for name, c in objects.TYPICAL_COLORS.items():
    assert c in colors.COLOR_NAMES and c != "white", name
