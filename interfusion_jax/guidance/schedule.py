"""DDPM noise schedules (abar_t) from a diffusers ``scheduler_config.json``."""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def ddpm_betas(beta_schedule: str, beta_start: float, beta_end: float,
               num_train_timesteps: int) -> np.ndarray:
  """DDPM betas exactly as diffusers' ``DDPMScheduler`` builds them.

  Args:
    beta_schedule: "linear" | "scaled_linear" | "squaredcos_cap_v2".
    beta_start, beta_end: first/last beta (linear schedules).
    num_train_timesteps: T.

  Returns:
    [T] float64 betas.
  """
  n = int(num_train_timesteps)
  if beta_schedule == "linear":
    return np.linspace(beta_start, beta_end, n, dtype=np.float64)
  if beta_schedule == "scaled_linear":
    return np.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=np.float64) ** 2
  if beta_schedule == "squaredcos_cap_v2":
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)])
  raise ValueError(
      f"Unsupported beta_schedule {beta_schedule!r} in scheduler_config.json; "
      f"supported: {list(BETA_SCHEDULES)}.")


def alphas_cumprod_from_config(scheduler_config: Mapping[str, Any]) -> np.ndarray:
  """abar_t = prod_{s<=t} (1 - beta_s) for a diffusers scheduler config dict.

  Args:
    scheduler_config: parsed ``scheduler_config.json`` (keys beta_schedule,
      beta_start, beta_end, num_train_timesteps; diffusers defaults otherwise).
      A ``trained_betas`` list is used verbatim if present.

  Returns:
    [T] float32 alphas_cumprod.
  """
  cfg = dict(scheduler_config)
  if cfg.get("trained_betas") is not None:
    betas = np.asarray(cfg["trained_betas"], np.float64)
  else:
    betas = ddpm_betas(cfg.get("beta_schedule", "linear"), float(cfg.get("beta_start", 1e-4)),
                       float(cfg.get("beta_end", 0.02)),
                       int(cfg.get("num_train_timesteps", 1000)))
  return np.cumprod(1.0 - betas).astype(np.float32)
