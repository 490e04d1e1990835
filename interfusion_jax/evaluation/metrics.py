"""Bar metrics of a trained scene: geometry and colour checks.

Pure NumPy/JAX functions over grids and images, plus ``evaluate_run`` that
applies them to the newest checkpoint of a run directory.

* Human: IoU of the human field's occupancy ``1 - exp(-0.2 sigma) > 0.5``
  (PAPER.md "Camera tracing" / Eq. 4 occupancy) with the anchor body's
  inside indicator, both on the same node grid of the scene box.
* Object: occupied volume (litres), fraction of it inside the body, and the
  gap between the object and the body surface (metres).
* Colours: circular mean hue of the pixels covered by a field's albedo
  render vs the hue of the colour word named in the prompt.

All grids are node grids ``linspace(-r, r, R)`` per axis, indexed [ix, iy, iz]
like ``body.anchor``; a voxel is the cube of side ``2 r / (R - 1)`` around a node.
"""
from __future__ import annotations

import math
import pathlib
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from interfusion_jax.guidance import captions as colors
from interfusion_jax.mesh import export as mesh_export
from interfusion_jax.prior import objects, placement
from interfusion_jax.stage2 import config as config_lib
from interfusion_jax.stage2 import losses
from interfusion_jax.stage2 import loop
from interfusion_jax.stage2 import outputs as outputs_lib
from interfusion_jax.stage2 import setup as setup_lib

DensityFn = Callable[[jax.Array], jax.Array]   # [N, 3] -> [N] density sigma

# The default run's bar thresholds (docs/evaluation.md).
BARS = {
    "human_iou_min": 0.75,
    "object_inside_fraction_max": 0.02,
    "object_volume_litres_min": 1.0,
    "object_gap_m_max": 0.05,
    "hue_error_deg_max": 30.0,
    "wall_time_s_max": 20 * 60.0,
}


def voxel_size(resolution: int, radius: float) -> float:
  """Side (metres) of one voxel of the node grid: 2 r / (R - 1)."""
  return 2.0 * radius / (resolution - 1)


def density_grid(density_fn: DensityFn, resolution: int, radius: float,
                 chunk: int = 1 << 16) -> np.ndarray:
  """Evaluates a density field on the node grid, in chunks.

  Args:
    density_fn: [N, 3] -> [N] densities (jit it for speed).
    resolution, radius: grid size and box half size.
    chunk: points per call (the last chunk is padded to this size).

  Returns:
    [R, R, R] float32 densities.
  """
  pts = mesh_export.grid_points(resolution, radius).reshape(-1, 3)
  n = len(pts)
  out = np.empty(n, np.float32)
  for s in range(0, n, chunk):
    block = pts[s:s + chunk]
    pad = chunk - len(block)
    if pad:
      block = np.concatenate([block, np.zeros((pad, 3), np.float32)])
    out[s:s + chunk] = np.asarray(density_fn(jnp.asarray(block)))[:chunk - pad]
  return out.reshape(resolution, resolution, resolution)


def occupancy(sigma: np.ndarray, delta: float = 0.2) -> np.ndarray:
  """``losses.nerf_occupancy`` (PAPER.md "NeRF occupancy") in float64 NumPy. Same shape."""
  return losses.nerf_occupancy(np.asarray(sigma, np.float64), delta)


def occupied(sigma: np.ndarray, delta: float = 0.2, threshold: float = 0.5) -> np.ndarray:
  """Boolean occupancy mask ``1 - exp(-delta sigma) > threshold``. Same shape as sigma."""
  return occupancy(sigma, delta) > threshold


def iou(a: np.ndarray, b: np.ndarray) -> float:
  """Intersection over union of two boolean masks of equal shape (1.0 if both empty)."""
  a, b = np.asarray(a, bool), np.asarray(b, bool)
  if a.shape != b.shape:
    raise ValueError(f"iou: mask shapes differ, {a.shape} vs {b.shape}; evaluate both "
                     "on the same grid.")
  union = np.logical_or(a, b).sum()
  return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def volume_litres(mask: np.ndarray, voxel: float) -> float:
  """Occupied volume in litres: count(mask) * voxel^3 * 1000 (voxel side in metres)."""
  return float(np.asarray(mask, bool).sum()) * voxel ** 3 * 1000.0


def inside_fraction(mask: np.ndarray, body_inside: np.ndarray) -> float:
  """Fraction of the occupied voxels of ``mask`` that lie inside the body (0 if empty).

  Args:
    mask, body_inside: [R, R, R] booleans on the same grid.
  """
  mask, body_inside = np.asarray(mask, bool), np.asarray(body_inside, bool)
  n = mask.sum()
  return 0.0 if n == 0 else float(np.logical_and(mask, body_inside).sum() / n)


