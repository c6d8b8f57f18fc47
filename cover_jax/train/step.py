"""The pure training step (its evaluation counterpart: evaluation/step.py).

`train_step(state, batches, rng) -> (state, metrics)` is a plain function of
arrays: the model's graph definition, the optimizer and the per-dataset loss
settings are bound with `functools.partial`, and the trainer jits it once.

The head is chosen *inside* the step with `lax.switch` on the batch's
`dataset_index`, so datasets whose batches have the same shape share one
compiled step: a run compiles once per distinct input shape (e.g. once for
8-frame clips, once for T=1 images), however many datasets it mixes.

A step takes a tuple of per-dataset batches: one in 'sample' mixture mode, one
per dataset in 'all' mode, with the loss a weighted sum.

Mixup / cutmix (mixup.py), where a dataset's config turns them on, mix each
batch inside the step, before the loss; the loss then uses soft targets.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from cover_jax.train import grad_accum, mixup as mixup_lib, nonfinite
from cover_jax.train.state import TrainState


@flax.struct.dataclass(frozen=True)
class HeadSettings:
  """Static, per-dataset loss settings, in `dataset_names` order."""
  dataset_names: tuple[str, ...] = flax.struct.field(pytree_node=False)
  label_smoothing: tuple[float, ...] = flax.struct.field(pytree_node=False)


def classification_loss(logits, labels, label_smoothing: float, labels_mix=None,
                        mix_weight=None):
  """Mean softmax cross-entropy with label smoothing, and top-1 hits.

  With `labels_mix` and `mix_weight` (a mixup/cutmix batch, mixup.py) the
  targets are the mixed smoothed one-hots and top-1 counts the dominant label.
  """
  if labels_mix is not None:
    targets = mixup_lib.soft_targets(labels, labels_mix, mix_weight, logits.shape[-1],
                                 label_smoothing)
    labels = mixup_lib.dominant_label(labels, labels_mix, mix_weight)
  else:
    targets = jax.nn.one_hot(labels, logits.shape[-1])
    if label_smoothing > 0:
      targets = optax.smooth_labels(targets, label_smoothing)
  loss = optax.softmax_cross_entropy(logits, targets).mean()
  top1 = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32).mean()
  return loss, top1


_TARGET_KEYS = ("label", "label_mix", "mix_weight")


def _head_loss(model, features_bd, batch: dict, heads: HeadSettings):
  """Loss and top-1 through the head of the batch's dataset (`lax.switch`)."""
  targets = {k: batch[k] for k in _TARGET_KEYS if k in batch}

  def branch(i):
    def f(features, t):
      logits = model.heads[heads.dataset_names[i]](features)
      return classification_loss(logits, t["label"], heads.label_smoothing[i],
                                 t.get("label_mix"), t.get("mix_weight"))
    return f
  branches = [branch(i) for i in range(len(heads.dataset_names))]
  return jax.lax.switch(batch["dataset_index"], branches, features_bd, targets)


def _loss_fn(params, graphdef, batches, loss_weights, rng, heads: HeadSettings, poison=1.0):
  model = nnx.merge(graphdef, params)
  total, losses, top1s = 0.0, [], []
  for i, (batch, weight) in enumerate(zip(batches, loss_weights)):
    rngs = nnx.Rngs(dropout=jax.random.fold_in(rng, i))
    features = model.backbone(batch["video"], deterministic=False, rngs=rngs)
    loss, top1 = _head_loss(model, features, batch, heads)
    loss = loss * poison  # exactly 1.0 unless nonfinite.inject_at_step (nonfinite.py)
    total += weight * loss
    losses.append(loss)
    top1s.append(top1)
  return total, (jnp.stack(losses), jnp.stack(top1s))


