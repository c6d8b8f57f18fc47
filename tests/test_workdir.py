"""A workdir that cannot take checkpoints fails before training starts, with a message."""

import os
import shutil
import subprocess
import sys

import pytest

from cover_jax.train import loop
from cover_jax.checkpoint import workdir
from tests.helpers import REPO, load_config


def _main(workdir_path, data_dir, wrap=()):
  cmd = [*wrap, sys.executable, "-m", "cover_jax.main", "--config=configs/demo.py:tiny=true",
         f"--workdir={workdir_path}", f"--config.data_dir={data_dir}"]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_workdir_under_a_file_is_refused(tiny_data_dir, tmp_path):
  (tmp_path / "a_file").write_text("x")
  config = load_config(arg="tiny=true", data_dir=tiny_data_dir)
  with pytest.raises(workdir.WorkdirError, match=r"is not usable: writing a file there failed"):
    loop.train_and_evaluate(config, str(tmp_path / "a_file" / "run"))


def test_too_little_space_for_a_checkpoint_is_refused(tmp_path):
  abstract = {"w": _Shape((1024, 1024), "float32")}  # 4 MiB
  assert workdir.checkpoint_bytes(abstract) == 4 << 20
  workdir.ensure_room_for_checkpoint(str(tmp_path / "checkpoints"), abstract)  # plenty here
  huge = {"w": _Shape((shutil.disk_usage(tmp_path).free, 2), "float32")}
  with pytest.raises(workdir.WorkdirError, match=r"free, but one checkpoint of this model needs"):
    workdir.ensure_room_for_checkpoint(str(tmp_path / "checkpoints"), huge)


class _Shape:
  def __init__(self, shape, dtype):
    self.shape, self.dtype = shape, dtype


# Runs the command with files limited to 32 KiB: larger writes fail with EFBIG,
# as writes to a full disk fail with ENOSPC (Python ignores SIGXFSZ, so the
# write returns an error instead of killing the process).
_SMALL_FILES_ONLY = [sys.executable, "-c",
                     "import os, resource, sys; "
                     "resource.setrlimit(resource.RLIMIT_FSIZE, (32768, 32768)); "
                     "os.execv(sys.argv[1], sys.argv[1:])"]


def test_main_exits_5_when_the_workdir_takes_no_data(tiny_data_dir, tmp_path):
  result = _main(tmp_path / "run", tiny_data_dir, wrap=_SMALL_FILES_ONLY)
  assert result.returncode == workdir.EXIT_STATUS, result.stderr[-3000:]
  assert "is not usable: writing a file there failed (File too large)" in result.stderr
  assert "Nothing was trained" in result.stderr and "Traceback" not in result.stderr


def _can_mount_tmpfs() -> bool:
  if not shutil.which("unshare"):
    return False
  probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                         capture_output=True)
  return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs user namespaces to mount a tmpfs")
def test_main_exits_5_on_a_filesystem_too_small_for_a_checkpoint(tiny_data_dir, tmp_path):
  # A real, nearly full filesystem: a 256 KiB tmpfs in a private mount namespace.
  small = tmp_path / "small"
  small.mkdir()
  result = _main(small / "run", tiny_data_dir,
                 wrap=["unshare", "-rm", "sh", "-c",
                       f'mount -t tmpfs -o size=256k tmpfs "{small}" && exec "$@"', "sh"])
  assert result.returncode == workdir.EXIT_STATUS, result.stderr[-3000:]
  assert "free, but one checkpoint of this model needs about" in result.stderr
  assert "Traceback" not in result.stderr
  assert not os.listdir(small)  # the mount is gone with its namespace; nothing leaked here
