"""Every config parses, and bad configs fail early with errors that teach."""


import pytest

from cover_jax.config import args as config_args
from cover_jax.config.validation import ConfigError, validate_config
from tests.helpers import REPO, load_config

# configs/study.py describes a study of many training configs (tests/test_study.py checks each).
CONFIG_FILES = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").glob("*.py")
                      if p.name != "study.py")


@pytest.mark.parametrize("path", CONFIG_FILES)
@pytest.mark.parametrize("arg", [None, "tiny=true"])
def test_every_config_parses_and_validates(path, arg):
  config = load_config(path, arg)
  assert config.is_locked
  validate_config(config, num_devices=1)


@pytest.mark.parametrize("subset", ["motion", "appearance+motion", "appearance+motion+images"])
def test_demo_subsets_select_datasets(subset):
  config = load_config(arg=f"datasets={subset}")
  assert sorted(config.datasets) == sorted(subset.split("+"))


def test_locked_config_rejects_typos():
  config = load_config()
  with pytest.raises(AttributeError, match="datset"):
    config.datset = 1


def test_unknown_demo_dataset_names_the_choices():
  with pytest.raises(ValueError, match=r"unknown dataset.*kinetics.*appearance.*images.*motion"):
    load_config(arg="datasets=kinetics+motion")


def test_parse_arg_types_and_unknown_keys():
  arg = config_args.parse_arg("steps=7,tiny=true,datasets=motion", steps=1, tiny=False, datasets="")
  assert (arg.steps, arg.tiny, arg.datasets) == (7, True, "motion")
  with pytest.raises(ValueError, match="Did you mean 'steps'"):
    config_args.parse_arg("stpes=3", steps=1)
  with pytest.raises(ValueError, match="expected a int"):
    config_args.parse_arg("steps=many", steps=1)


def _error(num_devices=1, process_count=1, **overrides) -> str:
  config = load_config(**overrides)
  with pytest.raises(ConfigError) as e:
    validate_config(config, num_devices=num_devices, process_count=process_count)
  return str(e.value)


@pytest.mark.parametrize("overrides, expected", [
    ({"model.variant": "Q/16"}, ["config.model.variant = 'Q/16'", "Fix: --config.model.variant="]),
    ({"model.variant": "B16"}, ["config.model.variant = 'B16'", "NAME/PATCH"]),
    ({"model.attention_type": "divided"}, ["config.model.attention_type = 'divided'",
                                            "divided_space_time"]),
    ({"model.image_size": 30}, ["config.model.image_size = 30", "multiple of the patch size 8",
                                 "--config.model.image_size=32"]),
    ({"model.num_heads": 5}, ["config.model.num_heads = 5", "must divide the width 64",
                               "--config.model.num_heads=4"]),
    ({"model.head_init_std": -0.02}, ["config.model.head_init_std = -0.02", ">= 0"]),
    ({"model.attention_impl": "flash"}, ["config.model.attention_impl = 'flash'",
                                          "auto, xla, cudnn"]),
    ({"model.attention_impl": "cudnn"}, ["config.model.attention_impl = 'cudnn'",
                                          "compute dtype float32", "not gpu",
                                          "--config.model.attention_impl=auto"]),
    ({"datasets.motion.weight": -1.0}, ["config.datasets.motion.weight", "-1.0", ">= 0"]),
    ({"datasets.motion.weight": 0.0, "datasets.appearance.weight": 0.0,
      "datasets.images.weight": 0.0}, ["datasets.*.weight", "at least one weight must be > 0"]),
    ({"datasets.motion.source": "kinetics700"}, ["config.datasets.motion.source = 'kinetics700'",
                                                  "synthetic_motion"]),
    ({"datasets.motion.num_classes": 9}, ["config.datasets.motion.num_classes = 9",
                                           "--config.datasets.motion.num_classes=8"]),
    ({"datasets.motion.crop_size": 20}, ["config.datasets.motion.crop_size = 20",
                                          "--config.datasets.motion.crop_size=16"]),
    ({"datasets.motion.stride": 0}, ["config.datasets.motion.num_frames/stride = (4, 0)", ">= 1"]),
    ({"datasets.motion.stride": 6}, ["spans 19 frames", "have 16",
                                      "--config.datasets.motion.stride=5"]),
    ({"datasets.images.num_frames": 8}, ["config.datasets.images.num_frames/stride = (8, 1)",
                                          "1-frame videos"]),
    ({"mixture": "interleave"}, ["config.mixture = 'interleave'", "sample, all"]),
    ({"optimizer.name": "lamb"}, ["config.optimizer.name = 'lamb'", "adamw, sgd"]),
    ({"optimizer.warmup_steps": 5000}, ["config.optimizer.warmup_steps = 5000"]),
    ({"mesh_shape": (2, 2, 1)}, ["config.mesh_shape = (2, 2, 1)", "does not fit 1 devices"]),
])
def test_bad_values_name_field_value_and_fix(overrides, expected):
  message = _error(**overrides)
  for fragment in expected:
    assert fragment in message, f"{fragment!r} not in:\n{message}"