def train_step(state: TrainState, batches: Sequence[dict], rng: jax.Array, *,
               graphdef, tx: optax.GradientTransformation, heads: HeadSettings,
               loss_weights: tuple[float, ...], learning_rate_fn, micro_batches: int = 1,
               skip_nonfinite: bool = False, inject_nonfinite_at_step: int = -1,
               mixup: mixup_lib.MixupSettings | None = None):
  """One optimizer step on `batches` (a tuple of per-dataset batches).

  Each batch is {'video': (B, T, H, W, 3) float, 'label': (B,) int,
  'dataset_index': () int32 index into `heads.dataset_names`}.
  Metrics hold the total loss, per-batch losses and top-1, the gradient norm
  and the learning rate; the host maps per-batch entries to dataset names.
  With `micro_batches` = k > 1 the gradients are accumulated over k slices of
  every batch (grad_accum.py); the step's result is the same up to float order.
  With `skip_nonfinite`, a step whose loss or gradient is not finite leaves
  params and optimizer state unchanged (the step counter still advances).
  With `mixup` (per-dataset settings, mixup.py) every batch is mixed first,
  with an RNG folded from the step's; `None` or all-off settings leave the
  step exactly as without.
  """
  step_rng = jax.random.fold_in(rng, state.step)
  if mixup is not None and mixup.enabled:
    batches = mixup_lib.mix_batches(batches, jax.random.fold_in(step_rng, mixup_lib.MIX_STREAM),
                                    mixup)
  poison = nonfinite.poison_factor(state.step, inject_nonfinite_at_step)
  loss_fn = lambda params, batches, rng: _loss_fn(params, graphdef, batches, loss_weights,
                                                   rng, heads, poison)
  grad_fn = grad_accum.value_and_grad(loss_fn, micro_batches)
  (loss, (losses, top1s)), grads = grad_fn(state.params, tuple(batches), step_rng)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.tree.norm(grads)
  if skip_nonfinite:
    finite = nonfinite.all_finite(loss, grad_norm)
    params, opt_state = nonfinite.keep_if_finite(finite, (params, opt_state),
                                                 (state.params, state.opt_state))
  metrics = {"loss": loss, "batch_loss": losses, "batch_top1": top1s,
             "grad_norm": grad_norm,
             "learning_rate": learning_rate_fn(state.step)}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def bind_train_step(graphdef, tx, heads: HeadSettings, loss_weights, learning_rate_fn,
                    nonfinite_config=None, micro_batches: int = 1,
                    mixup: mixup_lib.MixupSettings | None = None):
  """`train_step` with its constants bound; `nonfinite_config` is `config.nonfinite`."""
  extra = {"mixup": mixup}
  if nonfinite_config is not None:
    extra = dict(skip_nonfinite=nonfinite_config.policy == "skip",
                 inject_nonfinite_at_step=int(nonfinite_config.inject_at_step))
  return functools.partial(train_step, graphdef=graphdef, tx=tx, heads=heads,
                           loss_weights=tuple(loss_weights), learning_rate_fn=learning_rate_fn,
                           micro_batches=micro_batches, **extra)


class FlatStateStep:
  """A jitted train step that takes and returns the state as a flat list of arrays.

  A TrainState's parameters and optimizer moments are NNX Variables: passing
  the state itself through `jax.jit` flattens its ~270 leaves in Python and
  rebuilds them every step (about 0.4 + 1.3 ms of host time). A list of
  arrays crosses the jit boundary in C++. The loop keeps the list between
  steps and builds a TrainState only where one is needed (checkpoints,
  evaluation): about 5% of an image step on a CPU host (benchmarks/NOTES.md).
  """

  def __init__(self, step, state_shardings, metrics_sharding):
    leaf_shardings, self.treedef = jax.tree.flatten(state_shardings)

    def flat_step(leaves, batches, rng):
      state, metrics = step(jax.tree.unflatten(self.treedef, leaves), batches, rng)
      return jax.tree.leaves(state), metrics
    # The list is donated: its buffers become the next step's state.
    self.jitted = jax.jit(flat_step, out_shardings=(leaf_shardings, metrics_sharding),
                          donate_argnums=0)

  def __call__(self, leaves, batches, rng):
    return self.jitted(leaves, batches, rng)

  def flatten(self, state) -> list:
    leaves, treedef = jax.tree.flatten(state)
    if treedef != self.treedef:
      raise ValueError(f"state structure {treedef} differs from the step's {self.treedef}")
    return leaves

  def unflatten(self, leaves):
    return jax.tree.unflatten(self.treedef, leaves)

  def compilations(self) -> int:
    """Compiled signatures so far (jit's own cache size, a JAX-internal API)."""
    return self.jitted._cache_size()  # pylint: disable=protected-access
