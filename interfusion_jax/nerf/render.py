"""Ray marching, volume rendering, Eq. 6 two-field compositing and shading.

Everything is a pure function with static shapes. The main entry points:

* ``render_rays(field_fn, params, rays_o, rays_d, background, spec, ...)``:
  one field (human, object or head render).
* ``render_two_fields(field_fn_h, params_h, field_fn_o, params_o, ...)``: the
  interaction render; both fields are marched on SHARED samples and
  composited per sample with PAPER.md Eq. 6 (``composite_two_fields``).

A ``field_fn(params, x [M, 3]) -> (sigma [M], albedo [M, 3], normals [M, 3])``
is a plain (static) callable, so tests can pass closed-form analytic fields.

Empty-space skipping (see docs/rendering.md): every ray gets N samples at step
sqrt(3) * 2r / N inside the box (one random offset per ray, as nerfacc's
``stratified`` marching in the official code); samples in occupied grid cells
are packed, across the WHOLE ray batch, into a fixed budget of R * B slots
(``jnp.nonzero(..., size=R * B)``); on overflow a per-ray water-filling rule
drops each ray's deepest occupied samples first (``compact_indices``) and
counts them (``num_dropped``); a training run then grows B
(``grown_sample_budget``, stage2/budget.py). The fields are evaluated only on those
R * B points, and the results are scattered back to the dense [R, N] layout
for volume rendering (which is cheap). Without an occupancy grid (or with
``skip_empty=False``) all R * N samples are evaluated.

Pruning (official nerfacc sampling with ``sigma_fn``, PAPER.md renderer row):
with a grid, a sample whose alpha is below min(alpha_threshold, mean grid
occupancy), and every sample after the ray's transmittance fell below
``early_stop_eps``, is dropped (``visible_samples``). The official code
evaluates the density twice (no-grad to prune, then with grad on the
survivors); here the fields are evaluated once on the budget slots and the
pruned samples are masked out, which gives the same colours, weights and
gradients as long as no occupied sample is dropped (``num_dropped`` == 0).
"""
import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from interfusion_jax.nerf import camera as camera_lib
from interfusion_jax.nerf import occupancy as occ_lib

FieldFn = Callable[[Any, jnp.ndarray], tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]]

ALPHA_MODES = ("sum_clamped", "union")


class RenderConfigError(ValueError):
  """A render setting is invalid."""


@dataclasses.dataclass(frozen=True)
class RenderSpec:
  """Static renderer settings (config.render + config.field.radius).

  ``sample_budget`` is the AVERAGE number of field evaluations per ray when
  skipping empty space; the whole batch of R rays shares R * sample_budget
  evaluation slots.
  """
  radius: float = 2.0
  num_samples: int = 512
  sample_budget: int = 64
  skip_empty: bool = True
  alpha_mode: str = "sum_clamped"
  stop_human_grad: bool = True
  composite_eps: float = 1e-6
  near: float = 0.0
  field_chunks: int = 1
  alpha_threshold: float = 0.01
  early_stop_eps: float = 1e-4

  def __post_init__(self):
    if self.alpha_mode not in ALPHA_MODES:
      raise RenderConfigError(
          f"alpha_mode={self.alpha_mode!r} is unknown; choose one of {ALPHA_MODES} "
          "(config.render.alpha_mode).")
    if not 0 < self.sample_budget <= self.num_samples:
      raise RenderConfigError(
          f"sample_budget={self.sample_budget} must be in [1, num_samples="
          f"{self.num_samples}] (config.render.sample_budget; 0 = automatic).")
    if self.field_chunks < 1:
      raise RenderConfigError(
          f"field_chunks={self.field_chunks} must be >= 1 (config.render.field_chunks).")
    if self.radius <= 0:
      raise RenderConfigError(f"radius={self.radius} must be positive (config.field.radius).")
    if not (0.0 <= self.alpha_threshold < 1.0 and 0.0 <= self.early_stop_eps < 1.0):
      raise RenderConfigError(
          f"alpha_threshold={self.alpha_threshold} and early_stop_eps={self.early_stop_eps} "
          "must be in [0, 1) (config.render.alpha_threshold / early_stop_eps; 0 = off).")

  @property
  def step(self) -> float:
    """Marching step sqrt(3) * 2r / N."""
    return math.sqrt(3.0) * 2.0 * self.radius / self.num_samples


