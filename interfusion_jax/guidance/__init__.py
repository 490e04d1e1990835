"""Score distillation guidance (PAPER.md "Score distillation").

Public API::

  sds_gradient, sds_loss, sds_weight, classifier_free_guidance,
  perp_neg_guidance, sample_timesteps, anneal_t_max                (sds.py)
  GuidanceSpec, guidance_apply, predict_eps, encode, with_camera, BACKENDS (core.py)
  load_guidance, load_text_encoder, load_tokenizer, ...            (loading.py)
  IFUNet (DeepFloyd IF stage I), load_if_unet                      (deepfloyd.py, loading.py)
  t5: check_t5_dir, encode_prompts, encode_texts, ...              (t5.py)
  PromptSpec, embedding_table, select_embeddings, view_index,
  PerpNegSpec, perp_neg_embeddings, ...                            (prompts.py)
"""
from interfusion_jax.guidance.analytic import gaussian_eps, targets_eps
from interfusion_jax.guidance.core import (BACKENDS, DEFAULTS, GuidanceSpec, encode,
                                           guidance_apply, predict_cfg_pair, predict_eps,
                                           with_camera)
from interfusion_jax.guidance import t5
from interfusion_jax.guidance.deepfloyd import IFUNet
from interfusion_jax.guidance.loading import (ModelTypeError, WeightsNotFoundError,
                                              check_if_unet_config, check_model_dir,
                                              check_not_if_superres, iter_safetensors,
                                              kind_from_unet_config, load_if_unet, unet_family,
                                              load_alphas_cumprod, load_guidance,
                                              load_scene_guidance,
                                              load_text_encoder, load_tokenizer, load_unet,
                                              load_vae, read_safetensors)
from interfusion_jax.guidance.prompts import (VIEWS, PerpNegSpec, PromptError, PromptSpec,
                                              clip_text_encoder, embedding_table,
                                              perp_neg_embeddings,
                                              scene_prompts, select_embeddings, view_index,
                                              view_prompts)
from interfusion_jax.guidance.schedule import alphas_cumprod_from_config
from interfusion_jax.guidance.sds import (add_noise, anneal_t_max, classifier_free_guidance,
                                          perp_neg_guidance, sample_timesteps, sds_gradient,
                                          sds_loss, sds_weight)
