"""Mixup and cutmix within a batch, on device inside the jitted train step.

Each example is mixed with its mirror in the batch (example i with B-1-i, as
timm does), with one mixing weight `lam` per batch:
  mixup   video = lam * video + (1 - lam) * partner, lam ~ Beta(a, a);
  cutmix  one box (the same for every frame and every example) is pasted from
          the partner; lam ~ Beta(a, a) sets the box size, then lam becomes
          the exact share of pixels kept.
The targets become `lam * one_hot(label) + (1 - lam) * one_hot(partner's
label)` (each one-hot label-smoothed first, `soft_targets`) and top-1 counts
against the dominant label. A batch carries this as `label_mix` (the
partner's label) and `mix_weight` (lam per example), so gradient accumulation
can split it like any other batch field.

The settings are per dataset and static (bound like HeadSettings); the step
picks its dataset's row with the traced `dataset_index`. The RNG comes from
the step's RNG, so a resumed run mixes exactly as an uninterrupted one.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import optax

# fold_in value for the mixup stream of a step's RNG; dropout folds in small
# batch / micro-batch indices, so this one never collides with them.
MIX_STREAM = 0x6D6978


@flax.struct.dataclass(frozen=True)
class MixupSettings:
  """Static per-dataset mixup/cutmix settings, in HeadSettings.dataset_names order."""
  mixup_alpha: tuple[float, ...] = flax.struct.field(pytree_node=False)
  cutmix_alpha: tuple[float, ...] = flax.struct.field(pytree_node=False)
  mix_prob: tuple[float, ...] = flax.struct.field(pytree_node=False)
  switch_prob: tuple[float, ...] = flax.struct.field(pytree_node=False)

  @property
  def enabled(self) -> bool:
    """False when no dataset ever mixes: the step then takes its plain path."""
    return any((m > 0 or c > 0) and p > 0
               for m, c, p in zip(self.mixup_alpha, self.cutmix_alpha, self.mix_prob))


def settings_from_configs(augment_configs) -> MixupSettings:
  """MixupSettings from the datasets' `augment` ConfigDicts, in head order."""
  configs = list(augment_configs)
  field = lambda name: tuple(float(c[name]) for c in configs)
  return MixupSettings(field("mixup_alpha"), field("cutmix_alpha"), field("mix_prob"),
                       field("switch_prob"))


def mix_batches(batches, rng, settings: MixupSettings) -> tuple[dict, ...]:
  """`mix_batch` of each batch of a step, batch j with `fold_in(rng, j)`."""
  return tuple(mix_batch(b, jax.random.fold_in(rng, j), settings) for j, b in enumerate(batches))


def mix_batch(batch: dict, rng, settings: MixupSettings) -> dict:
  """Mixes {'video': (B, T, H, W, C), 'label': (B,), 'dataset_index': ()}.

  Returns the batch with the mixed video, plus `label_mix` (B,) and
  `mix_weight` (B,) float32 (1.0 where the batch was left unmixed).
  """
  video, index = batch["video"], batch["dataset_index"]
  pick = lambda values: jnp.asarray(values, jnp.float32)[index]
  mixup_alpha, cutmix_alpha = pick(settings.mixup_alpha), pick(settings.cutmix_alpha)
  apply_key, switch_key, mixup_key, cutmix_key, box_key = jax.random.split(rng, 5)
  apply = (jax.random.uniform(apply_key) < pick(settings.mix_prob)) & (
      (mixup_alpha > 0) | (cutmix_alpha > 0))
  use_cutmix = (cutmix_alpha > 0) & (
      (mixup_alpha <= 0) | (jax.random.uniform(switch_key) < pick(settings.switch_prob)))
  partner = jnp.flip(video, axis=0)

  lam_mixup = _beta(mixup_key, mixup_alpha)
  mixed = lam_mixup.astype(video.dtype) * video + (1 - lam_mixup).astype(video.dtype) * partner
  box_hw = cutmix_box(box_key, _beta(cutmix_key, cutmix_alpha), video.shape[2], video.shape[3])
  cut = jnp.where(box_hw[None, None, :, :, None], partner, video)
  lam_cutmix = 1.0 - box_hw.mean()

  out = dict(batch)
  out["video"] = jnp.where(apply, jnp.where(use_cutmix, cut, mixed), video)
  lam = jnp.where(apply, jnp.where(use_cutmix, lam_cutmix, lam_mixup), 1.0)
  out["label_mix"] = jnp.flip(batch["label"], axis=0)
  out["mix_weight"] = jnp.full(batch["label"].shape, lam, jnp.float32)
  return out


def _beta(key, alpha):
  """Beta(alpha, alpha); alpha 0 (off) draws from Beta(1, 1) (the result is unused)."""
  safe = jnp.where(alpha > 0, alpha, 1.0)
  return jax.random.beta(key, safe, safe).astype(jnp.float32)


def cutmix_box(key, lam, height: int, width: int) -> jax.Array:
  """(H, W) bool mask of a box covering about 1 - lam of the frame (timm's rand_bbox).

  The box has sides sqrt(1 - lam) times the frame's, a uniform random centre,
  and is clipped at the frame's border (so the kept share is recomputed from
  the mask).
  """
  cut = jnp.sqrt(1.0 - lam)
  cut_h, cut_w = (height * cut).astype(jnp.int32), (width * cut).astype(jnp.int32)
  y_key, x_key = jax.random.split(key)
  cy = jax.random.randint(y_key, (), 0, height)
  cx = jax.random.randint(x_key, (), 0, width)
  rows = jnp.arange(height)
  cols = jnp.arange(width)
  in_rows = (rows >= cy - cut_h // 2) & (rows < cy + cut_h // 2)
  in_cols = (cols >= cx - cut_w // 2) & (cols < cx + cut_w // 2)
  return in_rows[:, None] & in_cols[None, :]


def soft_targets(labels, labels_mix, mix_weight, num_classes: int, label_smoothing: float):
  """Label-smoothed one-hots mixed by `mix_weight`: (B, num_classes), rows sum to 1."""
  def smoothed(y):
    one_hot = jax.nn.one_hot(y, num_classes)
    return optax.smooth_labels(one_hot, label_smoothing) if label_smoothing > 0 else one_hot
  weight = mix_weight[:, None]
  return weight * smoothed(labels) + (1.0 - weight) * smoothed(labels_mix)


def dominant_label(labels, labels_mix, mix_weight):
  """The label with the larger share of each mixed example (top-1 counts against it)."""
  return jnp.where(mix_weight >= 0.5, labels, labels_mix)
