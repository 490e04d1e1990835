"""Score distillation sampling: CFG, weighting, gradient, loss, timesteps.

Everything here is pure, jittable and backend-agnostic (PAPER.md
"Score distillation").
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

WEIGHTINGS = ("uniform", "sds", "fantasia3d")
T_ANNEALS = ("none", "linear", "hifa_sqrt")


def classifier_free_guidance(eps_cond: jax.Array, eps_uncond: jax.Array,
                             guidance_scale: float | jax.Array) -> jax.Array:
  """PAPER.md "Classifier-free guidance": eps_hat = (1+s) eps_c - s eps_u.

  Args:
    eps_cond: [B, ...] conditional noise prediction.
    eps_uncond: [B, ...] unconditional (empty prompt) noise prediction.
    guidance_scale: scalar s.

  Returns:
    [B, ...] guided prediction (== eps_c + s (eps_c - eps_u), threestudio).
  """
  return eps_cond + guidance_scale * (eps_cond - eps_uncond)


def sds_weight(t: jax.Array, alphas_cumprod: jax.Array, weighting: str) -> jax.Array:
  """PAPER.md "Score distillation", w(t).

  Args:
    t: [B] integer timesteps in [0, T).
    alphas_cumprod: [T] abar_t of the DDPM schedule.
    weighting: "uniform" (1), "sds" (1 - abar_t) or "fantasia3d"
      (sqrt(abar_t) (1 - abar_t)).

  Returns:
    [B] float32 weights.
  """
  abar = jnp.asarray(alphas_cumprod, jnp.float32)[t]
  if weighting == "uniform":
    return jnp.ones_like(abar)
  if weighting == "sds":
    return 1.0 - abar
  if weighting == "fantasia3d":
    return jnp.sqrt(abar) * (1.0 - abar)
  raise ValueError(f"Unknown SDS weighting {weighting!r}; choose one of {list(WEIGHTINGS)}.")


def sds_gradient(eps_cond: jax.Array, eps_uncond: jax.Array, noise: jax.Array,
                 t: jax.Array, alphas_cumprod: jax.Array, *,
                 guidance_scale: float | jax.Array, weighting: str,
                 clip: float | None = None) -> jax.Array:
  """PAPER.md "Score distillation": w(t) (eps_hat - eps), eps_hat by CFG.

  grad = nan_to_num(w(t) * ((1+s) eps_cond - s eps_uncond - noise)), with
  non-finite entries set to 0 and, if ``clip`` is a positive number, clipped
  elementwise to [-clip, clip] (threestudio's ``grad_clip``).

  Args:
    eps_cond: [B, H, W, C] conditional prediction.
    eps_uncond: [B, H, W, C] unconditional prediction.
    noise: [B, H, W, C] the noise eps used to build x_t.
    t: [B] integer timesteps.
    alphas_cumprod: [T] DDPM abar_t.
    guidance_scale: scalar s.
    weighting: "uniform" | "sds" | "fantasia3d".
    clip: optional elementwise clip value (None or <= 0 disables).

  Returns:
    [B, H, W, C] float32 gradient with respect to the diffused image x.
  """
  eps_hat = classifier_free_guidance(eps_cond.astype(jnp.float32),
                                     eps_uncond.astype(jnp.float32), guidance_scale)
  return guided_sds_gradient(eps_hat, noise, t, alphas_cumprod, weighting=weighting, clip=clip)


def guided_sds_gradient(eps_hat: jax.Array, noise: jax.Array, t: jax.Array,
                        alphas_cumprod: jax.Array, *, weighting: str,
                        clip: float | None = None) -> jax.Array:
  """``sds_gradient`` from an already guided prediction (CFG or ``perp_neg_guidance``).

  grad = nan_to_num(w(t) * (eps_hat - noise)), clipped to [-clip, clip]
  when ``clip`` > 0.

  Args:
    eps_hat: [B, H, W, C] float32 guided prediction.
    noise, t, alphas_cumprod, weighting, clip: as ``sds_gradient``.

  Returns:
    [B, H, W, C] float32 gradient with respect to the diffused image x.
  """
  w = sds_weight(t, alphas_cumprod, weighting)
  w = w.reshape(w.shape + (1,) * (eps_hat.ndim - 1))
  grad = w * (eps_hat - noise.astype(jnp.float32))
  grad = jnp.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
  if clip is not None and clip > 0:
    grad = jnp.clip(grad, -clip, clip)
  return grad


def perpendicular_component(x: jax.Array, y: jax.Array) -> jax.Array:
  """The part of each sample of ``x`` perpendicular to the same sample of ``y``
  (threestudio ``perpendicular_component``).

  x - (<x, y> / max(<y, y>, 1e-6)) y, inner products over all but the first axis.

  Args:
    x, y: [B, ...].

  Returns:
    [B, ...].
  """
  axes = tuple(range(1, x.ndim))
  coef = jnp.sum(x * y, axis=axes) / jnp.maximum(jnp.sum(y * y, axis=axes), 1e-6)
  return x - coef.reshape(coef.shape + (1,) * (x.ndim - 1)) * y


def perp_neg_guidance(eps_pos: jax.Array, eps_uncond: jax.Array, eps_neg: jax.Array,
                      neg_weights: jax.Array, guidance_scale: float | jax.Array) -> jax.Array:
  """Perp-Neg's guided prediction (threestudio's perp-neg branch; not in the release).

  eps_hat = eps_u + s (e_pos + sum_k w_k perp(eps_neg_k - eps_u, e_pos)),
  e_pos = eps_pos - eps_u, ``perp`` = ``perpendicular_component``. With no
  negatives (all w_k = 0) it is eps_u + s (eps_pos - eps_u): threestudio's
  form, which differs from ``classifier_free_guidance`` by one e_pos.

  Args:
    eps_pos: [B, ...] prediction for the (interpolated) positive prompt.
    eps_uncond: [B, ...] prediction for the negative prompt ("" by default).
    eps_neg: [B, K, ...] predictions for the K view negatives.
    neg_weights: [B, K] their weights (<= 0 pushes away from them).
    guidance_scale: scalar s.

  Returns:
    [B, ...] float32 guided prediction.
  """
  eps_pos, eps_uncond, eps_neg = (jnp.asarray(e, jnp.float32)
                                  for e in (eps_pos, eps_uncond, eps_neg))
  e_pos = eps_pos - eps_uncond
  k = eps_neg.shape[1]
  acc = jnp.zeros_like(e_pos)
  for i in range(k):
    w = jnp.asarray(neg_weights, jnp.float32)[:, i]
    acc = acc + w.reshape(w.shape + (1,) * (e_pos.ndim - 1)) * perpendicular_component(
        eps_neg[:, i] - eps_uncond, e_pos)
  return eps_uncond + guidance_scale * (e_pos + acc)


def sds_loss(x: jax.Array, grad: jax.Array) -> jax.Array:
  """PAPER.md "Implementation trick": 0.5 ||x - sg(x - grad)||^2 / batch.

  Args:
    x: [B, ...] differentiable image/latent.
    grad: [B, ...] SDS gradient (treated as a constant).

  Returns:
    scalar loss. Its ``jax.grad`` with respect to ``x`` is ``grad / B``: each
    sample receives exactly its SDS gradient, averaged over the batch like
    threestudio (exactly ``grad`` for B = 1).
  """
  grad = jax.lax.stop_gradient(grad.astype(x.dtype))
  target = jax.lax.stop_gradient(x - grad)
  return 0.5 * jnp.sum(jnp.square(x - target)) / x.shape[0]


def timestep_bounds(t_min: float | jax.Array, t_max: float | jax.Array,
                    num_train_timesteps: int) -> tuple[jax.Array, jax.Array]:
  """Integer [lo, hi] timestep range from fractions, as in threestudio.

  Args:
    t_min, t_max: fractions of T (scalars, may be traced).
    num_train_timesteps: T.

  Returns:
    (lo, hi) int32 scalars, lo = int(t_min T), hi = int(t_max T), inclusive.
  """
  lo = jnp.floor(jnp.asarray(t_min, jnp.float32) * num_train_timesteps).astype(jnp.int32)
  hi = jnp.floor(jnp.asarray(t_max, jnp.float32) * num_train_timesteps).astype(jnp.int32)
  hi = jnp.clip(jnp.maximum(hi, lo), 0, num_train_timesteps - 1)
  return lo, hi


def sample_timesteps(key: jax.Array, batch: int, t_min: float | jax.Array,
                     t_max: float | jax.Array, num_train_timesteps: int) -> jax.Array:
  """PAPER.md "t ~ U[0.02, 0.98] * 1000": uniform integer timesteps.

  Args:
    key: PRNG key.
    batch: B.
    t_min, t_max: fractions of T; ``t_max`` may be a traced scalar (annealing).
    num_train_timesteps: T.

  Returns:
    [B] int32 timesteps uniform on {int(t_min T), ..., int(t_max T)}.
  """
  lo, hi = timestep_bounds(t_min, t_max, num_train_timesteps)
  return jax.random.randint(key, (batch,), lo, hi + 1, dtype=jnp.int32)


def anneal_t_max(step: int | jax.Array, total_steps: int, start: float, end: float,
                 kind: str) -> jax.Array:
  """Optional max-timestep annealing (threestudio; HiFA).

  ``linear``: t_max = start + (end - start) * r; ``hifa_sqrt``: t_max = start +
  (end - start) * sqrt(r), with r = clip(step / total_steps, 0, 1);
  ``none``: t_max = start.

  Args:
    step: scalar training step (may be traced).
    total_steps: number of steps over which to anneal.
    start: initial t_max fraction (e.g. 0.98).
    end: final t_max fraction (e.g. 0.5).
    kind: "none" | "linear" | "hifa_sqrt".

  Returns:
    scalar float32 t_max fraction.
  """
  r = jnp.clip(jnp.asarray(step, jnp.float32) / max(int(total_steps), 1), 0.0, 1.0)
  if kind == "none":
    return jnp.asarray(start, jnp.float32)
  if kind == "linear":
    return start + (end - start) * r
  if kind == "hifa_sqrt":
    return start + (end - start) * jnp.sqrt(r)
  raise ValueError(f"Unknown t_anneal {kind!r}; choose one of {list(T_ANNEALS)}.")


def add_noise(x: jax.Array, noise: jax.Array, t: jax.Array,
              alphas_cumprod: jax.Array) -> jax.Array:
  """PAPER.md "Score distillation": x_t = sqrt(abar_t) x + sqrt(1-abar_t) eps.

  Args:
    x: [B, H, W, C] clean image/latent.
    noise: [B, H, W, C] standard normal eps.
    t: [B] integer timesteps.
    alphas_cumprod: [T].

  Returns:
    [B, H, W, C] noisy x_t.
  """
  abar = jnp.asarray(alphas_cumprod, jnp.float32)[t]
  abar = abar.reshape(abar.shape + (1,) * (x.ndim - 1))
  return jnp.sqrt(abar) * x + jnp.sqrt(1.0 - abar) * noise