def gap_to_body(mask: np.ndarray, body_inside: np.ndarray, body_distance: np.ndarray) -> float:
  """Distance (metres) from the object to the body surface: min over object voxels.

  A voxel inside the body counts as 0 (touching or penetrating); otherwise it
  contributes its unsigned distance to the body surface.

  Args:
    mask: [R, R, R] object occupancy; body_inside: [R, R, R] bool;
    body_distance: [R, R, R] unsigned distance to the body surface (metres).

  Returns:
    the gap, or +inf for an empty object.
  """
  mask = np.asarray(mask, bool)
  if not mask.any():
    return float("inf")
  d = np.where(np.asarray(body_inside, bool), 0.0, np.asarray(body_distance, np.float64))
  return float(d[mask].min())


def covered_hue(rgb: np.ndarray, opacity: np.ndarray, min_opacity: float = 0.5,
                min_saturation: float = 0.2) -> float:
  """Circular mean hue (degrees) of the pixels a field covers.

  Args:
    rgb: [..., H, W, 3] colours in [0, 1]; opacity: [..., H, W].
    min_opacity: pixels with lower accumulated opacity are background.
    min_saturation: greyer pixels carry no hue and are ignored.

  Returns:
    hue in [0, 360), NaN when no covered pixel is saturated enough.
  """
  rgb = np.asarray(rgb, np.float64).reshape(-1, 3)
  sel = np.asarray(opacity).reshape(-1) >= min_opacity
  if not sel.any():
    return float("nan")
  return colors.mean_hue(rgb[sel], min_saturation)


def hue_error(hue_deg: float, color_name: str) -> float:
  """Circular distance (degrees, [0, 180]) from a hue to a named colour; NaN hue -> 180."""
  if hue_deg is None or math.isnan(hue_deg):
    return 180.0
  return colors.hue_distance(hue_deg, colors.color_hue(color_name))


def named_colors(config) -> dict:
  """The first colour word of the human and of the object prompt.

  Returns:
    {"human": name | None, "object": name | None}; greys (black, white, gray)
    carry no hue and are reported as None.
  """
  out = {}
  for part in ("human", "object"):
    words = [colors.canonical_color(w) for w in colors.tokenize(str(getattr(config.prompt, part)))]
    name = next((w for w in words if w is not None), None)
    out[part] = None if name in (None, "black", "white", "gray") else name
  return out


def geometry_metrics(sigma_human: np.ndarray, sigma_object: np.ndarray,
                     body_inside: np.ndarray, body_distance: np.ndarray, radius: float,
                     delta: float = 0.2) -> dict:
  """Human IoU, object volume / inside fraction / gap, all on one node grid.

  Args:
    sigma_human, sigma_object: [R, R, R] densities of the two fields.
    body_inside: [R, R, R] bool anchor indicator; body_distance: [R, R, R] metres.
    radius: box half size r.

  Returns:
    dict of floats: human_iou, human_volume_litres, body_volume_litres,
    object_volume_litres, object_inside_fraction, object_gap_m.
  """
  res = np.asarray(sigma_human).shape[0]
  vox = voxel_size(res, radius)
  h, o = occupied(sigma_human, delta), occupied(sigma_object, delta)
  return {
      "human_iou": iou(h, body_inside),
      "human_volume_litres": volume_litres(h, vox),
      "body_volume_litres": volume_litres(body_inside, vox),
      "object_volume_litres": volume_litres(o, vox),
      "object_inside_fraction": inside_fraction(o, body_inside),
      "object_gap_m": gap_to_body(o, body_inside, body_distance),
  }


def check_bars(metrics: dict) -> dict:
  """{bar name: bool} for the bars the metrics dict holds (missing keys are skipped)."""
  b, out = BARS, {}
  m = metrics
  if "human_iou" in m:
    out["human_iou"] = m["human_iou"] >= b["human_iou_min"]
  if "object_inside_fraction" in m:
    out["object_inside"] = m["object_inside_fraction"] <= b["object_inside_fraction_max"]
  if "object_volume_litres" in m:
    out["object_volume"] = m["object_volume_litres"] >= b["object_volume_litres_min"]
  if "object_gap_m" in m:
    out["object_gap"] = m["object_gap_m"] <= b["object_gap_m_max"]
  for part in ("human", "object"):
    if m.get(f"{part}_hue_error_deg") is not None:
      out[f"{part}_hue"] = m[f"{part}_hue_error_deg"] <= b["hue_error_deg_max"]
  if m.get("wall_time_s") is not None:
    out["time"] = m["wall_time_s"] <= b["wall_time_s_max"]
  return out


