"""The pure training step, its settings, and its one compiled form.

`train_step(state, batches, rng, *, graphdef, tx, settings, learning_rate_fn)`
is a plain function of arrays. Everything it does besides the loss and the
update is decided by `StepSettings`, which `StepSettings.from_config` builds
from a config in one place: per-dataset label smoothing and mixup/cutmix,
the loss weights of the mixture, input normalisation, gradient accumulation
and the non-finite policy. `TrainStep` is the one compiled form the trainer
and the benchmarks run: jitted once per input shape, under the run's sharding
rules, with the state crossing the jit boundary as a flat list of arrays.

The head is chosen inside the step by the batch's `dataset_index`
(models/cover.py), so datasets whose batches have the same shape share one
compiled step: a run compiles once per distinct input shape (e.g. once for
8-frame clips, once for T=1 images), however many datasets it mixes. A step
takes a tuple of per-dataset batches: one in 'sample' mixture mode, one per
dataset in 'all' mode, with the loss a weighted sum.
"""

from __future__ import annotations

import concurrent.futures
import functools
import time
from collections.abc import Sequence

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from cover_jax.config import defaults
from cover_jax.input import device
from cover_jax.parallel import sharding
from cover_jax.train import grad_accum, mixup as mixup_lib, nonfinite
from cover_jax.train.state import TrainState


@flax.struct.dataclass(frozen=True)
class StepSettings:
  """Everything static that shapes a step besides the model and optimizer.

  Per-dataset entries follow `dataset_names` (sorted, the heads' order).
  """
  dataset_names: tuple[str, ...] = flax.struct.field(pytree_node=False)
  label_smoothing: tuple[float, ...] = flax.struct.field(pytree_node=False)
  # Loss weight of each batch of a step (the mixture's; 1.0 each in 'sample' mode).
  loss_weights: tuple[float, ...] = flax.struct.field(pytree_node=False, default=(1.0,))
  mixup: mixup_lib.MixupSettings | None = flax.struct.field(pytree_node=False, default=None)
  # (mean, std) per channel: uint8 frames are normalised inside the step
  # (device.normalise); None: the batches already hold normalised floats.
  normalise: tuple | None = flax.struct.field(pytree_node=False, default=None)
  micro_batches: int = flax.struct.field(pytree_node=False, default=1)
  skip_nonfinite: bool = flax.struct.field(pytree_node=False, default=False)
  inject_nonfinite_at_step: int = flax.struct.field(pytree_node=False, default=-1)

  @classmethod
  def from_config(cls, config, dataset_names: Sequence[str],
                  loss_weights: Sequence[float]) -> StepSettings:
    """The settings of `config`'s run over `dataset_names` (sorted)."""
    datasets = [config.datasets[n] for n in dataset_names]
    return cls(
        dataset_names=tuple(dataset_names),
        label_smoothing=tuple(float(ds.label_smoothing) for ds in datasets),
        loss_weights=tuple(float(w) for w in loss_weights),
        mixup=mixup_lib.settings_from_configs(defaults.augment_of(ds) for ds in datasets),
        normalise=(tuple(config.input.mean), tuple(config.input.std)),
        micro_batches=int(config.grad_accum_steps),
        skip_nonfinite=config.nonfinite.policy == "skip",
        inject_nonfinite_at_step=int(config.nonfinite.inject_at_step))


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


def _loss_fn(params, graphdef, batches, rng, settings: StepSettings, poison=1.0):
  model = nnx.merge(graphdef, params)
  smoothing = dict(zip(settings.dataset_names, settings.label_smoothing))
  total, losses, top1s = 0.0, [], []
  for i, (batch, weight) in enumerate(zip(batches, settings.loss_weights)):
    rngs = nnx.Rngs(dropout=jax.random.fold_in(rng, i))

    def loss_of(name, logits, batch=batch):
      return classification_loss(logits, batch["label"], smoothing[name],
                                 batch.get("label_mix"), batch.get("mix_weight"))
    loss, top1 = model(batch["video"], batch["dataset_index"], reduce=loss_of,
                       deterministic=False, rngs=rngs)
    loss = loss * poison  # exactly 1.0 unless nonfinite.inject_at_step (nonfinite.py)
    total += weight * loss
    losses.append(loss)
    top1s.append(top1)
  return total, (jnp.stack(losses), jnp.stack(top1s))


def train_step(state: TrainState, batches: Sequence[dict], rng: jax.Array, *, graphdef,
               tx: optax.GradientTransformation, settings: StepSettings, learning_rate_fn):
  """One optimizer step on `batches` (a tuple of per-dataset batches).

  Each batch is {'video': (B, T, H, W, 3) uint8 (float if `settings.normalise`
  is None), 'label': (B,) int, 'dataset_index': () int32 index into
  `settings.dataset_names`}. Metrics hold the total loss, per-batch losses and
  top-1, the gradient norm and the learning rate; the host maps per-batch
  entries to dataset names. In order: normalise; mixup/cutmix where a
  dataset's settings turn them on (with an RNG folded from the step's, so a
  resumed run mixes as an uninterrupted one; all-off settings leave the step
  exactly as without); loss and gradients, accumulated over
  `settings.micro_batches` slices of every batch (grad_accum.py: the same
  result up to float order); the update, dropped on device for a non-finite
  step when `settings.skip_nonfinite` (the step counter still advances).
  """
  step_rng = jax.random.fold_in(rng, state.step)
  if settings.normalise is not None:
    mean, std = settings.normalise
    batches = tuple({**b, "video": device.normalise(b["video"], mean, std)} for b in batches)
  if settings.mixup is not None and settings.mixup.enabled:
    batches = mixup_lib.mix_batches(batches, jax.random.fold_in(step_rng, mixup_lib.MIX_STREAM),
                                    settings.mixup)
  poison = nonfinite.poison_factor(state.step, settings.inject_nonfinite_at_step)
  loss_fn = lambda params, batches, rng: _loss_fn(params, graphdef, batches, rng, settings,
                                                   poison)
  grad_fn = grad_accum.value_and_grad(loss_fn, settings.micro_batches)
  (loss, (losses, top1s)), grads = grad_fn(state.params, tuple(batches), step_rng)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.tree.norm(grads)
  if settings.skip_nonfinite:
    finite = nonfinite.all_finite(loss, grad_norm)
    params, opt_state = nonfinite.keep_if_finite(finite, (params, opt_state),
                                                 (state.params, state.opt_state))
  metrics = {"loss": loss, "batch_loss": losses, "batch_top1": top1s,
             "grad_norm": grad_norm,
             "learning_rate": learning_rate_fn(state.step)}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def bind(graphdef, tx, settings: StepSettings, learning_rate_fn):
  """`train_step` with its constants bound: a function (state, batches, rng) to jit."""
  return functools.partial(train_step, graphdef=graphdef, tx=tx, settings=settings,
                           learning_rate_fn=learning_rate_fn)