# ----------------------------------------------------------------------------
# Shading.
# ----------------------------------------------------------------------------


class Shading(NamedTuple):
  """Traced shading parameters (so changing them never retraces).

  light_position: [3] or [R, 3]; ambient, diffuse: scalars; textureless:
  scalar in {0, 1} (1 = grey "textureless" shading, albedo ignored).
  """
  light_position: jnp.ndarray
  ambient: jnp.ndarray
  diffuse: jnp.ndarray
  textureless: jnp.ndarray


def albedo_shading() -> Shading:
  """Plain albedo (ambient 1, diffuse 0): the ambient-only shading."""
  return Shading(jnp.zeros(3, jnp.float32), jnp.float32(1.0), jnp.float32(0.0),
                 jnp.float32(0.0))


@dataclasses.dataclass(frozen=True)
class ShadingSpec:
  """Static shading settings (config.shading; official diffuse_with_point_light)."""
  ambient_light: float = 0.1
  diffuse_light: float = 0.9
  soft: bool = True
  diffuse_prob: float = 0.75
  textureless_prob: float = 0.5


def sample_shading(key, light_position, ambient_only, spec: ShadingSpec) -> Shading:
  """The official shading augmentation of ONE training render (or one field of it).

  Mode (official ``DiffuseWithPointLightMaterial``): albedo while
  ``ambient_only``; otherwise albedo with probability 1 - diffuse_prob, else
  textureless with probability textureless_prob, else diffuse (defaults:
  albedo 25 %, textureless 37.5 %, diffuse 37.5 %). Light colours: with
  ``soft`` diffuse ~ U(0, 1) and ambient = 1 - diffuse, else the fixed
  (ambient_light, diffuse_light). Albedo is ambient 1, diffuse 0.

  Args:
    key: PRNG key.
    light_position: [3] light position (from camera.Camera.light_position).
    ambient_only: 0-d bool (see schedules.ambient_only).
    spec: shading spec.

  Returns:
    Shading.
  """
  k_mode, k_tex, k_soft = jax.random.split(key, 3)
  if spec.soft:
    dif = jax.random.uniform(k_soft)
    amb = 1.0 - dif
  else:
    amb, dif = jnp.float32(spec.ambient_light), jnp.float32(spec.diffuse_light)
  albedo = ambient_only | (jax.random.uniform(k_mode) > spec.diffuse_prob)
  tex = jax.random.uniform(k_tex) < spec.textureless_prob
  return Shading(
      light_position=jnp.asarray(light_position, jnp.float32),
      ambient=jnp.where(albedo, 1.0, amb).astype(jnp.float32),
      diffuse=jnp.where(albedo, 0.0, dif).astype(jnp.float32),
      textureless=jnp.where(albedo, 0.0, tex.astype(jnp.float32)).astype(jnp.float32))


def shading_mode(shading: Shading) -> jnp.ndarray:
  """0 albedo, 1 textureless, 2 diffuse (int32; scalar or batched Shading)."""
  albedo = (shading.diffuse == 0.0) & (shading.ambient == 1.0) & (shading.textureless == 0.0)
  return jnp.where(albedo, 0, jnp.where(shading.textureless > 0.5, 1, 2)).astype(jnp.int32)


def shade(albedo, normals, points, light_position, shading: Shading) -> jnp.ndarray:
  """Diffuse point-light shading (threestudio ``diffuse_with_point_light``).

  light = ambient + diffuse * max(0, n . normalize(light_pos - x));
  rgb = light (textureless) or clamp(albedo * light, 0, 1).

  Args:
    albedo, normals, points: [..., 3].
    light_position: broadcastable to [..., 3].
    shading: Shading (scalar ambient / diffuse / textureless).

  Returns:
    [..., 3] shaded colour.
  """
  to_light = light_position - points
  to_light = to_light / jnp.maximum(jnp.linalg.norm(to_light, axis=-1, keepdims=True), 1e-8)
  cos = jnp.maximum(jnp.sum(normals * to_light, axis=-1, keepdims=True), 0.0)
  light = shading.ambient + shading.diffuse * cos
  light = jnp.broadcast_to(light, albedo.shape)
  lit = jnp.clip(albedo * light, 0.0, 1.0)
  return jnp.where(shading.textureless > 0.5, jnp.clip(light, 0.0, 1.0), lit)


