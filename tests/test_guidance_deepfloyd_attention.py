"""guidance/deepfloyd.py attention on jax.nn.dot_product_attention vs a NumPy einsum reference."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interfusion_jax.guidance import deepfloyd


def ref_attention(q, k, v, scale=None):
  """NumPy (float64) transcription of the einsum attention the UNet used before:
  s = einsum(bqhd,bkhd->bhqk) * scale; p = softmax_k(s); o = einsum(bhqk,bkhd->bqhd)."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  s = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", p, v)


def ref_group_norm(x, groups, eps, scale, bias):
  """torch GroupNorm on [B, T, C] channels-last, float64."""
  b, t, c = x.shape
  g = x.reshape(b, t, groups, c // groups)
  mean = g.mean((1, 3), keepdims=True)
  var = ((g - mean) ** 2).mean((1, 3), keepdims=True)
  return ((g - mean) / np.sqrt(var + eps)).reshape(b, t, c) * scale + bias


# (name, B, T, S, heads, head_dim): self-attention over 8x8 tokens, the IF
# added-KV form (77 text tokens + the 64 image tokens), attention pooling (1 query).
SHAPES = [("self", 2, 64, 64, 4, 16), ("added_kv", 2, 64, 77 + 64, 4, 16),
          ("pooling", 3, 1, 78, 8, 8)]


@pytest.mark.parametrize("name,b,t,s,n,h", SHAPES)
def test_attention_matches_einsum_reference_f32(name, b, t, s, n, h):
  rng = np.random.default_rng(len(name))
  q = rng.standard_normal((b, t, n, h)).astype(np.float32) * 2
  k = rng.standard_normal((b, s, n, h)).astype(np.float32) * 2
  v = rng.standard_normal((b, s, n, h)).astype(np.float32)
  scale = 1.0 if name == "pooling" else None
  got = jax.jit(lambda *a: deepfloyd.attention(*a, scale=scale))(q, k, v)
  assert got.shape == (b, t, n, h) and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), ref_attention(q, k, v, scale), atol=1e-5, rtol=1e-5)


def test_added_kv_attention_module_matches_numpy():
  """The whole AddedKVAttention block (norms, projections, [text; image] keys,
  attention, out projection, residual) against a float64 NumPy transcription."""
  b, hh, ww, c, hd, l, dtext = 2, 4, 4, 64, 16, 7, 32
  rng = np.random.default_rng(0)
  x = rng.standard_normal((b, hh, ww, c)).astype(np.float32)
  text = rng.standard_normal((b, l, dtext)).astype(np.float32)
  mod = deepfloyd.AddedKVAttention(head_dim=hd, groups=8, cross_attention_norm="group_norm")
  params = mod.init(jax.random.PRNGKey(0), x, text)["params"]
  params = jax.tree_util.tree_map(
      lambda p: np.asarray(p) + 0.1 * rng.standard_normal(p.shape).astype(np.float32), params)
  got = np.asarray(jax.jit(mod.apply)({"params": params}, x, text))
  P = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  dense = lambda a, n: a @ P[n]["kernel"] + P[n]["bias"]
  h = ref_group_norm(x.reshape(b, hh * ww, c).astype(np.float64), 8, deepfloyd.ATTN_NORM_EPS,
                     P["group_norm"]["scale"], P["group_norm"]["bias"])
  e = ref_group_norm(text.astype(np.float64), deepfloyd.CROSS_NORM_GROUPS, deepfloyd.ATTN_NORM_EPS,
                     P["norm_cross"]["scale"], P["norm_cross"]["bias"])
  split = lambda a: a.reshape(b, a.shape[1], c // hd, hd)
  q = dense(h, "to_q")
  k = np.concatenate([dense(e, "add_k_proj"), dense(h, "to_k")], 1)
  v = np.concatenate([dense(e, "add_v_proj"), dense(h, "to_v")], 1)
  o = ref_attention(split(q), split(k), split(v)).reshape(b, hh * ww, c)
  want = dense(o, "to_out_0").reshape(b, hh, ww, c) + x
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_bf16_attention_keeps_logits_and_softmax_in_f32():
  rng = np.random.default_rng(1)
  q, k, v = (jnp.asarray(rng.standard_normal((1, 16, 2, 8)), jnp.bfloat16) for _ in range(3))
  got = deepfloyd.attention(q, k, v)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got, np.float32),
                             ref_attention(*(np.asarray(a, np.float32) for a in (q, k, v))),
                             atol=3e-2)
  jaxpr = jax.make_jaxpr(lambda *a: deepfloyd.attention(*a))(q, k, v)
  exps = [e for e in _eqns(jaxpr.jaxpr) if e.primitive.name == "exp"]
  assert exps and all(e.outvars[0].aval.dtype == jnp.float32 for e in exps)


def _eqns(jaxpr):
  """Every equation of a jaxpr, nested call/jit jaxprs included."""
  for e in jaxpr.eqns:
    yield e
    for p in e.params.values():
      inner = getattr(p, "jaxpr", None)
      if inner is not None:
        yield from _eqns(getattr(inner, "jaxpr", inner))


def test_implementation_choice(monkeypatch):
  assert deepfloyd.attention_implementation(jnp.bfloat16, 64) == "xla"  # this CPU
  gpu = types.SimpleNamespace(platform="gpu", platform_version="cuda 12080")
  monkeypatch.setattr(jax.extend.backend, "get_backend", lambda *a: gpu)
  assert deepfloyd.attention_implementation(jnp.bfloat16, 64) == "cudnn"
  assert deepfloyd.attention_implementation(jnp.float16, 128) == "cudnn"
  assert deepfloyd.attention_implementation(jnp.float32, 64) == "xla"   # cuDNN: no f32
  assert deepfloyd.attention_implementation(jnp.bfloat16, 160) == "xla"
  assert deepfloyd.attention_implementation(jnp.bfloat16, 60) == "xla"
  monkeypatch.setenv(deepfloyd.ATTENTION_ENV, "xla")
  assert deepfloyd.attention_implementation(jnp.bfloat16, 64) == "xla"  # the escape hatch
  monkeypatch.delenv(deepfloyd.ATTENTION_ENV)
  rocm = types.SimpleNamespace(platform="gpu", platform_version="rocm 6")
  monkeypatch.setattr(jax.extend.backend, "get_backend", lambda *a: rocm)
  assert deepfloyd.attention_implementation(jnp.bfloat16, 64) == "xla"
