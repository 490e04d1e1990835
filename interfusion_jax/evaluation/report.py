"""report.html for a run directory and index.html for a sweep directory.

Both pages are single self-contained HTML files that work offline from the
file system: every picture and video is embedded as a ``data:`` URI, the
curves are inline SVG drawn here, the one script (table sorting) and the
style sheet are inline; nothing refers to a network address. Links to the
meshes and (in index.html) to each run's report.html are relative.

A run's report shows: the prompts, which guidance was used (saying plainly
when it is the built-in low-fidelity prior), the anchor pose picture and the
top-k candidates of stage 1, the turntables, the multi-view grid, the newest
validation grid, loss and lambda curves from ``metrics.jsonl``, the metrics
(``eval.json`` when ``python -m interfusion_jax.evaluate`` has run, else the
final losses), timings, the meshes (links, and a drag-to-rotate canvas view
of the combined mesh, simplified to at most MESH_MAX_FACES faces: the
UV-textured GLB when the run wrote one, its texture looked up at the
vertices, else the vertex-colour OBJ) and the
resolved config. Every part is optional: a missing file is reported as
missing, not an error.
"""
from __future__ import annotations

import base64
import html
import json
import logging
import math
import pathlib
from typing import Any, Iterable, Sequence

import numpy as np

from interfusion_jax import fileio
from interfusion_jax.evaluation import rundirs
from interfusion_jax.mesh import texture as mesh_texture
from interfusion_jax.stage2 import run_io

EMBED_MAX_BYTES = 32 << 20
MIME = {".png": "image/png", ".gif": "image/gif", ".mp4": "video/mp4", ".jpg": "image/jpeg"}
BUILTIN_NOTE = ("the built-in offline prior (LOW FIDELITY): a closed-form, camera-conditioned "
                "denoiser over procedural renders (config.guidance.backend = builtin, no "
                "diffusion weights). It knows a few object types, colours and coarse "
                "silhouettes, nothing more. The paper guides with DeepFloyd IF: train with "
                "--config.guidance.backend=auto --config.guidance.weights_dir="
                "DeepFloyd/IF-I-XL-v1.0 (a hub id, licence accepted) or a local IF folder.")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;
