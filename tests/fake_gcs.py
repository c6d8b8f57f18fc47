"""An offline stand-in for Google Cloud Storage (gs://), backed by a local directory.

A remote workdir cannot be tested against the real GCS here (no network), so
this serves the part of GCS that the code paths of a `gs://` workdir use, on
127.0.0.1, with `<root>/<bucket>/<object>` as the bucket's contents:

- the GCS JSON API subset of TensorStore's `gcs` kvstore driver (Orbax's
  array writes and reads: list, read with byte ranges, upload, delete,
  generation preconditions), reached through `TENSORSTORE_GCS_HTTP_URL`;
- the bucket metadata that google-cloud-storage's client asks for (Orbax
  checks whether a bucket has a hierarchical namespace), reached through
  `STORAGE_EMULATOR_HOST`;
- an fsspec file system for the `gs` protocol, which `etils.epath` (Orbax's
  path type, and ours) uses for gs:// paths when `EPATH_USE_TF=false`.

Only TensorFlow's own GCS client (TensorBoard's event files) cannot be pointed
at it: its endpoint is built in.

`python tests/fake_gcs.py ROOT MODULE ARGS...` runs `python -m MODULE ARGS...`
with the stand-in in place (the command a user runs, with gs:// served here).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import runpy
import sys
import threading
import urllib.parse

import fsspec
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

_ROOT = {"path": None}
REQUESTS: list[tuple[str, str]] = []  # (method, path) of every request served


def _object(bucket: str, name: str) -> str:
  return os.path.join(_ROOT["path"], bucket, name)


def _metadata(bucket: str, name: str, path: str) -> dict:
  stat = os.stat(path)
  return {"kind": "storage#object", "name": name, "bucket": bucket,
          "generation": str(stat.st_mtime_ns), "metageneration": "1",
          "size": str(stat.st_size), "contentType": "application/octet-stream",
          "updated": "2026-01-01T00:00:00.000Z", "timeCreated": "2026-01-01T00:00:00.000Z"}


class _Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"

  def log_message(self, *args):  # quiet
    pass

  def _send(self, code, body=b"", headers=None):
    if isinstance(body, (dict, list)):
      body = json.dumps(body).encode()
      headers = {"Content-Type": "application/json", **(headers or {})}
    self.send_response(code)
    for key, value in (headers or {}).items():
      self.send_header(key, value)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    if self.command != "HEAD":
      self.wfile.write(body)

  def _parse(self):
    url = urllib.parse.urlsplit(self.path)
    query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
    REQUESTS.append((self.command, url.path))
    return url.path.split("/"), query

  def do_GET(self):  # pylint: disable=invalid-name
    parts, query = self._parse()
    if parts[1:4] != ["storage", "v1", "b"] or len(parts) < 5:
      return self._send(404)
    bucket = parts[4]
    if len(parts) == 5:  # bucket metadata (google-cloud-storage's get_bucket)
      return self._send(200, {"kind": "storage#bucket", "name": bucket, "id": bucket,
                              "hierarchicalNamespace": {"enabled": False}})
    if len(parts) == 6 and parts[5] == "o":
      return self._list(bucket, query)
    return self._read(bucket, urllib.parse.unquote("/".join(parts[6:])), query)

  def _read(self, bucket, name, query):
    path = _object(bucket, name)
    exists = os.path.isfile(path)
    generation = os.stat(path).st_mtime_ns if exists else 0
    if "ifGenerationMatch" in query:
      wanted = int(query["ifGenerationMatch"])
      if wanted == 0:
        return self._send(412 if exists else 204)
      if not exists or wanted != generation:
        return self._send(412)
    if not exists:
      return self._send(404)
    if "ifGenerationNotMatch" in query and int(query["ifGenerationNotMatch"]) == generation:
      return self._send(304)
    if query.get("alt") != "media":
      return self._send(200, _metadata(bucket, name, path))
    with open(path, "rb") as f:
      data = f.read()
    headers = {"Content-Type": "application/octet-stream",
               "x-goog-generation": str(generation), "x-goog-metageneration": "1"}
    byte_range = self.headers.get("Range")
    if byte_range and byte_range.startswith("bytes="):
      first, _, last = byte_range[len("bytes="):].partition("-")
      if first == "":  # the last N bytes
        start, end = max(0, len(data) - int(last)), len(data) - 1
      else:
        start, end = int(first), int(last) if last else len(data) - 1
      end = min(end, len(data) - 1)
      headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
      return self._send(206, data[start:end + 1], headers)
    return self._send(200, data, headers)

  def _list(self, bucket, query):
    root = os.path.join(_ROOT["path"], bucket)
    names = sorted(os.path.relpath(os.path.join(d, f), root)
                   for d, _, files in os.walk(root) for f in files)
    prefix, low, high = (query.get("prefix", ""), query.get("pageToken") or
                         query.get("startOffset") or "", query.get("endOffset"))
    chosen = [n for n in names if n.startswith(prefix) and n >= low and (high is None or n < high)]
    return self._send(200, {"kind": "storage#objects",
                            "items": [_metadata(bucket, n, _object(bucket, n)) for n in chosen]})

  def do_POST(self):  # pylint: disable=invalid-name
    parts, query = self._parse()
    body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
    if parts[1:4] != ["upload", "storage", "v1"] or query.get("uploadType") != "media":
      return self._send(400, {"error": {"code": 400, "message": "unsupported upload"}})
    bucket, name = parts[5], query["name"]
    path = _object(bucket, name)
    exists = os.path.isfile(path)
    if "ifGenerationMatch" in query:
      wanted = int(query["ifGenerationMatch"])
      if (wanted == 0 and exists) or (wanted and (not exists or
                                                  os.stat(path).st_mtime_ns != wanted)):
        return self._send(412)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".partial", "wb") as f:
      f.write(body)
    os.replace(path + ".partial", path)
    return self._send(200, _metadata(bucket, name, path))

  def do_DELETE(self):  # pylint: disable=invalid-name
    parts, _ = self._parse()
    path = _object(parts[4], urllib.parse.unquote("/".join(parts[6:])))
    if not os.path.isfile(path):
      return self._send(404)
    os.remove(path)
    return self._send(204)


class FakeGcsFileSystem(DirFileSystem):
  """fsspec's gs:// (what etils.epath uses): gs://bucket/x is <root>/bucket/x."""
  protocol = ("gs", "gcs")
  cachable = False  # an instance must not outlive the root it was made for

  def __init__(self, *args, **kwargs):
    kwargs.pop("finalize_on_close", None)  # epath passes it for gcsfs
    # auto_mkdir: an object store writes any name without creating its "folders" first.
    super().__init__(*args, path=_ROOT["path"], fs=LocalFileSystem(auto_mkdir=True), **kwargs)