def normals_to_image(normal, opacity, background=1.0) -> jnp.ndarray:
  """Display normal map: (n + 1) / 2 over a background.

  Args:
    normal: [..., 3] weight-accumulated normals (``RenderOutput.normal``).
    opacity: [...] accumulated opacity.
    background: scalar or [..., 3] background colour.

  Returns:
    [..., 3] in [0, 1].
  """
  n = normal / jnp.maximum(jnp.linalg.norm(normal, axis=-1, keepdims=True), 1e-6)
  img = 0.5 * (n + 1.0)
  o = opacity[..., None]
  return jnp.clip(o * img + (1.0 - o) * background, 0.0, 1.0)


# ----------------------------------------------------------------------------
# Sampling.
# ----------------------------------------------------------------------------


def intersect_box(rays_o, rays_d, radius: float, near: float = 0.0):
  """Slab test of rays against the box [-r, r]^3.

  Args:
    rays_o, rays_d: [R, 3] origins and directions.
    radius: box half-size.
    near: minimum distance along the ray.

  Returns:
    (t_near [R], t_far [R], hit [R] bool); t_near >= near.
  """
  d = jnp.where(jnp.abs(rays_d) < 1e-9, jnp.where(rays_d < 0, -1e-9, 1e-9), rays_d)
  t0 = (-radius - rays_o) / d
  t1 = (radius - rays_o) / d
  t_near = jnp.maximum(jnp.max(jnp.minimum(t0, t1), axis=-1), near)
  t_far = jnp.min(jnp.maximum(t0, t1), axis=-1)
  hit = t_far > t_near
  return t_near, jnp.where(hit, t_far, t_near), hit


class RaySamples(NamedTuple):
  """Samples along R rays: t [R, N] positions, delta [R, N] interval lengths,
  mask [R, N] (inside the box)."""
  t: jnp.ndarray
  delta: jnp.ndarray
  mask: jnp.ndarray


def stratified_samples(t_near, t_far, num_samples: int, step: float,
                       key=None) -> RaySamples:
  """N intervals of length ``step`` per ray, with one random offset per ray.

  Interval k of a ray is [s + k step, min(s + (k + 1) step, t_far)] with
  s = t_near + u step, u ~ U(0, 1) drawn once per ray (``key``; nerfacc's
  stratified marching in the official code) or u = 0 (``key`` None, eval);
  the sample sits at the interval's midpoint. The intervals cover
  [s, t_far] when the chord is <= N * step (always true for
  step = sqrt(3) 2r / N).

  Args:
    t_near, t_far: [R].
    num_samples: N (static).
    step: interval length.
    key: optional PRNG key of the per-ray offsets.

  Returns:
    RaySamples with [R, N] arrays.
  """
  k = jnp.arange(num_samples, dtype=jnp.float32)
  if key is None:
    u = jnp.zeros(t_near.shape + (1,), jnp.float32)
  else:
    u = jax.random.uniform(key, t_near.shape + (1,), jnp.float32)
  lo = t_near[:, None] + (u + k) * step
  hi = jnp.minimum(lo + step, t_far[:, None])
  delta = jnp.maximum(hi - lo, 0.0)
  return RaySamples(t=lo + 0.5 * delta, delta=delta, mask=delta > 0.0)


def sample_points(rays_o, rays_d, t) -> jnp.ndarray:
  """x = o + t d. rays_o, rays_d [R, 3], t [R, N] -> [R, N, 3]."""
  return rays_o[:, None, :] + t[..., None] * rays_d[:, None, :]


