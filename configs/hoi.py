"""Default InterFusion configuration (PAPER.md "Official ... defaults").

Usage::

    python -m interfusion_jax.train --config=configs/hoi.py --workdir=runs/x
    python -m interfusion_jax.train --config=configs/hoi.py:smoke ...
    python -m interfusion_jax.train --config=configs/hoi.py --config.render.height=128

``get_config(variant)`` takes an optional variant name after the colon:

* ``paper``   -- every default of the official code (the default variant);
* ``cpu``     -- a lighter run for a laptop CPU (README's first command);
* ``quick``   -- ``cpu`` at 16x16, the CI-sized check of the default-run bars;
* ``smoke``   -- tiny, finishes in well under 2 minutes on CPU; used by tests.

Every value is validated by ``interfusion_jax.config_validation.validate`` before
anything is compiled; a bad value fails with a message naming its key.
"""
import ml_collections


def _paper() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  # --- Prompts (T_H, T_O, T_I). ------------------------------------------
  c.prompt = ml_collections.ConfigDict()
  c.prompt.human = "a man wearing a WORLD lettered T-shirt"
  c.prompt.object = "a bike"
  c.prompt.interaction = "riding a bike"
  c.prompt.prefix = "a photo of"        # "" disables
  c.prompt.suffix = "8K, HD"            # "" disables
  c.prompt.view_dependent = True
  c.prompt.overhead_elevation_deg = 60.0
  c.prompt.front_azimuth_deg = 45.0
  c.prompt.back_azimuth_deg = 135.0
  c.prompt.head_template = "the head of {human}"

  # --- Field psi (both human and object use the same architecture). ------
  c.field = ml_collections.ConfigDict()
  c.field.radius = 2.0                   # scene box [-r, r]^3
  c.field.n_levels = 16
  c.field.n_features_per_level = 2
  c.field.log2_hashmap_size = 19
  c.field.base_resolution = 16
  c.field.per_level_scale = 1.4472692
  c.field.mlp_width = 64
  c.field.mlp_hidden_layers = 1
  c.field.density_bias = "blob_magic3d"  # blob_magic3d | blob_dreamfusion | none
  c.field.density_blob_scale = 10.0
  c.field.density_blob_std = 0.5
  # Where the object field's density blob starts: origin (official) | placement
  # (where the built-in prior's placement rule puts the object named in
  # prompt.object against the anchor body; c_O starts there too).
  c.field.object_blob = "origin"
  c.field.density_activation = "softplus"  # softplus | exp | relu
  c.field.normals = "analytic"          # analytic | finite_difference
  c.field.fd_eps = 0.01
  c.field.compute_dtype = "float32"     # float32 | bfloat16 (MLP only)
  c.field.hashgrid_backend = "auto"     # auto: C++ jax.ffi kernel on CPU when it builds, else pure JAX | jax | ffi

  # --- Background: neural environment map. ------------------------------
  c.background = ml_collections.ConfigDict()
  c.background.kind = "neural"          # neural | solid | white
  c.background.sh_degree = 3
  c.background.mlp_width = 16
  c.background.mlp_hidden_layers = 2
  c.background.solid_color = (1.0, 1.0, 1.0)
  c.background.random_white_prob = 0.5  # official background augmentation

  # --- Renderer. ---------------------------------------------------------
  c.render = ml_collections.ConfigDict()
  c.render.height = 64
  c.render.width = 64
  c.render.batch_size = 1               # cameras per step (global batch)
  c.render.num_samples = 512            # samples per ray; step = sqrt(3)*2r/N
  c.render.skip_empty = True            # occupancy-grid empty-space skipping
  c.render.sample_budget = 0            # avg field evals per ray; 0 = automatic (num_samples // 8)
  c.render.alpha_mode = "sum_clamped"   # sum_clamped (official) | union
  c.render.stop_human_grad = True       # Eq. 6 gradient truncation
  c.render.composite_eps = 1e-6
  c.render.field_chunks = 1             # >1: evaluate fields in rematerialised chunks (less memory)

  c.occupancy = ml_collections.ConfigDict()
  c.occupancy.resolution = 32
  c.occupancy.update_every = 16
  c.occupancy.ema_decay = 0.95
  c.occupancy.threshold = 0.01
  c.occupancy.warmup_steps = 256
  c.occupancy.dilate = 0                # cells; 1 keeps low-density fringes (not official)

  # --- Shading. ----------------------------------------------------------
  c.shading = ml_collections.ConfigDict()
  c.shading.ambient_only_steps = 2001   # ambient only while step < this
  c.shading.ambient_light = 0.1
  c.shading.diffuse_light = 0.9
  c.shading.soft = True
  c.shading.textureless_prob = 0.5      # after ambient_only_steps
  c.shading.light_distance_range = (0.8, 1.5)
  c.shading.light_position_perturb = 1.0

  # --- Cameras. ----------------------------------------------------------
  c.camera = ml_collections.ConfigDict()
  c.camera.distance_range = (2.5, 3.0)
  c.camera.elevation_range_deg = (-10.0, 90.0)
  c.camera.azimuth_range_deg = (-180.0, 180.0)
  c.camera.fovy_range_deg = (40.0, 70.0)
  c.camera.eval_distance = 2.0
  c.camera.eval_fovy_deg = 70.0
  c.camera.eval_elevation_deg = 15.0
  c.camera.up = (0.0, 0.0, 1.0)          # z-up scene
  # Camera tracing: centre = scale * pos + offset (PAPER.md "Camera tracing").
  c.camera.object_scale = 0.7
  c.camera.interaction_scale = 0.8
  c.camera.human_scale = 0.7
  c.camera.head_scale = 0.2
  c.camera.trace_every = 1000
  c.camera.trace_threshold = 0.5
  c.camera.trace_resolution = 64

  # --- Guidance (SDS). ---------------------------------------------------
  c.guidance = ml_collections.ConfigDict()
  c.guidance.backend = "auto"           # auto | stable_diffusion | pixel | builtin
  c.guidance.weights_dir = ""           # local diffusers directory ("" = none)
  # Built-in prior only: lambda of object / interaction captions
  # (prior.denoiser.PriorSpec.object_sharpness; -1 = its default).
  c.guidance.builtin_object_sharpness = -1.0
  c.guidance.guidance_scale = -1.0      # < 0: backend default (SD 100, pixel 20)
  c.guidance.weighting = ""             # "" = backend default; uniform | sds | fantasia3d
  c.guidance.t_min = 0.02
  c.guidance.t_max = 0.98
  c.guidance.t_anneal = "none"          # none | linear | hifa_sqrt
  c.guidance.t_anneal_end = 0.5         # final t_max when annealing
  c.guidance.grad_clip = 0.0            # 0 disables
  c.guidance.unet_dtype = "float32"     # float32 | bfloat16
  c.guidance.vae_remat = False
  c.guidance.memory_efficient_attention = False  # chunked UNet attention (SD 64x64 latents)
  c.guidance.sd_resolution = 512

  # --- Anchor body / stage 1. -------------------------------------------
  c.body = ml_collections.ConfigDict()
  c.body.model = "default"              # default | path to SMPL-X .npz/.pkl
  c.body.gender = "neutral"
  c.body.aug_rot = False                # -pi/6 about x
  c.body.aug_trans = False              # root-centred instead of mean vertex
  c.body.grid_resolution = 128
  c.body.cache_dir = ""                 # "" = ~/.cache/interfusion_jax/anchors

  c.pose = ml_collections.ConfigDict()
  c.pose.anchor_file = ""               # use this anchor .npz instead of retrieval
  c.pose.codebook = ""                  # "" = built-in library codebook
  c.pose.clip_dir = ""                  # local FlaxCLIP directory ("" = built-in retrieval)
  c.pose.top_k = 7
  c.pose.choose = "best"                # best | rank | clip_rerank | sample
  c.pose.rank = 0
  c.pose.dedup = False
  c.pose.query_template = "a rendered 3d man is {interaction}"

  # --- Losses (Eq. 8). ---------------------------------------------------
  c.loss = ml_collections.ConfigDict()
  c.loss.geo_delta = 0.2                # occupancy = 1 - exp(-delta * sigma)
  c.loss.geo_eta = 0.4                  # proximal-surface width
  c.loss.geo_max_points = 80000
  c.loss.geo_reduction = "sum"          # sum | mean
  c.loss.lambda_sds_human = 1.0
  c.loss.lambda_geo_human = 1.0
  c.loss.lambda_object_sds = "official"   # official: floor(step/1000)/10
  c.loss.lambda_object_geo = "official"   # official | horse
  c.loss.lambda_object_geo_scale = 1.0    # multiplies the lambda2 schedule (not official; 1 = official)
  c.loss.schedule_period = 1000           # lambda1/lambda2 step unit (official 1000)
  c.loss.lambda_orient_start = 10.0
  c.loss.lambda_orient_end = 1000.0
  c.loss.lambda_orient_ramp_steps = 5000
  c.loss.lambda_sparsity = 1.0
  c.loss.lambda_opaque = 0.0

  # --- Optimizer. --------------------------------------------------------
  c.optim = ml_collections.ConfigDict()
  c.optim.lr_field = 0.01
  c.optim.lr_background = 0.001
  c.optim.b1 = 0.9
  c.optim.b2 = 0.99
  c.optim.eps = 1e-15

  # --- Run. --------------------------------------------------------------
  c.train = ml_collections.ConfigDict()
  c.train.steps = 10000
  c.train.log_every = 10
  c.train.val_every = 1000
  c.train.ckpt_every = 1000
  c.train.keep_checkpoints = 3
  c.train.max_consecutive_skips = 20
  c.train.turntable_frames = 60
  c.train.mesh_resolution = 128
  c.train.final_resolution = 0      # size of the final turntables / multiview (0 = render size)
  return c