@contextlib.contextmanager
def serving(root: str):
  """Serves gs:// from `root` in this process; yields the server's URL."""
  _ROOT["path"] = os.path.abspath(root)
  os.makedirs(_ROOT["path"], exist_ok=True)
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  url = f"http://127.0.0.1:{server.server_address[1]}"
  fsspec.register_implementation("gcs", FakeGcsFileSystem, clobber=True)
  fsspec.register_implementation("gs", FakeGcsFileSystem, clobber=True)
  os.environ.update(TENSORSTORE_GCS_HTTP_URL=url, STORAGE_EMULATOR_HOST=url,
                    GOOGLE_AUTH_TOKEN_FOR_TESTING="offline", EPATH_USE_TF="false")
  from etils.epath import backend, gpath  # pylint: disable=import-outside-toplevel
  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  try:
    yield url
  finally:
    server.shutdown()


def _tensorboard_beside(root: str) -> None:
  """TensorFlow's GCS client has a built-in endpoint: TensorBoard writes under root/tensorboard."""
  from clu import metric_writers  # pylint: disable=import-outside-toplevel

  real = metric_writers.SummaryWriter

  def local_summary_writer(logdir, *args, **kwargs):
    return real(os.path.join(root, "tensorboard-of", str(logdir).replace("://", "/")),
                *args, **kwargs)
  metric_writers.SummaryWriter = local_summary_writer


if __name__ == "__main__":
  gcs_root, module = sys.argv[1], sys.argv[2]
  with serving(gcs_root):
    _tensorboard_beside(gcs_root)
    sys.argv = [module] + sys.argv[3:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