def water_fill_level(counts, num_samples: int, budget_total: int):
  """Largest J <= N with sum_r min(n_r, J) <= M, and the slots left at that level.

  Args:
    counts: [R] int occupied samples per ray (each <= N).
    num_samples: N (static).
    budget_total: M.

  Returns:
    (J scalar int32, extra scalar int32 = M - sum_r min(n_r, J)).
  """
  r = counts.shape[0]
  hist = jnp.zeros((num_samples + 1,), jnp.int32).at[counts].add(1)
  rays_above = r - jnp.cumsum(hist)[:-1]                   # [N]: #rays with n_r > j
  used = jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(rays_above)])  # C(J)
  level = jnp.sum(used <= budget_total).astype(jnp.int32) - 1
  return level, (budget_total - used[level]).astype(jnp.int32)


def compact_indices(mask, budget_total: int):
  """Packs the True entries of ``mask`` [R, N] into ``budget_total`` slots.

  Per-ray water filling: every ray keeps its first J occupied samples, with J
  the largest level that fits (the remaining slots go to the (J+1)-th
  occupied sample of the first rays), so when the batch has more than M
  occupied samples each ray loses only its DEEPEST ones, and rays with few
  occupied samples give their share to the others.

  Args:
    mask: [R, N] bool.
    budget_total: M (static).

  Returns:
    (flat [M] int32 indices into the row-major R * N layout (sorted; unused
    slots hold the out-of-range index R * N, so gathers and scatters must
    drop or fill them), valid [M] bool, dropped scalar int32: occupied
    samples that did not fit).
  """
  m = mask.astype(jnp.int32)
  rank = jnp.cumsum(m, axis=-1) - 1                     # rank among the ray's occupied
  counts = jnp.sum(m, axis=-1)
  level, extra = water_fill_level(counts, mask.shape[1], budget_total)
  at_level = mask & (rank == level)
  extra_rank = jnp.cumsum(at_level.reshape(-1).astype(jnp.int32)).reshape(mask.shape)
  keep = mask & ((rank < level) | (at_level & (extra_rank <= extra)))
  (flat,) = jnp.nonzero(keep.reshape(-1), size=budget_total, fill_value=mask.size)
  total = jnp.sum(counts)
  valid = jnp.arange(budget_total) < jnp.minimum(total, budget_total)
  return flat.astype(jnp.int32), valid, jnp.maximum(total - budget_total, 0)