def object_shape_match(sigma_object: np.ndarray, vertices: np.ndarray, faces: np.ndarray,
                       joints: np.ndarray, radius: float, delta: float = 0.2,
                       names: Optional[Sequence[str]] = None) -> dict:
  """Diagnostic, not a bar: does the object field have the named object's shape?

  Each parametric object of the built-in prior (``prior.objects``) is placed
  against the anchor body by its placement rule (``prior.placement``), exactly
  as in the prior's image bank, and voxelised; the score is its IoU with the
  object field's occupancy on the same node grid.

  Args:
    sigma_object: [R, R, R] object-field density on ``mesh_export.grid_points(R, radius)``.
    vertices, faces, joints: the anchor body ([V, 3], [F, 3], [J, 3], scene frame).
    radius: box half size r.
    names: object generator names to score (default: all of them).

  Returns:
    {name: IoU in [0, 1]}.
  """
  res = np.asarray(sigma_object).shape[0]
  pts = mesh_export.grid_points(res, radius).reshape(-1, 3)
  field = occupied(sigma_object, delta).reshape(-1)
  v, f, j = (np.asarray(x) for x in (vertices, faces, joints))
  query = placement.body_query(v, f, 128)
  out = {}
  for name in names or objects.OBJECT_NAMES:
    placed = placement.place_named(name, v, f, j, query=query).mesh
    occ = placement.occupied(placement.occupancy(placed.vertices, placed.faces, 96), pts)
    out[name] = iou(occ, field)
  return out


# --- Applied to a run directory. --------------------------------------------


def render_hues(params, occupancy_grid, object_center, spec,
                azimuths: Sequence[float] = (0.0, 90.0, 180.0, 270.0)) -> dict:
  """Mean covered hue of the human-field and object-field albedo renders over azimuths.

  Returns:
    {"human": hue_deg, "object": hue_deg} (NaN when a field covers no saturated pixel).
  """
  imgs = {"human": ([], []), "object": ([], [])}
  for az in azimuths:
    out = outputs_lib.eval_fn(spec)(params, occupancy_grid,
                                    outputs_lib.eval_cameras(spec, object_center, az))
    for name in imgs:
      d = jax.device_get(out[name])
      imgs[name][0].append(np.asarray(d["rgb"]))
      imgs[name][1].append(np.asarray(d["opacity"]))
  return {name: covered_hue(np.stack(r), np.stack(o)) for name, (r, o) in imgs.items()}


def evaluate_state(config, spec, state, anchor, resolution: int = 128) -> dict:
  """All bar metrics of one trained state against its anchor body.

  Args:
    config: the run's config (for the prompts' colour words).
    spec: its ``step.TrainSpec``; state: a host ``step.TrainState``.
    anchor: ``body.anchor.Anchor`` built on a ``resolution``^3 grid.
    resolution: R of the evaluation grid (128 in the default-run bars).

  Returns:
    dict with the ``geometry_metrics`` keys, ``{human,object}_hue_deg``, the
    named colours ``{human,object}_color`` and ``{human,object}_hue_error_deg``
    (None without a colour word), the shape diagnostic of
    ``object_shape_match`` (``object_named``, ``object_named_shape_iou``,
    ``object_best_shape``, ``object_best_shape_iou``), and ``step``.
  """
  if anchor.resolution != resolution:
    raise ValueError(f"evaluate_state: the anchor grid has {anchor.resolution}^3 nodes but "
                     f"resolution={resolution}; build the anchor with "
                     f"config.body.grid_resolution={resolution}.")
  radius = float(anchor.radius)
  dens = jax.jit(spec.model.density)
  sig = {name: density_grid(lambda x, p=state.params[name]: dens(p, x), resolution, radius)
         for name in ("human", "object")}
  m = geometry_metrics(sig["human"], sig["object"], np.asarray(anchor.occupancy) > 0.5,
                       np.asarray(anchor.distance), radius, spec.loss.geo_delta)
  hues = render_hues(state.params, state.occupancy, state.object_center, spec)
  names = named_colors(config)
  for part in ("human", "object"):
    m[f"{part}_hue_deg"] = hues[part]
    m[f"{part}_color"] = names[part]
    m[f"{part}_hue_error_deg"] = (None if names[part] is None
                                  else hue_error(hues[part], names[part]))
  named = objects.object_from_text(str(config.prompt.object))
  shapes = object_shape_match(sig["object"], anchor.vertices, anchor.faces, anchor.joints,
                              radius, spec.loss.geo_delta)
  m["object_named"] = named
  m["object_named_shape_iou"] = shapes.get(named) if named else None
  m["object_best_shape"] = max(shapes, key=shapes.get)
  m["object_best_shape_iou"] = shapes[m["object_best_shape"]]
  m["step"] = int(state.step)
  return m


def anchor_for_run(config, workdir: Optional[str], resolution: int):
  """The run's anchor body rebuilt on a ``resolution``^3 grid (``body.anchor.Anchor``).

  Uses ``<workdir>/anchor/anchor.npz`` when present, else the config's stage-1 pose.
  """
  values = {"body.grid_resolution": int(resolution)}
  if workdir is not None and (pathlib.Path(workdir) / "anchor" / "anchor.npz").exists():
    values["pose.anchor_file"] = str(pathlib.Path(workdir) / "anchor" / "anchor.npz")
  cfg = config_lib.override(config_lib.parse(config), values)
  return setup_lib.prepare_anchor(cfg, None)[0]


def evaluate_run(workdir: str, resolution: int = 128) -> dict:
  """``evaluate_state`` on the newest checkpoint of a run directory (``loop.load_trained``)."""
  config, spec, state = loop.load_trained(workdir)
  return evaluate_state(config, spec, state, anchor_for_run(config, workdir, resolution),
                        resolution)