def _cpu(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """README's first command: <= 20 min on a 2-core CPU (benchmarks/bench_default_run.py).

  400 steps with the official schedules compressed 25x (lambda1/lambda2 via
  loss.schedule_period, orient ramp, ambient-only phase, occupancy warm-up,
  camera tracing), smaller hash grids, 32x32 renders, 64 samples per ray, the
  built-in prior's fixed camera zoom (fovy 55 deg, distance 2.75), a
  tight proximal surface (geo_eta 0.03; the built-in prior adds no detail
  beyond the anchor body, so the human field is fitted closely to it),
  heavier geometric (L_H^geo x5, lambda2 x4) and sparsity (x10) weights, a
  white background (the prior's bank has only white backgrounds) and the
  object blob starting where the prior places the named object.
  """
  c.field.log2_hashmap_size = 15
  c.field.n_levels = 10
  c.render.num_samples = 64
  c.render.height = c.render.width = 32
  c.body.grid_resolution = 128
  c.loss.geo_eta = 0.03
  # The built-in prior gives the object only colour and a coarse silhouette;
  # stronger geometric terms keep the human on the anchor and the object out
  # of it, and a stronger sparsity term thins the object's fog
  # (docs/evaluation.md: measured on three colour pairs).
  c.loss.lambda_geo_human = 5.0
  c.loss.lambda_object_geo_scale = 4.0
  c.loss.lambda_sparsity = 10.0
  c.loss.schedule_period = 40
  # One camera zoom, that of the built-in prior's bank (prior.assets.BankSpec:
  # fovy 55 deg, distance 2.75); official: fovy U(40, 70), distance U(2.5, 3).
  c.camera.fovy_range_deg = (55.0, 55.0)
  c.camera.distance_range = (2.75, 2.75)
  # The object blob starts where the prior's bank has the named object
  # (field.object_blob; official: the origin, inside the body).
  c.field.object_blob = "placement"
  # Every bank image has a white background, so the prior can only ask for
  # white there: with the official neural environment map (learning at lr
  # 1e-3) the object field covered the background with white fog instead
  # (the default bike: a 279 L invisible haze; white: a red bike, 111 L).
  c.background.kind = "white"
  c.loss.lambda_orient_ramp_steps = 200
  c.shading.ambient_only_steps = 81
  c.occupancy.warmup_steps = 16
  c.camera.trace_every = 50
  c.train.steps = 400
  c.train.val_every = 100
  c.train.ckpt_every = 100
  c.train.turntable_frames = 24
  c.train.final_resolution = 128   # the fields are continuous: show them sharper than 32x32
  return c


def _quick(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The CI-sized default run (tests/test_default_bars.py): ``cpu`` at 16x16.

  The geometric losses (Eq. 4 and 7) are sums over ray samples, and 16x16
  renders carry 4x fewer samples than the ``cpu`` variant's 32x32, so both
  geometric weights are scaled up to keep their strength: lambda2 x4,
  L_H^geo x6 (x4 left the red/blue scene's human IoU 0.765, within 0.015 of
  its bar; docs/evaluation.md).
  """
  c = _cpu(c)
  c.render.height = c.render.width = 16
  c.loss.lambda_geo_human *= 6.0
  c.loss.lambda_object_geo_scale *= 4.0
  return c


def _smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  c.field.log2_hashmap_size = 12
  c.field.n_levels = 4
  c.field.mlp_width = 16
  c.render.num_samples = 32
  c.render.height = c.render.width = 16
  c.body.grid_resolution = 32
  c.occupancy.resolution = 16
  c.occupancy.warmup_steps = 4
  c.occupancy.update_every = 2
  c.camera.trace_every = 5
  c.camera.trace_resolution = 16
  c.loss.geo_max_points = 2048
  c.train.steps = 12
  c.train.log_every = 2
  c.train.val_every = 6
  c.train.ckpt_every = 4
  c.train.turntable_frames = 4
  c.train.mesh_resolution = 24
  return c


VARIANTS = {"paper": lambda c: c, "cpu": _cpu, "quick": _quick, "smoke": _smoke}


def get_config(variant: str = "paper") -> ml_collections.ConfigDict:
  variant = (variant or "paper").strip()
  if variant not in VARIANTS:
    raise ValueError(
        f"Unknown config variant {variant!r}; choose one of {sorted(VARIANTS)} "
        "(e.g. --config=configs/hoi.py:smoke).")
  c = VARIANTS[variant](_paper())
  c.variant = variant
  return c