class TrainStep:
  """`train_step` compiled: jitted under the sharding rules, the state as a flat list of arrays.

  A TrainState's parameters and optimizer moments are NNX Variables: passing
  the state itself through `jax.jit` flattens its ~270 leaves in Python and
  rebuilds them every step (about 0.4 + 1.3 ms of host time). A list of
  arrays crosses the jit boundary in C++. The loop keeps the list between
  steps and builds a TrainState only where one is needed (checkpoints,
  evaluation): about 5% of an image step on a CPU host (docs/performance.md).
  The list is donated: its buffers become the next step's state.
  """

  def __init__(self, graphdef, tx, settings: StepSettings, learning_rate_fn, *,
               state_shardings, metrics_sharding, rules: sharding.Rules = sharding.LOGICAL_AXIS_RULES):
    step = bind(graphdef, tx, settings, learning_rate_fn)
    leaf_shardings, self.treedef = jax.tree.flatten(state_shardings)
    self.settings = settings

    def flat_step(leaves, batches, rng):
      with nnx.logical_axis_rules(rules):  # `sharding.constrain` inside reads them
        state, metrics = step(jax.tree.unflatten(self.treedef, leaves), batches, rng)
      return jax.tree.leaves(state), metrics
    self.jitted = jax.jit(flat_step, out_shardings=(leaf_shardings, metrics_sharding),
                          donate_argnums=0)
    self._compiling: dict[tuple, concurrent.futures.Future] = {}  # signature -> executable
    self.compile_seconds: dict[str, float] = {}  # input shapes -> seconds (precompiled ones)

  def precompile(self, leaves_abstract, batches_per_shape, rng, mesh, on_start=None) -> None:
    """Starts compiling the step for each input shape, in background threads.

    XLA compiles without the GIL, so the compiles overlap each other and the
    rest of start-up (opening datasets, restoring the state, filling the
    input pipelines); the first step of a shape waits for its compile only if
    it is not done yet. `batches_per_shape`: for each shape, a tuple of
    per-dataset batches of jax.ShapeDtypeStructs (with shardings), as the loop
    will pass them. `on_start(description)` is called as each compile starts.
    """
    pool = concurrent.futures.ThreadPoolExecutor(max(len(batches_per_shape), 1),
                                                 thread_name_prefix="compile_train_step")
    for batches in batches_per_shape:
      key = _signature(batches)
      if key not in self._compiling:
        self._compiling[key] = pool.submit(self._compile, leaves_abstract, batches, rng, mesh,
                                           key, on_start)
    pool.shutdown(wait=False)

  def _compile(self, leaves_abstract, batches, rng, mesh, key, on_start):
    if on_start is not None:
      on_start(describe_batches(batches))
    start = time.time()
    with jax.set_mesh(mesh):
      compiled = self.jitted.lower(leaves_abstract, batches, rng).compile()
    self.compile_seconds[describe_batches(batches)] = time.time() - start
    return compiled

  def __call__(self, leaves, batches, rng):
    future = self._compiling.get(_signature(batches))
    if future is not None:
      return future.result()(leaves, batches, rng)  # waits if it is still compiling
    return self.jitted(leaves, batches, rng)

  def flatten(self, state) -> list:
    leaves, treedef = jax.tree.flatten(state)
    if treedef != self.treedef:
      raise ValueError(f"state structure {treedef} differs from the step's {self.treedef}")
    return leaves

  def unflatten(self, leaves):
    return jax.tree.unflatten(self.treedef, leaves)

  def compilations(self) -> int:
    """Compiled signatures so far: precompiled ones, and jit's own cache (a JAX-internal API)."""
    return len(self._compiling) + self.jitted._cache_size()  # pylint: disable=protected-access


def _signature(batches) -> tuple:
  """What decides a compile: the batches' tree, shapes and dtypes."""
  leaves, treedef = jax.tree.flatten(batches)
  return treedef, tuple((tuple(x.shape), str(x.dtype)) for x in leaves)


def describe_batches(batches) -> str:
  """'32 x 4-frame 32x32 clips + 64 32x32 images': a step's input shapes, for people."""
  parts = []
  for batch in batches:
    b, t, h, w, _ = batch["video"].shape
    parts.append(f"{b} x {t}-frame {h}x{w} clips" if t > 1 else f"{b} {h}x{w} images")
  return " + ".join(parts)
