"""Resuming with a changed config, and resuming past damaged checkpoints."""

import logging
import pathlib
import shutil

import jax
import pytest

from cover_jax.checkpoint import manager, resume_checks
from cover_jax.train import loop, optim, state as train_state
from cover_jax.parallel import sharding
from tests.helpers import assert_same_arrays, checkpoint_arrays, load_config

SEED = 2


def _config(data_dir, **overrides):
  """The config of conftest's tiny_run (the `trained` checkpoints), changed by `overrides`."""
  return load_config(arg="tiny=true", data_dir=data_dir, seed=SEED, **overrides)


def _steps(checkpoints: pathlib.Path) -> list[str]:
  return sorted(p.name for p in checkpoints.iterdir())


@pytest.fixture(scope="module")
def trained(tiny_run):
  """A finished 6-step tiny run with checkpoints 3 and 6 (conftest.tiny_run, seed SEED)."""
  return tiny_run[0]


@pytest.fixture
def workdir(trained, tmp_path):
  copy = tmp_path / "w"
  shutil.copytree(trained, copy)
  return copy


@pytest.mark.parametrize("overrides, expected", [
    ({"model.width": 64}, "config.model.width = 64 here, 32 in the checkpoint "
                          "(--config.model.width=32)"),
    ({"model.num_frames": 2}, "config.model.num_frames = 2 here, 4 in the checkpoint"),
    ({"datasets.motion.num_classes": 9},
     "config.datasets.motion.num_classes = 9 here, 8 in the checkpoint"),
    ({"optimizer.name": "sgd"}, "config.optimizer.name = 'sgd' here, 'adamw' in the checkpoint"),
    # Not in the list of fields: caught by comparing the saved tree (clipping adds a state).
    ({"optimizer.grad_clip_norm": 0.0}, "entries this config builds are not in the checkpoint: "
                                        "opt_state.0.0.count"),
])
def test_incompatible_change_fails_naming_field_and_values(tiny_data_dir, workdir, overrides,
                                                           expected):
  before = _steps(workdir / "checkpoints")
  with pytest.raises(resume_checks.ResumeConfigError) as e:
    loop.train_and_evaluate(_config(tiny_data_dir, total_steps=9, **overrides), str(workdir))
  assert "cannot resume from the checkpoint of step 6" in str(e.value)
  assert expected in str(e.value)
  assert _steps(workdir / "checkpoints") == before  # nothing set aside, nothing written


def test_removing_a_dataset_fails_naming_the_datasets(tiny_data_dir, workdir):
  config = load_config(arg="tiny=true,datasets=appearance+motion", data_dir=tiny_data_dir,
                       seed=SEED, total_steps=9)
  with pytest.raises(resume_checks.ResumeConfigError,
                     match=r"config.datasets = \['appearance', 'motion'\] here, "
                           r"\['appearance', 'images', 'motion'\] in the checkpoint"):
    loop.train_and_evaluate(config, str(workdir))


def test_compatible_changes_continue_and_run_changes_are_logged(tiny_data_dir, workdir, caplog,
                                                                capsys):
  config = _config(tiny_data_dir, total_steps=7, log_every=1, checkpoint_every=7,
                   **{"optimizer.learning_rate": 1e-4})
  with caplog.at_level(logging.INFO):
    loop.train_and_evaluate(config, str(workdir))
  assert "resuming from checkpoint step 6" in capsys.readouterr().out
  assert "optimizer.learning_rate: 0.001 -> 0.0001" in caplog.text
  assert "changed bookkeeping: checkpoint_every: 3 -> 7, log_every: 3 -> 1" in caplog.text
  assert (workdir / "checkpoints" / "7").exists()


def _damage(step_dir: pathlib.Path, how: str) -> None:
  state = step_dir / "state"
  if how == "truncated data files":
    for f in (p for p in state.rglob("*") if p.is_file() and "d" in p.parent.name):
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
  elif how == "state metadata missing":
    (state / "_METADATA").unlink()
  elif how == "garbage manifest":
    (state / "manifest.ocdbt").write_bytes(b"garbage")
  elif how == "garbage meta":
    (step_dir / "meta" / "metadata").write_text("{not json")
  elif how == "state item missing":
    shutil.rmtree(state)
  elif how == "empty step":
    for child in step_dir.iterdir():
      shutil.rmtree(child) if child.is_dir() else child.unlink()
  else:
    raise ValueError(how)


DAMAGES = ["truncated data files", "state metadata missing", "garbage manifest", "garbage meta",
           "state item missing", "empty step"]


@pytest.fixture(scope="module")
def small_state():
  config = load_config(arg="tiny=true")
  classes = {"appearance": 12, "images": 36, "motion": 8}
  tx = optim.build_optimizer(config.optimizer, config.total_steps)
  mesh = sharding.make_mesh(config.mesh_shape)
  _, abstract, shardings = train_state.abstract_train_state(config.model, classes, tx, mesh)
  state = train_state.init_train_state(jax.random.key(0), config.model, classes, tx, shardings)
  return abstract, state


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("how", DAMAGES)
def test_each_damage_of_the_latest_checkpoint_falls_back(small_state, tmp_path, how,
                                                        failed_restores_collected):
  abstract, state = small_state
  ckpt = manager.Checkpointer(str(tmp_path), max_to_keep=3)
  for step in (1, 2):
    ckpt.save(step, state, {"step": step})
  ckpt.close()
  _damage(tmp_path / "2", how)
  step, _, meta = manager.Checkpointer(str(tmp_path), max_to_keep=3).restore_latest(abstract)
  assert step == 1 and meta == {"step": 1}
  assert (tmp_path / "1").exists() and (tmp_path / "2").exists()  # nothing deleted


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_training_resumes_past_a_damaged_checkpoint_exactly(tiny_data_dir, trained, workdir, caplog,
                                                            failed_restores_collected):
  _damage(workdir / "checkpoints" / "6", "garbage manifest")
  # As if the run had died before its final results: it resumes (a finished run would
  # print its saved results instead).
  (workdir / "results.json").unlink()
  with caplog.at_level(logging.WARNING):
    loop.train_and_evaluate(_config(tiny_data_dir), str(workdir))
  assert "checkpoint step 6" in caplog.text and "does not restore" in caplog.text
  aside = [p.name for p in (workdir / "checkpoints").iterdir() if p.name.startswith("damaged-6-")]
  assert len(aside) == 1  # moved aside, not deleted
  assert_same_arrays(checkpoint_arrays(workdir, 6), checkpoint_arrays(trained, 6),
                     "retrained from step 3 past a damaged step 6")