def test_batch_size_must_divide_over_devices():
  message = _error(num_devices=8, **{"datasets.motion.batch_size": 30, "mesh_shape": (-1, 1, 1)})
  assert "config.datasets.motion.batch_size = 30" in message
  assert "8 device(s)" in message and "--config.datasets.motion.batch_size=32" in message


def test_all_problems_reported_at_once():
  message = _error(**{"model.image_size": 30, "optimizer.name": "lamb"})
  assert "model.image_size" in message and "optimizer.name" in message


def test_finetune_recipe_new_dataset_gets_a_new_head_and_needs_its_class_count():
  config = load_config("configs/finetune.py", "dataset=hmdb51,classes=51,init=/w/tsf.pyth")
  assert list(config.datasets) == ["hmdb51"] and config.datasets.hmdb51.num_classes == 51
  assert config.init_from == "/w/tsf.pyth" and config.datasets.hmdb51.path == "/data/hmdb51"
  with pytest.raises(ValueError, match="give its class count, e.g. classes=51"):
    load_config("configs/finetune.py", "dataset=hmdb51")
  with pytest.raises(ValueError, match="k400 has 400"):
    load_config("configs/finetune.py", "dataset=k400,classes=10")


@pytest.mark.parametrize("arg", [None, "tiny=true"])
def test_cover_recipe_matches_its_documented_sources(arg):
  # The values configs/cover.py's docstring documents (paper abstract: video sets
  # with different label spaces plus images as 1-frame clips; ours: which sets,
  # mixture 'all', equal weights). Change the docstring with them.
  from cover_jax.train import mixture
  config = load_config("configs/cover.py", arg)
  assert sorted(config.datasets) == ["in21k", "k400", "mit", "ssv2"]
  assert config.mixture == "all"
  assert {n: ds.weight for n, ds in config.datasets.items()} == dict.fromkeys(config.datasets, 1.0)
  assert config.datasets.in21k.num_frames == 1
  assert all(config.datasets[n].num_frames > 1 for n in ("k400", "ssv2", "mit"))
  mix = mixture.DatasetMixture({n: ds.weight for n, ds in config.datasets.items()},
                               config.mixture, config.seed)
  every = mix.datasets_at(0)
  assert sorted(every) == sorted(config.datasets) and mix.datasets_at(7) == every
  assert mix.loss_weights(every) == (0.25,) * 4
  if arg is None:
    assert (config.model.variant, config.model.num_frames, config.model.image_size) == (
        "B/16", 8, 224)
    assert (config.optimizer.name, config.total_steps) == ("sgd", 30000)


@pytest.mark.parametrize("path, arg, steps", [
    ("configs/demo.py", "tiny=true", 6), ("configs/demo.py", "tiny=true,steps=4000", 4000),
    ("configs/demo.py", None, 4000), ("configs/demo.py", "steps=300", 300),
    ("configs/k400.py", "tiny=true", 4), ("configs/k400.py", "tiny=true,steps=30000", 30000),
    ("configs/finetune.py", "tiny=true", 4), ("configs/finetune.py", None, 10000),
    ("configs/finetune.py", "tiny=true,steps=10000", 10000),
])
def test_an_explicit_step_count_is_kept_and_tiny_variants_are_short(path, arg, steps):
  config = load_config(path, arg)
  assert config.total_steps == steps
  if "tiny" in (arg or ""):
    assert config.checkpoint_every < 10 and config.eval_every < 10


def test_scanned_models_take_stochastic_depth_and_init_from():
  # The paper-scale memory setting (scan + remat) with the recipe's stochastic depth,
  # fine-tuned from released weights.
  config = load_config("configs/k400.py", "tiny=true", init_from="/ckpt/ViT-B_16.npz",
                       **{"model.scan_layers": True, "model.remat": "full",
                          "model.stochastic_depth": 0.1})
  assert config.model.scan_layers and config.model.stochastic_depth == 0.1 and config.init_from
  validate_config(config, num_devices=1)  # raised ConfigError for both before issue 12
  # The same config is still checked: an invalid rate is refused, and only it is named.
  config.model.stochastic_depth = 1.5
  with pytest.raises(ConfigError) as e:
    validate_config(config, num_devices=1)
  problems = str(e.value).splitlines()[1:]
  assert len(problems) == 1 and "config.model.stochastic_depth = 1.5" in problems[0]
