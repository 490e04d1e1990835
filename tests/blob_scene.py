"""A closed-form stage-2 scene for fast step, loop and sweep tests.

A tiny "blob" field (a handful of parameters) behind the same ``ModelFns``
interface as the hash-grid field, an analytic Gaussian denoiser standing in for
the diffusion model and a spherical anchor: the whole step (renders, Eq. 6
compositing, SDS, geometry, optimizer, pmap) runs while compiling in seconds.
The real field and a real-format guidance model run in test_train_smoke.py.
"""
import functools
import os
import types
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from configs import hoi
from interfusion_jax.body.anchor import Anchor
from interfusion_jax.guidance import core
from interfusion_jax.nerf import model as model_lib
from interfusion_jax.stage2 import config as config_lib
from interfusion_jax.stage2 import setup as setup_lib


if not jax.config.jax_compilation_cache_dir:  # persistent XLA cache: reruns compile fast
  jax.config.update("jax_compilation_cache_dir",
                    os.environ.get("JAX_COMPILATION_CACHE_DIR", "/tmp/interfusion_jax_test_cache"))


H = 8


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


def patch_setup(monkeypatch, anchor=None):
  """Makes stage2.setup load the blob world: the blob field, the Gaussian denoiser,
  per-prompt random embeddings and the sphere anchor (for sweeps and loop.run).

  Args:
    anchor: ``prepare_anchor``'s stand-in, (config, paths) -> (anchor, pose);
      default the sphere, with NaN distances when the object prompt has the
      word "nan" (a scene that goes non-finite).
  """
  gspec, gparams, _ = _guidance()

  def table(config, kind=None):
    del kind
    seed = zlib.crc32(str(config.prompt.human + config.prompt.object).encode())
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    t = {k: jax.random.normal(keys[i], (4, 3, 5))
         for i, k in enumerate(["human", "head", "object", "interaction"])}
    t["uncond"] = jnp.zeros((3, 5))
    return t

  def sphere(config, paths):
    del paths
    return (_anchor(nan="nan" in config.prompt.object.split()),
            types.SimpleNamespace(meta={"source": "t"}))

  monkeypatch.setattr(setup_lib, "load_guidance_and_text", lambda c: (gspec, gparams, table(c)))
  monkeypatch.setattr(setup_lib, "text_table", table)
  monkeypatch.setattr(setup_lib, "model_fns", lambda run: BLOB)
  monkeypatch.setattr(setup_lib, "prepare_anchor", anchor or sphere)
