"""The optax optimizer from `config.optimizer`.

Warm-up + cosine learning rate, global-norm gradient clipping, and decoupled
weight decay on matmul kernels only: norms, biases, the cls token and the
position/time embeddings are not decayed (as in ViT/TimeSformer practice).
"""

from __future__ import annotations

import jax
import optax

from cover_jax.config import allowed

_NO_DECAY_NAMES = ("bias", "scale", "cls_token", "pos_embed", "time_embed")


def learning_rate_schedule(opt_config, total_steps: int) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=opt_config.learning_rate,
      warmup_steps=opt_config.warmup_steps, decay_steps=total_steps,
      end_value=opt_config.end_learning_rate)


def weight_decay_mask(params):
  """True for the leaves that get weight decay (kernels of matmuls/convs)."""
  def decays(path, _):
    # The last dict key is the parameter's name (nnx Variables add a `.value`).
    name = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)][-1]
    return not any(name == n or name.endswith("_bias") for n in _NO_DECAY_NAMES)
  return jax.tree_util.tree_map_with_path(decays, params)


def build_optimizer(opt_config, total_steps: int) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(opt_config, total_steps)
  parts = []
  if opt_config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(opt_config.grad_clip_norm))
  if opt_config.name == "adamw":
    parts.append(optax.adamw(schedule, b1=opt_config.b1, b2=opt_config.b2,
                             weight_decay=opt_config.weight_decay, mask=weight_decay_mask))
  elif opt_config.name == "sgd":
    if opt_config.weight_decay > 0:
      parts.append(optax.add_decayed_weights(opt_config.weight_decay, mask=weight_decay_mask))
    parts.append(optax.sgd(schedule, momentum=opt_config.momentum, nesterov=opt_config.nesterov))
  else:
    raise ValueError(f"config.optimizer.name = {opt_config.name!r}: use one of {allowed.OPTIMIZERS}")
  return optax.chain(*parts)