max-width:1200px}
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.15em;margin-top:28px;border-bottom:1px solid
#ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:6px 0;font-size:.9em}td,th{border:1px solid #ccc;
padding:3px 8px;text-align:left;vertical-align:top}th{background:#f3f3f3}
th.sortable{cursor:pointer}th.sortable:after{content:" \\2195";color:#999}
.warn{background:#fff4d6;border:1px solid #e0b84a;padding:8px 12px;border-radius:4px}
.ok{background:#e8f4ea;border:1px solid #8bc49a;padding:8px 12px;border-radius:4px}
.row{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
figure{margin:0}figcaption{font-size:.85em;color:#555;text-align:center}
img.pix{image-rendering:pixelated}video,img.turn{width:256px;height:256px;background:#fff;
border:1px solid #ddd}
.curve{border:1px solid #ddd;background:#fff}.muted{color:#888}
pre{background:#f7f7f7;padding:8px;overflow:auto;max-height:480px;font-size:.8em}
.card{border:1px solid #ccc;border-radius:6px;padding:10px;width:300px}
.card img{width:100%;image-rendering:pixelated;border:1px solid #eee}
"""

SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.classList.add('sortable');
    th.addEventListener('click', function () {
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var asc = th.getAttribute('data-asc') !== '1';
      th.setAttribute('data-asc', asc ? '1' : '0');
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute('data-v') || a.cells[col].textContent;
        var y = b.cells[col].getAttribute('data-v') || b.cells[col].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def esc(x: Any) -> str:
  """HTML-escaped text of any value."""
  return html.escape(str(x), quote=True)


def data_uri(path: pathlib.Path) -> str | None:
  """``data:<mime>;base64,...`` of a file (None when missing or over EMBED_MAX_BYTES)."""
  path = pathlib.Path(path)
  if not path.is_file() or path.stat().st_size > EMBED_MAX_BYTES:
    return None
  mime = MIME.get(path.suffix.lower(), "application/octet-stream")
  return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def fmt(v: Any) -> str:
  """Compact text of a metric value."""
  if v is None:
    return "—"
  if isinstance(v, bool):
    return "yes" if v else "no"
  if isinstance(v, (int, np.integer)):
    return str(int(v))
  if isinstance(v, (float, np.floating)):
    v = float(v)
    if not math.isfinite(v):
      return str(v)
    return f"{v:.4g}"
  return str(v)


def _read_json(path: pathlib.Path) -> Any:
  try:
    return json.loads(pathlib.Path(path).read_text())
  except (OSError, ValueError):
    return None


def curve_svg(steps: Sequence[float], values: Sequence[float], title: str,
              width: int = 300, height: int = 150) -> str:
  """One inline SVG line chart (class "curve") of values over steps, own y range.

  Non-finite values are dropped. With no finite value the chart says so.
  """
  pts = [(float(s), float(v)) for s, v in zip(steps, values)
         if v is not None and math.isfinite(float(v))]
  m = {"l": 8, "r": 8, "t": 20, "b": 18}
  w, h = width - m["l"] - m["r"], height - m["t"] - m["b"]
  parts = [f'<svg class="curve" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="{esc(title)}">',
           f'<text x="{m["l"]}" y="14" font-size="12" font-weight="bold">{esc(title)}</text>']
  if not pts:
    parts.append(f'<text x="{m["l"]}" y="{height / 2}" font-size="11" fill="#888">'
                 'no finite values</text></svg>')
    return "".join(parts)
  xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
  x0, x1 = xs.min(), xs.max()
  y0, y1 = ys.min(), ys.max()
  sx = (lambda x: m["l"] + (x - x0) / (x1 - x0) * w) if x1 > x0 else (lambda x: m["l"] + w / 2)
  sy = ((lambda y: m["t"] + h - (y - y0) / (y1 - y0) * h) if y1 > y0
        else (lambda y: m["t"] + h / 2))
  coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys))
  parts.append(f'<rect x="{m["l"]}" y="{m["t"]}" width="{w}" height="{h}" fill="none" '
               'stroke="#eee"/>')
  parts.append(f'<polyline points="{coords}" fill="none" stroke="#1f6fb4" stroke-width="1.5"/>')
  if len(pts) == 1:
    parts.append(f'<circle cx="{sx(xs[0]):.1f}" cy="{sy(ys[0]):.1f}" r="2.5" fill="#1f6fb4"/>')
  parts.append(f'<text x="{width - m["r"]}" y="14" font-size="10" text-anchor="end" '
               f'fill="#555">{esc(fmt(y0))} … {esc(fmt(y1))}</text>')
  parts.append(f'<text x="{m["l"]}" y="{height - 4}" font-size="10" fill="#555">step '
               f'{esc(fmt(x0))}</text><text x="{width - m["r"]}" y="{height - 4}" '
               f'font-size="10" text-anchor="end" fill="#555">{esc(fmt(x1))}</text></svg>')
  return "".join(parts)


def curve_keys(rows: Sequence[dict]) -> list[str]:
  """The loss and lambda series of metrics rows: "loss" first, then loss_*, then lambda_*."""
  keys = sorted({k for r in rows for k in r})
  losses = [k for k in keys if k.startswith("loss_")]
  lambdas = [k for k in keys if k.startswith("lambda")]
  return (["loss"] if "loss" in keys else []) + losses + lambdas


def curves_html(rows: Sequence[dict]) -> str:
  """All loss and lambda curves as a row of SVG charts."""
  if not rows:
    return '<p class="muted">metrics.jsonl is missing or empty.</p>'
  steps = [r.get("step", i) for i, r in enumerate(rows)]
  charts = [curve_svg(steps, [r.get(k) for r in rows], k) for k in curve_keys(rows)]
  return '<div class="row">' + "".join(charts) + "</div>"


def table_html(header: Sequence[str], rows: Iterable[Sequence[Any]], sortable: bool = False,
               raw_cols: Sequence[int] = ()) -> str:
  """An HTML table; numeric cells carry data-v for sorting; raw_cols are not escaped."""
  cls = ' class="sortable"' if sortable else ""
  out = [f"<table{cls}><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header)
         + "</tr></thead><tbody>"]
  for row in rows:
    cells = []
    for i, v in enumerate(row):
      dv = ""
      if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
        dv = f' data-v="{float(v)!r}"'
      cells.append(f"<td{dv}>{v if i in raw_cols else esc(fmt(v))}</td>")
    out.append("<tr>" + "".join(cells) + "</tr>")
  out.append("</tbody></table>")
  return "".join(out)


def _img(path: pathlib.Path, alt: str, cls: str = "pix", width: int | None = None) -> str:
  uri = data_uri(path)
  if uri is None:
    return f'<p class="muted">{esc(path.name)} is missing.</p>'
  wattr = f' width="{width}"' if width else ""
  return f'<img class="{cls}" src="{uri}" alt="{esc(alt)}"{wattr}>'


def guidance_text(config: dict) -> tuple[str, bool]:
  """(sentence saying which guidance a run used, is_builtin) from its config dict."""
  g = (config or {}).get("guidance", {}) or {}
  wd = str(g.get("weights_dir", "") or "").strip()
  if not wd:
    return "Guidance: " + BUILTIN_NOTE, True
  extra = ", ".join(f"{k} = {g[k]}" for k in ("guidance_scale", "weighting") if k in g)
  return f"Guidance: diffusion weights from {wd}" + (f" ({extra})" if extra else "") + ".", False


def run_status(workdir: pathlib.Path, config: dict | None) -> str:
  """"finished (step N)", "step k of N (no final outputs)", or "not started"."""
  summary = _read_json(workdir / "final" / "summary.json")
  total = ((config or {}).get("train", {}) or {}).get("steps")
  if summary is not None:
    return f"finished (step {summary.get('step')})"
  ck = workdir / "checkpoints"
  steps = sorted(int(p.name) for p in ck.iterdir() if p.name.isdigit()) if ck.is_dir() else []
  if steps:
    return f"step {steps[-1]} of {total} (no final outputs)"
  return "not started"


def _anchor_section(workdir: pathlib.Path) -> str:
  out = [_img(workdir / "anchor" / "anchor.png", "anchor pose (front and side)")]
  npz = workdir / "anchor" / "anchor.npz"
  if npz.is_file():
    try:
      with np.load(npz, allow_pickle=False) as d:
        labels = [str(x) for x in d["candidate_labels"]] if "candidate_labels" in d else []
        scores = [float(x) for x in d["candidate_scores"]] if "candidate_scores" in d else []
        pos = int(d["position"]) if "position" in d else -1
        meta = {k: str(d[k]) for k in ("text", "backend", "source", "choose") if k in d}
    except Exception as e:  # pylint: disable=broad-except
      return "".join(out) + f'<p class="muted">anchor.npz unreadable: {esc(e)}</p>'
    out.append("<p>" + ", ".join(f"{esc(k)}: <b>{esc(v)}</b>" for k, v in meta.items()) + "</p>")
    if labels:
      rows = [(i + 1, lab, scores[i] if i < len(scores) else None,
               "chosen" if i == pos else "") for i, lab in enumerate(labels)]
      out.append("<p>Top-k candidates of stage 1:</p>"
                 + table_html(["rank", "label", "score", ""], rows))
  return "".join(out)


def _turntables(final: pathlib.Path) -> str:
  figs = []
  for name in ("interaction", "human", "object"):
    mp4, gif = final / f"turntable_{name}.mp4", final / f"turntable_{name}.gif"
    if mp4.is_file() and data_uri(mp4):
      el = (f'<video src="{data_uri(mp4)}" autoplay loop muted playsinline controls '
            f'aria-label="turntable {name}"></video>')
    elif gif.is_file():
      el = _img(gif, f"turntable {name}", "pix turn")
    else:
      el = f'<p class="muted">turntable_{name} is missing.</p>'
    figs.append(f"<figure>{el}<figcaption>{esc(name)}</figcaption></figure>")
  return '<div class="row">' + "".join(figs) + "</div>"


def metrics_rows(evaluation: dict | None, summary: dict | None) -> list[tuple]:
  """(metric, value) rows: eval.json's CLIP scores and geometry first, then the final losses."""
  rows = []
  ev = evaluation or {}
  clip = ev.get("clip")
  if clip:
    for part in ("interaction", "human", "object"):
      if part in clip:
        rows.append((f"CLIP score, {part} ({clip[part].get('prompt', '')!r})",
                     clip[part].get("score")))
  elif evaluation is not None:
    rows.append(("CLIP score", ev.get("clip_note", "not computed")))
  for k, v in sorted((ev.get("geometry") or {}).items()):
    if isinstance(v, (int, float, str)) or v is None:
      rows.append((k, v))
  for k, v in sorted(((summary or {}).get("final_losses") or {}).items()):
    rows.append((f"final {k}", v))
  return rows


def sampling_rows(summary: dict | None) -> list[tuple]:
  """(what, value) rows of summary.json's sample budget (stage2/budget.py): the
  per-ray budget used and its growths, the peak of ``samples_dropped``, and the
  samples the final renders left out (``final_renders_samples_dropped``)."""
  b = (summary or {}).get("sample_budget")
  if not b:
    return []
  grew = ", ".join(f"{g['from']} -> {g['to']} after step {g['step']}"
                   for g in b.get("growths") or []) or "none"
  return [("sample budget mode (config.render.budget_growth)", b.get("mode")),
          ("sample budget per ray: start / final / max",
           f"{b.get('start')} / {b.get('final')} / {b.get('max')}"),
          ("budget growths", grew),
          ("samples_dropped, peak of a step", b.get("samples_dropped_peak")),
          ("steps that dropped samples", b.get("steps_with_drops"))] + (
              [("final renders: occupied samples left out, all turntable frames",
                ", ".join(f"{k} {v}" for k, v in final.items()))]
              if (final := summary.get("final_renders_samples_dropped")) is not None else [])


MESH_MAX_FACES = 20000

VIEWER_JS = """
(function () {
  var el = document.getElementById('mesh-data');
  var cv = document.getElementById('mesh-view');
  if (!el || !cv) return;
  var m = JSON.parse(el.textContent), V = m.v, C = m.c, F = m.f;
  var nv = V.length / 3, nf = F.length / 3, ctx = cv.getContext('2d');
  var cx = 0, cy = 0, cz = 0, r = 1e-6;
  for (var i = 0; i < nv; i++) { cx += V[3*i]; cy += V[3*i+1]; cz += V[3*i+2]; }
  cx /= nv; cy /= nv; cz /= nv;
  for (var i = 0; i < nv; i++) {
    r = Math.max(r, Math.hypot(V[3*i] - cx, V[3*i+1] - cy, V[3*i+2] - cz)); }
  var yaw = 0.6, pitch = 0.25, drag = null, auto = true;
  var P = new Float64Array(3 * nv), depth = new Float64Array(nf), order = new Uint32Array(nf);
  function draw() {
    var w = cv.width, h = cv.height, s = 0.45 * Math.min(w, h) / r;
    var cy_ = Math.cos(yaw), sy = Math.sin(yaw), cp = Math.cos(pitch), sp = Math.sin(pitch);
    for (var i = 0; i < nv; i++) {   // scene z-up: x right, z up, y into the screen
      var x = V[3*i] - cx, y = V[3*i+1] - cy, z = V[3*i+2] - cz;
      var x1 = cy_ * x - sy * y, y1 = sy * x + cy_ * y;
      var y2 = cp * y1 - sp * z, z2 = sp * y1 + cp * z;
      P[3*i] = w / 2 + s * x1; P[3*i+1] = h / 2 - s * z2; P[3*i+2] = y2;
    }
    for (var f = 0; f < nf; f++) {
      order[f] = f;
      depth[f] = P[3*F[3*f]+2] + P[3*F[3*f+1]+2] + P[3*F[3*f+2]+2];
    }
    order.sort(function (a, b) { return depth[b] - depth[a]; });
    ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, w, h);
    for (var k = 0; k < nf; k++) {
      var f = order[k], a = F[3*f], b = F[3*f+1], c = F[3*f+2];
      var ux = P[3*b] - P[3*a], uy = P[3*b+1] - P[3*a+1], uz = P[3*b+2] - P[3*a+2];
      var vx = P[3*c] - P[3*a], vy = P[3*c+1] - P[3*a+1], vz = P[3*c+2] - P[3*a+2];
      var nx = uy * vz - uz * vy, ny = uz * vx - ux * vz, nz = ux * vy - uy * vx;
      var shade = 0.35 + 0.65 * Math.abs(nz) / (Math.hypot(nx, ny, nz) + 1e-12);
      var rr = 0, gg = 0, bb = 0;
      for (var j = 0; j < 3; j++) { var q = F[3*f+j]; rr += C[3*q]; gg += C[3*q+1]; bb += C[3*q+2]; }
      ctx.fillStyle = 'rgb(' + Math.round(rr / 3 * shade) + ',' + Math.round(gg / 3 * shade) +
          ',' + Math.round(bb / 3 * shade) + ')';
      ctx.beginPath(); ctx.moveTo(P[3*a], P[3*a+1]); ctx.lineTo(P[3*b], P[3*b+1]);
      ctx.lineTo(P[3*c], P[3*c+1]); ctx.closePath(); ctx.fill();
    }
    cv.setAttribute('data-drawn', String(nf));
  }
  cv.addEventListener('pointerdown', function (e) { drag = [e.clientX, e.clientY]; auto = false; });
  window.addEventListener('pointerup', function () { drag = null; });
  window.addEventListener('pointermove', function (e) {
    if (!drag) return;
    yaw += 0.01 * (e.clientX - drag[0]);
    pitch = Math.max(-1.5, Math.min(1.5, pitch + 0.01 * (e.clientY - drag[1])));
    drag = [e.clientX, e.clientY]; draw();
  });
  function spin() { if (auto) { yaw += 0.01; draw(); setTimeout(spin, 50); } }
  draw(); spin();
})();
"""


def read_obj(path: pathlib.Path) -> tuple:
  """(vertices [V, 3], colours [V, 3] in [0, 1], faces [F, 3] 0-based) of an OBJ written by
  ``mesh.export.obj_bytes`` (``v x y z r g b`` lines; colours 0.5 grey when absent)."""
  verts, cols, faces = [], [], []
  for line in pathlib.Path(path).read_text().splitlines():
    parts = line.split()
    if not parts:
      continue
    if parts[0] == "v":
      xs = [float(x) for x in parts[1:7]]
      verts.append(xs[:3])
      cols.append(xs[3:6] if len(xs) >= 6 else [0.5, 0.5, 0.5])
    elif parts[0] == "f":
      idx = [int(p.split("/")[0]) for p in parts[1:]]
      for k in range(1, len(idx) - 1):        # fan-triangulate polygons
        faces.append([idx[0] - 1, idx[k] - 1, idx[k + 1] - 1])
  return (np.asarray(verts, np.float64).reshape(-1, 3), np.asarray(cols, np.float64).reshape(-1, 3),
          np.asarray(faces, np.int64).reshape(-1, 3))


def simplify(vertices: np.ndarray, colors: np.ndarray, faces: np.ndarray,
             max_faces: int = MESH_MAX_FACES) -> tuple:
  """Vertex-clustering simplification to at most ``max_faces`` faces.

  Vertices are merged per cell of a cubic grid over the bounding box (colour
  and position averaged); faces that collapse are dropped, and the grid is
  coarsened until the face count fits. Returns (vertices, colours, faces), unchanged when
  already small enough.
  """
  if len(faces) <= max_faces:
    return vertices, colors, faces
  lo, hi = vertices.min(0), vertices.max(0)
  cells = 256
  while True:
    size = max(float((hi - lo).max()), 1e-9) / cells
    key = np.floor((vertices - lo) / size).astype(np.int64)
    uniq, inv = np.unique(key, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    f = inv[faces]
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]
    f = np.unique(np.sort(f, axis=1), axis=0) if len(f) > max_faces else f
    if len(f) <= max_faces or cells <= 4:
      n = np.bincount(inv, minlength=len(uniq))[:, None]
      v = np.stack([np.bincount(inv, vertices[:, k], len(uniq)) for k in range(3)], 1) / n
      c = np.stack([np.bincount(inv, colors[:, k], len(uniq)) for k in range(3)], 1) / n
      return v, c, f
    cells = int(cells * 0.7)


def read_textured_glb(path: pathlib.Path) -> tuple:
  """(vertices [V, 3], colours [V, 3] in [0, 1], faces [F, 3]) of a UV-textured GLB written
  by ``mesh.texture.write_textured_mesh``: every mesh of the file, in its buffer's
  (scene, z-up) coordinates, coloured by a bilinear lookup of its base colour
  texture at each vertex's UV (``mesh.texture.sample``); untextured meshes are grey."""
  import trimesh  # heavy import, only for a textured mesh
  loaded = trimesh.load(path, process=False)
  geoms = list(loaded.geometry.values()) if hasattr(loaded, "geometry") else [loaded]
  verts, cols, faces, n = [], [], [], 0
  for g in geoms:
    v = np.asarray(g.vertices, np.float64)
    image = getattr(getattr(g.visual, "material", None), "baseColorTexture", None)
    uv = getattr(g.visual, "uv", None)
    if image is not None and uv is not None:
      c = mesh_texture.sample(np.asarray(image.convert("RGB")), np.asarray(uv))
    else:
      c = np.full_like(v, 0.5)
    verts.append(v)
    cols.append(c)
    faces.append(np.asarray(g.faces, np.int64) + n)
    n += len(v)
  if not verts:
    return np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3), np.int64)
  return np.concatenate(verts), np.concatenate(cols), np.concatenate(faces)


def mesh_viewer_html(obj_path: pathlib.Path) -> str:
  """A drag-to-rotate canvas view of a mesh (embedded as JSON; canvas 2D, no WebGL): an OBJ
  with vertex colours (``read_obj``) or a UV-textured GLB, its texture looked up at the
  vertices (``read_textured_glb``)."""
  if not obj_path.is_file():
    return f'<p class="muted">{esc(obj_path.name)} is missing.</p>'
  try:
    v, c, f = (read_textured_glb if obj_path.suffix == ".glb" else read_obj)(obj_path)
  except (OSError, ValueError) as e:
    return f'<p class="muted">{esc(obj_path.name)} unreadable: {esc(e)}</p>'
  if len(f) == 0:
    return f'<p class="muted">{esc(obj_path.name)} has no faces (an empty field).</p>'
  n0 = len(f)
  v, c, f = simplify(v, c, f)
  data = {"v": np.round(v, 4).reshape(-1).tolist(),
          "c": np.clip(np.round(c * 255), 0, 255).astype(int).reshape(-1).tolist(),
          "f": f.reshape(-1).astype(int).tolist()}
  note = (f"{len(f)} faces" if len(f) == n0
          else f"{len(f)} of {n0} faces (simplified by vertex clustering for the page)")
  return ('<canvas id="mesh-view" width="420" height="420" style="border:1px solid #ddd;'
          'touch-action:none"></canvas>'
          f'<p class="muted">{esc(obj_path.name)}: {esc(note)}; drag to rotate.</p>'
          '<script type="application/json" id="mesh-data">'
          + json.dumps(data, separators=(",", ":")) + "</script>"
          f"<script>{VIEWER_JS}</script>")


def run_report_html(workdir) -> str:
  """The report.html text of one run directory (reads its files; writes nothing)."""
  wd = pathlib.Path(workdir).absolute()
  config = _read_json(wd / "config.json") or {}
  summary = _read_json(wd / "final" / "summary.json")
  evaluation = _read_json(wd / "eval.json")
  prompt = config.get("prompt", {}) or {}
  human, obj, inter = (str(prompt.get(k, "")) for k in ("human", "object", "interaction"))
  gtext, builtin = guidance_text(config)
  rows = run_io.read_metrics(wd / "metrics.jsonl")
  vals = sorted((wd / "val").glob("step_*.png")) if (wd / "val").is_dir() else []
  meshes = sorted((wd / "final").glob("mesh_*.*")) if (wd / "final").is_dir() else []
  timing = [("status", run_status(wd, config))]
  if summary:
    timing += [("steps", summary.get("step")), ("wall time of the loop (s)",
                                                summary.get("wall_time_s")),
               ("steps per second", summary.get("steps_per_second")),
               ("skipped steps", summary.get("total_skipped_steps")),
               ("devices", summary.get("num_devices"))]
  for k, v in sorted(((evaluation or {}).get("timings") or {}).items()):
    timing.append((f"evaluation: {k} (s)", v))
  body = [
      f"<h1>{esc(human)} {esc(inter)}</h1>",
      f'<p class="muted">{esc(wd)} · {esc(run_status(wd, config))}</p>',
      f'<p class="{"warn" if builtin else "ok"}" id="guidance">{esc(gtext)}</p>',
      "<h2>Prompts</h2>",
      table_html(["part", "prompt"], [("human T_H", human), ("object T_O", obj),
                                      ("interaction T_I", inter),
                                      ("scene T_H T_I", f"{human} {inter}")]),
      "<h2>Anchor pose (stage 1)</h2>", _anchor_section(wd),
      "<h2>Turntables</h2>", _turntables(wd / "final"),
      "<h2>Multi-view grid</h2>",
      '<p class="muted">rows: interaction scene, human, object; columns: 4 azimuths.</p>',
      _img(wd / "final" / "multiview.png", "multi-view grid", width=512),
  ]
  if vals:
    body += [f"<h2>Validation grid ({esc(vals[-1].stem)})</h2>",
             _img(vals[-1], f"validation {vals[-1].stem}", width=384)]
  body += ["<h2>Loss and λ curves</h2>", curves_html(rows),
           "<h2>Metrics</h2>"]
  if evaluation is None:
    body.append('<p class="muted">No eval.json yet: run <code>python -m '
                'interfusion_jax.evaluate --workdir=…</code> for the CLIP score and the '
                'geometry metrics.</p>')
  body.append(table_html(["metric", "value"], metrics_rows(evaluation, summary)))
  if evaluation and evaluation.get("reference"):
    body.append("<p>Reference figures <b>reported in the paper</b> (not measured here):</p>"
                + table_html(["method", "metric", "value", "note"],
                             [(r["method"], r["metric"], r["value"], r.get("note", ""))
                              for r in evaluation["reference"]]))
  sampling = sampling_rows(summary)
  if sampling:
    b = summary["sample_budget"]
    steps = b.get("steps_with_drops") or 0
    if not steps:
      note = "Every occupied ray sample was evaluated at every step."
    elif b.get("mode") == "grow":
      note = (f"{steps} step(s) dropped occupied samples that did not fit the sample budget; "
              f"each made the budget grow (now {b.get('final')} per ray, at most "
              f"{b.get('max')}). The release evaluates every occupied sample.")
    else:
      note = (f"{steps} step(s) dropped occupied samples that did not fit the fixed sample "
              "budget (config.render.budget_growth = fixed); the release evaluates every "
              "occupied sample.")
    body += ["<h2>Ray samples</h2>",
             f'<p class="{"warn" if steps else "ok"}" id="samples">{esc(note)}</p>',
             table_html(["what", "value"], sampling)]
  body += ["<h2>Timings</h2>", table_html(["what", "value"], timing)]
  if meshes:
    links = " · ".join(f'<a href="final/{esc(p.name)}">{esc(p.name)}</a>' for p in meshes)
    textured = wd / "final" / "mesh_combined_textured.glb"
    body += ["<h2>Meshes</h2>", f"<p>{links}</p>",
             mesh_viewer_html(textured if textured.is_file()
                              else wd / "final" / "mesh_combined.obj")]
  body += ["<h2>Resolved config</h2>",
           f"<details><summary>config.json</summary><pre>"
           f"{esc(json.dumps(config, indent=2, sort_keys=True))}</pre></details>"]
  return page(f"InterFusion run: {human} {inter}", "".join(body))


def page(title: str, body: str) -> str:
  """A complete HTML document with the inline style sheet and sorting script."""
  return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
          f"<title>{esc(title)}</title><style>{CSS}</style></head><body>{body}"
          f"<script>{SORT_JS}</script></body></html>\n")


def write_run_report(workdir) -> pathlib.Path:
  """Writes ``<workdir>/report.html`` atomically; returns its path."""
  wd = pathlib.Path(workdir).absolute()
  out = wd / "report.html"
  fileio.atomic_write_text(out, run_report_html(wd))
  return out


INDEX_METRICS = (("CLIP score", ("clip", "interaction", "score")),
                 ("human IoU", ("geometry", "human_iou")),
                 ("object L", ("geometry", "object_volume_litres")),
                 ("object inside", ("geometry", "object_inside_fraction")),
                 ("object gap m", ("geometry", "object_gap_m")))


def _dig(d: Any, keys: Sequence[str]) -> Any:
  for k in keys:
    if not isinstance(d, dict) or k not in d:
      return None
    d = d[k]
  return d


def sweep_index_html(sweep_dir, runs: Sequence[pathlib.Path]) -> str:
  """index.html of a sweep: one card per scene, a sortable metrics table, report links.

  A scene's status comes from its files (``run_status``); when it has not
  finished, the status ``sweep.json`` records for it (e.g. "failed: ...") is shown too.
  """
  root = pathlib.Path(sweep_dir).absolute()
  sweep_eval = _read_json(root / "eval.json") or {}
  listed = _read_json(root / "sweep.json") or {}
  sweep_status, seed_rank = {}, {}
  ranking = (listed.get("ranking") or {}) if isinstance(listed, dict) else {}
  for e in (listed.get("scenes") or []) if isinstance(listed, dict) else []:
    if isinstance(e, dict) and isinstance(e.get("workdir"), str) and e.get("status"):
      sweep_status[(root / e["workdir"]).absolute()] = str(e["status"]) + (
          f": {e['error']}" if e.get("error") else "")
    if isinstance(e, dict) and isinstance(e.get("rank"), int) and e.get("scene") in ranking:
      r = ranking[e["scene"]]
      n = len(r.get("order") or [])
      seed_rank[(root / e["workdir"]).absolute()] = (
          f"best of {n} seeds (by {r.get('by')})" if e.get("best")
          else f"seed rank {e['rank']} of {n}")
  cards, table = [], []
  for run in runs:
    run = pathlib.Path(run).absolute()
    config = _read_json(run / "config.json") or {}
    p = config.get("prompt", {}) or {}
    title = f"{p.get('human', '')} {p.get('interaction', '')}"
    ev = _read_json(run / "eval.json") or {}
    summary = _read_json(run / "final" / "summary.json") or {}
    rel = run.relative_to(root).as_posix() if run.is_relative_to(root) else run.as_uri()
    href = f"{rel}/report.html"
    status = run_status(run, config)
    if run in sweep_status and not status.startswith("finished"):
      status = f"{sweep_status[run]} ({status})"      # the sweep's own record (e.g. failed)
    rank = seed_rank.get(run, "")
    if rank.startswith("best"):
      title = "\u2605 " + title                          # the best seed of its scene
    vals = [_dig(ev, keys) for _, keys in INDEX_METRICS]
    loss = (summary.get("final_losses") or {}).get("loss")
    thumb = run / "final" / "multiview.png"
    metrics = "".join(f"<br>{esc(n)}: <b>{esc(fmt(v))}</b>"
                      for (n, _), v in zip(INDEX_METRICS, vals) if v is not None)
    cards.append(f'<div class="card"><a href="{esc(href)}">'
                 f'{_img(thumb, "thumbnail " + title) if thumb.is_file() else ""}</a>'
                 f'<p><a href="{esc(href)}"><b>{esc(title)}</b></a><br>object: '
                 f'{esc(p.get("object", ""))}<br>status: {esc(status)}'
                 f'{"<br>" + esc(rank) if rank else ""}{metrics}'
                 f'<br>final loss: <b>{esc(fmt(loss))}</b></p></div>')
    table.append([f'<a href="{esc(href)}">{esc(rel)}</a>', title, status, rank, *vals, loss])
  header = (["run", "scene prompt", "status", "seed rank"] + [n for n, _ in INDEX_METRICS]
            + ["final loss"])
  body = [f"<h1>Sweep: {esc(root.name)}</h1>",
          f'<p class="muted">{esc(root)} · {len(runs)} scenes</p>']
  if sweep_eval.get("r_precision") is not None:
    body.append(f"<p>CLIP R-precision over the sweep: <b>{esc(fmt(sweep_eval['r_precision']))}"
                "</b></p>")
  body += ['<div class="row">' + "".join(cards) + "</div>",
           "<h2>Metrics (click a header to sort)</h2>",
           table_html(header, table, sortable=True, raw_cols=(0,))]
  return page(f"InterFusion sweep: {root.name}", "".join(body))


def write_reports(path) -> list[pathlib.Path]:
  """report.html in every run of ``path`` (a run or a sweep dir), plus index.html for a sweep.

  Returns:
    the files written (index.html last).

  Raises:
    rundirs.RunDirError: when ``path`` is neither.
  """
  rs = rundirs.discover(path)
  written = [write_run_report(r) for r in rs.runs]
  if rs.kind == "sweep":
    out = rs.root / "index.html"
    fileio.atomic_write_text(out, sweep_index_html(rs.root, rs.runs))
    written.append(out)
  return written


def refresh_reports(path) -> list[pathlib.Path]:
  """``write_reports`` after a run or sweep, as the command lines call it: a failure
  is logged with the command that retries it, and never fails the run (its other
  outputs are complete).

  Returns:
    the files written (empty after a failure).
  """
  try:
    return write_reports(path)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("Could not write the report pages of %s (%s); the run's other outputs "
                    "are complete. Retry with `python -m interfusion_jax.report --workdir=%s`.",
                    path, e, path)
    return []