def grown_sample_budget(budget: int, dropped: int, num_rays: int, maximum: int) -> int:
  """The next per-ray budget after a render of ``num_rays`` rays overflowed ``budget``.

  A render that dropped ``dropped`` occupied samples had R * budget + dropped
  of them, so every one fits from a per-ray budget of
  budget + ceil(dropped / R). The next budget is the smallest budget * 2^k
  (k >= 1: at least doubled, so a few growths reach any size and the set of
  compiled sizes stays small) that fits, capped at ``maximum``.

  Args:
    budget: the current per-ray budget (``RenderSpec.sample_budget``).
    dropped: occupied samples the render dropped (``RenderOutput.num_dropped``;
      the largest over the renders that share the budget); 0 keeps ``budget``.
    num_rays: R, rays of that render.
    maximum: the cap (at most ``num_samples``; at ``num_samples`` nothing can
      be dropped).

  Returns:
    The new per-ray budget, in [budget, max(budget, maximum)].
  """
  if dropped <= 0 or budget >= maximum:
    return budget
  needed = budget + -(-int(dropped) // int(num_rays))
  grown = 2 * budget
  while grown < needed:
    grown *= 2
  return min(grown, maximum)


def _scatter(values, flat, valid, total: int):
  """Scatters [M, ...] values to [total, ...] (zeros elsewhere); invalid slots are dropped.

  Unused slots carry the out-of-range index ``total`` (``compact_indices``), so
  they write nowhere (and their cotangent is zero).
  """
  v = jnp.where(valid.reshape(valid.shape + (1,) * (values.ndim - 1)), values, 0)
  return jnp.zeros((total,) + values.shape[1:], values.dtype).at[flat].add(v, mode="drop")


def _slot_points(flat_points, flat, valid):
  """Points of the packed slots: [R * N, 3] -> [M, 3].

  Unused slots take distinct samples (slot m -> sample m mod R * N) instead of
  one shared index: their outputs are dropped and their cotangents are zero,
  but every gather and scatter they feed downstream (hash-grid rows,
  occupancy) then spreads over many rows instead of piling onto one.
  """
  total = flat_points.shape[0]
  spread = jnp.arange(flat.shape[0], dtype=jnp.int32) % total
  return flat_points[jnp.where(valid, flat, spread)]


class _Evaluated(NamedTuple):
  sigma: jnp.ndarray    # [R, N]
  albedo: jnp.ndarray   # [R, N, 3]
  normals: jnp.ndarray  # [R, N, 3]


def call_field_chunked(field_fn: FieldFn, params, x, chunks: int):
  """field_fn on x [M, 3] in ``chunks`` rematerialised pieces (lax.map + checkpoint).

  With chunks > 1 the backward pass keeps only one chunk's field
  intermediates alive at a time (peak memory / chunks, ~1 extra forward).

  Returns:
    (sigma [M], albedo [M, 3], normals [M, 3]).
  """
  if chunks <= 1:
    return field_fn(params, x)
  m = x.shape[0]
  size = -(-m // chunks)
  xp = jnp.pad(x, ((0, size * chunks - m), (0, 0))).reshape(chunks, size, 3)
  body = jax.checkpoint(lambda xc: field_fn(params, xc))
  s, a, n = jax.lax.map(body, xp)
  return s.reshape(-1)[:m], a.reshape(-1, 3)[:m], n.reshape(-1, 3)[:m]


def _evaluate_fields(field_fns, params, points, eval_plan, chunks: int = 1):
  """Evaluates each field densely or on the packed slots; returns [R, N] layouts."""
  r, n, _ = points.shape
  flat_points = points.reshape(-1, 3)
  outs = []
  if eval_plan is None:
    for fn, p in zip(field_fns, params):
      s, a, nr = call_field_chunked(fn, p, flat_points, chunks)
      outs.append(_Evaluated(s.reshape(r, n), a.reshape(r, n, 3), nr.reshape(r, n, 3)))
    return outs
  flat, valid = eval_plan
  x = _slot_points(flat_points, flat, valid)
  for fn, p in zip(field_fns, params):
    s, a, nr = call_field_chunked(fn, p, x, chunks)
    outs.append(_Evaluated(_scatter(s, flat, valid, r * n).reshape(r, n),
                           _scatter(a, flat, valid, r * n).reshape(r, n, 3),
                           _scatter(nr, flat, valid, r * n).reshape(r, n, 3)))
  return outs


# ----------------------------------------------------------------------------
# Volume rendering.
# ----------------------------------------------------------------------------


def density_to_alpha(sigma, delta) -> jnp.ndarray:
  """alpha = 1 - exp(-sigma * delta). [..., S] -> [..., S]."""
  return 1.0 - jnp.exp(-jnp.maximum(sigma, 0.0) * delta)


def compositing_weights(alpha):
  """Front-to-back weights w_i = alpha_i prod_{j<i} (1 - alpha_j) (PAPER.md Eq. 6, x^I).

  Args:
    alpha: [..., S] in [0, 1].

  Returns:
    (weights [..., S], transmittance [..., S] before each sample).
  """
  one_minus = 1.0 - alpha
  trans = jnp.cumprod(
      jnp.concatenate([jnp.ones_like(alpha[..., :1]), one_minus[..., :-1]], axis=-1),
      axis=-1)
  return alpha * trans, trans


def visible_samples(alpha, alpha_threshold, early_stop_eps) -> jnp.ndarray:
  """Samples kept by the official pruning (nerfacc ``render_visibility_from_alpha``).

  A sample is visible when its transmittance (before it) is >= early_stop_eps
  and its alpha >= alpha_threshold; 0 disables either rule.

  Args:
    alpha: [R, N] per-sample alphas (0 where no sample).
    alpha_threshold, early_stop_eps: scalars (traced is fine).

  Returns:
    [R, N] bool.
  """
  _, trans = compositing_weights(alpha)
  return (trans >= early_stop_eps) & (alpha >= alpha_threshold)


def prune_threshold(occupancy, spec: "RenderSpec"):
  """min(spec.alpha_threshold, mean grid occupancy) (official nerfacc sampling).

  A bare bitfield (no EMA values) gives spec.alpha_threshold.
  """
  if isinstance(occupancy, occ_lib.OccupancyGrid):
    return jnp.minimum(spec.alpha_threshold, jnp.mean(occupancy.density))
  return jnp.float32(spec.alpha_threshold)


def accumulate(weights, values) -> jnp.ndarray:
  """sum_i w_i v_i. weights [..., S], values [..., S, C] -> [..., C]."""
  return jnp.einsum("...s,...sc->...c", weights, values)


def composite_two_fields(alpha_h, rgb_h, alpha_o, rgb_o, *, mode: str = "sum_clamped",
                         stop_human_grad: bool = True, eps: float = 1e-6):
  """Per-sample two-field compositing, PAPER.md Eq. 6.

  Implements PAPER.md Eq. 6 (with ``compositing_weights`` for the w_i^I).

  c_I = (alpha_H c_H + alpha_O c_O) / max(alpha_H + alpha_O, eps);
  alpha_I = clamp(alpha_O + alpha_H, 0, 1) ("sum_clamped", official) or
  1 - (1 - alpha_H)(1 - alpha_O) ("union", summed densities). With
  ``stop_human_grad`` the human alpha and colour are stop-gradded (the
  official "gradient truncation": the interaction render only updates the
  object).

  Args:
    alpha_h, alpha_o: [..., S] per-sample alphas.
    rgb_h, rgb_o: [..., S, C] per-sample colours (C = 3; normals work too).
    mode: "sum_clamped" | "union".
    stop_human_grad: stop gradients into alpha_h / rgb_h.
    eps: floor of the colour denominator.

  Returns:
    (alpha_i [..., S], rgb_i [..., S, C]).
  """
  if mode not in ALPHA_MODES:
    raise RenderConfigError(f"mode={mode!r} is unknown; choose one of {ALPHA_MODES}.")
  if stop_human_grad:
    alpha_h = jax.lax.stop_gradient(alpha_h)
    rgb_h = jax.lax.stop_gradient(rgb_h)
  if mode == "sum_clamped":
    alpha_i = jnp.clip(alpha_o + alpha_h, 0.0, 1.0)
  else:
    alpha_i = 1.0 - (1.0 - alpha_h) * (1.0 - alpha_o)
  denom = jnp.maximum(alpha_h + alpha_o, eps)[..., None]
  rgb_i = (alpha_h[..., None] * rgb_h + alpha_o[..., None] * rgb_o) / denom
  return alpha_i, rgb_i


class RenderOutput(NamedTuple):
  """Per-ray and per-sample render results (R rays, N samples per ray).

  rgb [R, 3] composited over the background; opacity [R]; depth [R]
  (sum_i w_i t_i, not normalised by opacity); normal [R, 3] (sum_i w_i n_i,
  world space); weights, sigma, alpha, t [R, N]; points, normals [R, N, 3];
  dirs [R, 3] unit ray directions; mask [R, N] samples whose field values are
  real (inside the box, occupied and within the budget); num_evaluated,
  num_dropped: scalars (field evaluation slots used; occupied samples lost to
  the budget). ``aux`` holds per-field [R, N] arrays of the two-field render
  (sigma_h, sigma_o, alpha_h, alpha_o); empty for one field. num_pruned:
  scalar, evaluated samples dropped by the alpha / transmittance pruning
  (``mask`` excludes them).
  """
  rgb: jnp.ndarray
  opacity: jnp.ndarray
  depth: jnp.ndarray
  normal: jnp.ndarray
  weights: jnp.ndarray
  sigma: jnp.ndarray
  alpha: jnp.ndarray
  t: jnp.ndarray
  points: jnp.ndarray
  normals: jnp.ndarray
  dirs: jnp.ndarray
  mask: jnp.ndarray
  num_evaluated: jnp.ndarray
  num_dropped: jnp.ndarray
  aux: dict
  num_pruned: jnp.ndarray = 0


def _march(rays_o, rays_d, spec: RenderSpec, occupancy, key):
  """Shared front half: samples, points, and the packed evaluation plan."""
  rays_d = rays_d / jnp.maximum(jnp.linalg.norm(rays_d, axis=-1, keepdims=True), 1e-12)
  t_near, t_far, _ = intersect_box(rays_o, rays_d, spec.radius, spec.near)
  samples = stratified_samples(t_near, t_far, spec.num_samples, spec.step, key)
  points = sample_points(rays_o, rays_d, samples.t)
  r, n = samples.t.shape
  if occupancy is None or not spec.skip_empty:
    return rays_d, samples, points, samples.mask, None, jnp.int32(r * n), jnp.int32(0)
  bitfield = occupancy.bitfield if isinstance(occupancy, occ_lib.OccupancyGrid) else occupancy
  occupied = samples.mask & occ_lib.query_occupancy(
      bitfield, jax.lax.stop_gradient(points), spec.radius)
  flat, valid, dropped = compact_indices(occupied, r * spec.sample_budget)
  mask = jnp.zeros((r * n,), bool).at[flat].max(valid, mode="drop").reshape(r, n)
  return rays_d, samples, points, mask, (flat, valid), jnp.int32(r * spec.sample_budget), dropped


def _prune(mask, alphas, occupancy, plan, spec: RenderSpec):
  """The march's mask minus the pruned samples (kept if visible in ANY of ``alphas``).

  No pruning without a grid (dense rendering) or with both rules off. The
  interaction render passes each field's own alphas, as the official
  ``sampling_`` keeps a sample visible in either field.

  Returns:
    (mask [R, N] bool, num_pruned scalar int32).
  """
  if plan is None or (spec.alpha_threshold <= 0.0 and spec.early_stop_eps <= 0.0):
    return mask, jnp.int32(0)
  thr = prune_threshold(occupancy, spec)
  visible = functools.reduce(jnp.logical_or, [
      visible_samples(jax.lax.stop_gradient(a), thr, spec.early_stop_eps) for a in alphas])
  kept = mask & visible
  return kept, jnp.sum(mask & ~visible).astype(jnp.int32)


def _finish(alpha, rgb, normals, sigma, samples, points, rays_d, mask, background,
            num_eval, dropped, aux, num_pruned=0) -> RenderOutput:
  weights, _ = compositing_weights(alpha)
  opacity = jnp.sum(weights, axis=-1)
  bg = jnp.broadcast_to(jnp.asarray(background, jnp.float32), rgb.shape[:1] + (3,))
  return RenderOutput(
      rgb=accumulate(weights, rgb) + (1.0 - opacity)[:, None] * bg,
      opacity=opacity, depth=jnp.sum(weights * samples.t, axis=-1),
      normal=accumulate(weights, normals), weights=weights, sigma=sigma, alpha=alpha,
      t=samples.t, points=points, normals=normals, dirs=rays_d, mask=mask,
      num_evaluated=num_eval, num_dropped=dropped, aux=aux, num_pruned=num_pruned)


def _light(shading: Shading, r: int):
  return jnp.broadcast_to(jnp.asarray(shading.light_position, jnp.float32), (r, 3))[:, None, :]


def render_rays(field_fn: FieldFn, params, rays_o, rays_d, background,
                spec: RenderSpec, *, occupancy=None, key=None,
                shading: Optional[Shading] = None) -> RenderOutput:
  """Volume-renders one field along R rays.

  Args:
    field_fn: static callable (params, x [M, 3]) -> (sigma [M], albedo [M, 3],
      normals [M, 3]).
    params: field parameters (pytree).
    rays_o, rays_d: [R, 3] (directions are normalised here).
    background: [3] or [R, 3] background colour.
    spec: RenderSpec.
    occupancy: OccupancyGrid (or its [G, G, G] bitfield) to skip empty space;
      None renders densely.
    key: PRNG key for the per-ray sample offsets; None = no offset.
    shading: Shading; None = albedo.

  Returns:
    RenderOutput (see its docstring for shapes).
  """
  shading = albedo_shading() if shading is None else shading
  rays_d, samples, points, mask, plan, n_eval, dropped = _march(
      rays_o, rays_d, spec, occupancy, key)
  (ev,) = _evaluate_fields((field_fn,), (params,), points, plan, spec.field_chunks)
  alpha = density_to_alpha(jnp.where(mask, ev.sigma, 0.0), samples.delta)
  mask, pruned = _prune(mask, (alpha,), occupancy, plan, spec)
  sigma = jnp.where(mask, ev.sigma, 0.0)
  alpha = jnp.where(mask, alpha, 0.0)          # the pruned mask is inside the march's
  rgb = shade(ev.albedo, ev.normals, points, _light(shading, points.shape[0]), shading)
  return _finish(alpha, rgb, ev.normals, sigma, samples, points, rays_d, mask,
                 background, n_eval, dropped, {}, pruned)


def render_two_fields(field_fn_h: FieldFn, params_h, field_fn_o: FieldFn, params_o,
                      rays_o, rays_d, background, spec: RenderSpec, *,
                      occupancy=None, key=None,
                      shading: Optional[Shading] = None,
                      shading_o: Optional[Shading] = None) -> RenderOutput:
  """The interaction render x^I: both fields on shared samples, Eq. 6 per sample.

  Each field is shaded with its own albedo, normals and shading draw, then
  alphas, colours and normals are composited with ``composite_two_fields``
  (spec.alpha_mode, spec.stop_human_grad, spec.composite_eps) and
  volume-rendered. A sample survives pruning when it is visible in either
  field (official ``sampling_``).

  Args:
    field_fn_h, params_h: human field (callable static) and its parameters.
    field_fn_o, params_o: object field and its parameters.
    rays_o, rays_d, background, spec, occupancy, key: as render_rays. The
      occupancy grid should hold the summed density of both fields.
    shading: the human field's Shading (None = albedo); shading_o: the
      object field's (None = the same as ``shading``). Both share the light.

  Returns:
    RenderOutput; ``sigma`` is sigma_h + sigma_o, ``aux`` has sigma_h, sigma_o,
    alpha_h, alpha_o [R, N].
  """
  shading = albedo_shading() if shading is None else shading
  shading_o = shading if shading_o is None else shading_o
  rays_d, samples, points, mask, plan, n_eval, dropped = _march(
      rays_o, rays_d, spec, occupancy, key)
  ev_h, ev_o = _evaluate_fields((field_fn_h, field_fn_o), (params_h, params_o),
                                points, plan, spec.field_chunks)
  light = _light(shading, points.shape[0])
  alphas = [density_to_alpha(jnp.where(mask, ev.sigma, 0.0), samples.delta)
            for ev in (ev_h, ev_o)]
  mask, pruned = _prune(mask, alphas, occupancy, plan, spec)
  sig_h = jnp.where(mask, ev_h.sigma, 0.0)
  sig_o = jnp.where(mask, ev_o.sigma, 0.0)
  a_h, a_o = (jnp.where(mask, a, 0.0) for a in alphas)
  c_h = shade(ev_h.albedo, ev_h.normals, points, light, shading)
  c_o = shade(ev_o.albedo, ev_o.normals, points, light, shading_o)
  kw = dict(mode=spec.alpha_mode, stop_human_grad=spec.stop_human_grad,
            eps=spec.composite_eps)
  alpha, rgb = composite_two_fields(a_h, c_h, a_o, c_o, **kw)
  _, normals = composite_two_fields(a_h, ev_h.normals, a_o, ev_o.normals, **kw)
  aux = dict(sigma_h=sig_h, sigma_o=sig_o, alpha_h=a_h, alpha_o=a_o)
  return _finish(alpha, rgb, normals, sig_h + sig_o, samples, points, rays_d, mask,
                 background, n_eval, dropped, aux, pruned)


def camera_rays(camera, height: int, width: int):
  """Flattened rays of a camera.Camera: (rays_o [H*W, 3], rays_d [H*W, 3])."""
  o, d = camera_lib.pinhole_rays(camera.c2w, camera.fovy, height, width)
  return o.reshape(-1, 3), d.reshape(-1, 3)


def to_image(out: RenderOutput, height: int, width: int) -> dict:
  """Per-ray outputs reshaped to images: rgb/normal [H, W, 3], opacity/depth [H, W]."""
  return dict(rgb=out.rgb.reshape(height, width, 3),
              opacity=out.opacity.reshape(height, width),
              depth=out.depth.reshape(height, width),
              normal=out.normal.reshape(height, width, 3))
