"""The dataset mixture: deterministic from (seed, step), weighted, resumable."""

import numpy as np
import pytest

from cover_jax.train.mixture import DatasetMixture

WEIGHTS = {"appearance": 1.0, "motion": 2.0, "images": 1.0}


def test_choice_is_a_function_of_seed_and_step():
  a, b = DatasetMixture(WEIGHTS, "sample", seed=3), DatasetMixture(WEIGHTS, "sample", seed=3)
  steps = [0, 5, 17, 1000, 5]
  assert [a.datasets_at(s) for s in steps] == [b.datasets_at(s) for s in steps]
  other = DatasetMixture(WEIGHTS, "sample", seed=4)
  assert [a.datasets_at(s) for s in range(50)] != [other.datasets_at(s) for s in range(50)]


def test_sampling_frequencies_follow_weights():
  mix = DatasetMixture(WEIGHTS, "sample", seed=0)
  counts = mix.batches_consumed(4000)
  assert sum(counts.values()) == 4000
  np.testing.assert_allclose(counts["motion"] / 4000, 0.5, atol=0.03)
  np.testing.assert_allclose(counts["images"] / 4000, 0.25, atol=0.03)


def test_zero_weight_dataset_is_never_drawn():
  mix = DatasetMixture({"a": 1.0, "b": 0.0}, "sample", seed=0)
  assert mix.batches_consumed(300) == {"a": 300, "b": 0}


def test_batches_consumed_matches_the_draws():
  mix = DatasetMixture(WEIGHTS, "sample", seed=1)
  draws = [mix.datasets_at(s)[0] for s in range(123)]
  assert mix.batches_consumed(123) == {n: draws.count(n) for n in WEIGHTS}


def test_all_mode_uses_every_dataset_with_normalised_loss_weights():
  mix = DatasetMixture(WEIGHTS, "all", seed=0)
  names = mix.datasets_at(7)
  assert names == ("appearance", "images", "motion")
  np.testing.assert_allclose(mix.loss_weights(names), [0.25, 0.25, 0.5])
  assert mix.batches_consumed(10) == {n: 10 for n in WEIGHTS}


def test_sample_mode_loss_weight_is_one():
  assert DatasetMixture(WEIGHTS, "sample", seed=0).loss_weights(("motion",)) == (1.0,)


@pytest.mark.parametrize("weights", [{"a": -1.0, "b": 2.0}, {"a": 0.0}])
def test_bad_weights_rejected(weights):
  with pytest.raises(ValueError, match="weights"):
    DatasetMixture(weights, "sample", seed=0)
