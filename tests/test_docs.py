"""The documents tell the truth about the code: their commands parse, and the code keeps its shape.

- Every `python -m cover_jax...` command in README.md and docs/*.md (in ```
  blocks, joined across backslash-newlines, and in inline code) parses as the
  command would parse it: one subprocess per module imports the module, runs
  the flag set-up of its `if __name__ == "__main__":` block (`define_flags()`,
  required flags) and parses each command's argv with absl; a command that
  loads a config (`app.run(..., flags_parser=...)`: main, study) loads it with
  its `:args` and `--config.x=` overrides through `command_line.parse_or_exit`,
  which exits 2 on a bad config. `$VARS` and `<placeholders>` stay strings.
- Imports follow the layering docs/code-map.md documents.
- No function in cover_jax/ is longer than 60 lines; README.md is at most 300
  lines; docs/code-map.md names every module.
"""

from __future__ import annotations

import ast
import collections
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = REPO / "cover_jax"
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# ----------------------------------------------------------------------------- commands

_FENCE = re.compile(r"^\s*(```|~~~)")
_COMMAND = re.compile(r"(?<![\w./-])(?:[\w.~/-]*/)?python3?\s+-m\s+(cover_jax(?:\.\w+)*)(?![\w.])")
_INLINE = re.compile(r"(?<!`)`([^`\n]+(?:\n[^`\n]+)*?)`(?!`)")
_SHELL_STOP = ("&&", "||", ";", "|", "&")


def _logical_lines(text: str):
  """(line number, text) of the commands' lines: fenced lines joined across `\\`-newlines,
  and inline code spans (which may wrap) outside the fences."""
  outside, block, start, in_fence = [], [], 0, False
  for number, line in enumerate(text.splitlines(), 1):
    if _FENCE.match(line):
      in_fence = not in_fence
      outside.append("")
      continue
    if not in_fence:
      outside.append(line)
      continue
    outside.append("")
    if not block:
      start = number
    block.append(line[:-1] if line.endswith("\\") else line)
    if not line.endswith("\\"):
      yield start, " ".join(block)
      block = []
  rest = "\n".join(outside)
  for match in _INLINE.finditer(rest):
    yield rest.count("\n", 0, match.start()) + 1, match.group(1).replace("\n", " ")


def _argv(module: str, args: str) -> list[str]:
  """The command's argv as a shell splits it, up to the first shell operator."""
  tokens = shlex.split(args, comments=True)
  for i, token in enumerate(tokens):
    if token in _SHELL_STOP or token.startswith(">") or re.match(r"\d>", token):
      tokens = tokens[:i]
      break
  return [module, *tokens]


def documented_commands() -> list[dict]:
  """Every `python -m cover_jax...` command of the documents, with where it is."""
  found = []
  for path in DOCUMENTS:
    for line, text in _logical_lines(path.read_text()):
      for match in _COMMAND.finditer(text):
        where = f"{path.relative_to(REPO)}:{line}"
        module = match.group(1)
        rest = text[match.end():]
        following = _COMMAND.search(rest)  # `a && b` on one line: b is its own command
        rest = rest[:following.start()] if following else rest
        try:
          argv = _argv(module, rest)
        except ValueError as e:
          found.append({"where": where, "module": module, "argv": None, "error": str(e)})
          continue
        found.append({"where": where, "module": module, "argv": argv, "error": None})
  return found


# Runs in a subprocess per module (absl's FLAGS is one global set per process).
_WORKER = r'''
import ast, importlib, importlib.util, io, json, pathlib, sys

from absl import flags

SET_UP = ("define_flags", "mark_flag_as_required", "mark_flags_as_required")


def name_of(func):
  return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def main_block(path):
  """The last `if __name__ == "__main__":` block (the one that runs the app; predict
  has an earlier one that starts TensorFlow before its imports)."""
  blocks = [node.body for node in ast.parse(pathlib.Path(path).read_text()).body
            if isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and getattr(node.test.left, "id", "") == "__name__"]
  return blocks[-1] if blocks else []


def load(module):
  """Imports the command's module and runs its flag set-up; True if it parses a config."""
  spec = importlib.util.find_spec(module)
  if spec is None:
    raise ModuleNotFoundError(f"no module named {module!r}")
  if spec.submodule_search_locations:  # a package: `python -m` runs its __main__
    module += ".__main__"
    spec = importlib.util.find_spec(module)
  namespace = importlib.import_module(module).__dict__
  body = main_block(spec.origin)
  calls = [s for s in body if isinstance(s, ast.Expr) and isinstance(s.value, ast.Call)]
  set_up = [s for s in calls if name_of(s.value.func) in SET_UP]
  exec(compile(ast.Module(body=set_up, type_ignores=[]), spec.origin, "exec"), namespace)
  return any(name_of(s.value.func) == "run" and
             any(k.arg == "flags_parser" for k in s.value.keywords) for s in calls)


def config_flag():
  from ml_collections.config_flags import config_flags
  names = [n for n in flags.FLAGS if isinstance(flags.FLAGS[n].parser,
                                                config_flags.ConfigFileFlagParser)]
  return flags.FLAGS[names[0]]


def parse(argv, loads_config):
  """None if argv parses, else why not."""
  from cover_jax.config import command_line
  sys.argv = list(argv)  # ml_collections finds the --config.x overrides in sys.argv
  stderr, sys.stderr = sys.stderr, io.StringIO()
  try:
    if loads_config:
      rest = command_line.parse_or_exit(argv, config_flag())
    else:
      rest = flags.FLAGS(argv)
    return f"unexpected arguments {rest[1:]}" if rest[1:] else None
  except SystemExit as e:
    return f"exit {e.code}: {sys.stderr.getvalue().strip()}"
  except flags.Error as e:
    return str(e)
  finally:
    sys.stderr = stderr
    for name in [n for n in flags.FLAGS if n.startswith("config.")]:
      delattr(flags.FLAGS, name)  # an override flag exists only for its command
    flags.FLAGS.unparse_flags()


commands = json.load(sys.stdin)
module = commands[0]["module"]
try:
  loads_config = load(module)
except Exception as e:  # pylint: disable=broad-except
  failures = [dict(c, error=f"{type(e).__name__}: {e}") for c in commands]
else:
  failures = []
  for command in commands:
    if len(command["argv"]) > 1:  # a bare `python -m cover_jax.x` names the module only
      error = parse(command["argv"], loads_config)
      if error:
        failures.append(dict(command, error=error))
print("FAILURES " + json.dumps(failures))
'''


def _check_in_subprocesses(commands: list[dict]) -> list[dict]:
  by_module = collections.defaultdict(list)
  for command in commands:
    by_module[command["module"]].append(command)
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
         "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
  workers = {module: subprocess.Popen([sys.executable, "-c", _WORKER], cwd=REPO, env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
             for module in by_module}
  failures = []
  for module, worker in workers.items():
    out, err = worker.communicate(json.dumps(by_module[module]), timeout=240)
    line = next((l for l in out.splitlines() if l.startswith("FAILURES ")), None)
    if line is None:
      failures += [dict(c, error=f"the checker crashed: {err[-2000:]}") for c in by_module[module]]
    else:
      failures += json.loads(line[len("FAILURES "):])
  return failures


def test_extraction_finds_commands_in_blocks_and_inline_code():
  commands = documented_commands()
  where = {c["where"].split(":")[0] for c in commands}
  assert {"README.md", "docs/data.md", "docs/finetune.md", "docs/scaling.md"} <= where
  modules = {c["module"] for c in commands}
  assert {"cover_jax.main", "cover_jax.prepare", "cover_jax.predict", "cover_jax.convert",
          "cover_jax.export", "cover_jax.checkpoint.relayout",
          "cover_jax.prepare.image_index"} <= modules
  joined = [c for c in commands if "--config.init_from=/ckpt/ViT-B_16.npz" in (c["argv"] or [])
            and any(a.startswith("--config=configs/cover.py:") for a in c["argv"])]
  assert joined, "a command continued with a backslash is one command"
  quick = next(c for c in commands if c["where"].startswith("README.md") and c["argv"]
               and "--workdir=/tmp/cover_demo" in c["argv"] and len(c["argv"]) == 3)
  assert quick["argv"] == ["cover_jax.main", "--config=configs/demo.py",
                           "--workdir=/tmp/cover_demo"], "stops at the shell's &&"


def test_the_checker_catches_mistakes():
  bad = [{"where": "x.md:1", "module": "cover_jax.main", "error": None,
          "argv": ["cover_jax.main", "--config=configs/demo.py", "--workdir=/w", *extra]}
         for extra in (["--config.optimizer.learning_rat=1"], ["--bogus=1"], ["stray"],
                       ["--config.total_steps=abc"])]
  bad.append({"where": "x.md:2", "module": "cover_jax.main", "error": None,
              "argv": ["cover_jax.main", "--config=configs/demo.py:nope=1", "--workdir=/w"]})
  bad.append({"where": "x.md:3", "module": "cover_jax.nothing", "error": None,
              "argv": ["cover_jax.nothing", "--x=1"]})
  bad.append({"where": "x.md:4", "module": "cover_jax.main", "error": None,
              "argv": ["cover_jax.main", "--config=configs/demo.py"]})  # --workdir is required
  good = {"where": "x.md:5", "module": "cover_jax.main", "error": None,
          "argv": ["cover_jax.main", "--config=configs/demo.py:datasets=motion,steps=2",
                   "--workdir=$RUNS/<name>", "--config.mesh_shape=(1, -1, 1)"]}
  failures = _check_in_subprocesses(bad + [good])
  assert sorted(f["argv"][1:] for f in failures) == sorted(c["argv"][1:] for c in bad)
  assert all(f["error"] for f in failures)


def test_every_documented_command_parses():
  commands = documented_commands()
  failures = [c for c in commands if c["error"]]  # could not be split as a shell would
  failures += _check_in_subprocesses([c for c in commands if not c["error"]])
  assert not failures, "\n".join(
      f"{f['where']}: {shlex.join(f['argv'] or [f['module']])}\n    {f['error']}" for f in failures)


# ----------------------------------------------------------------------------- layering

# Low to high; a module imports its own package and lower ranks only. The
# commands (main.py and the others at the package root, and prepare/__main__.py) form
# the top rank.
RANKS = ("parallel", "config", "prepare", "input", "models", "metrics", "checkpoint",
         "pretrained", "evaluation", "train")
COMMANDS = ("main", "predict", "convert", "export", "study")
TOP = len(RANKS)
# config.validation checks every owner's values: it may import anything below the commands.
MAY_IMPORT_BELOW_THE_COMMANDS = {"cover_jax.config.validation"}
# Imports that break the layering today, each with its reason: (importer, imported).
EXCEPTIONS: set[tuple[str, str]] = set()  # none


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(REPO).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_and_rank(module: str) -> tuple[str, int]:
  parts = module.split(".")
  if len(parts) == 1 or parts[-1] == "__main__":
    return "", TOP  # cover_jax itself, or a package's command (python -m cover_jax.prepare)
  if parts[1] in RANKS and (len(parts) > 2 or (PACKAGE / parts[1]).is_dir()):
    return parts[1], RANKS.index(parts[1])
  return "", TOP  # a command at the root


def _imports(path: pathlib.Path, module: str):
  """(line, imported module) of every cover_jax import, function-level ones included."""
  package = module if path.name == "__init__.py" else module.rpartition(".")[0]
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                        + ([base] if base else []))
      names = [f"{base}.{a.name}" for a in node.names]  # a submodule, or a name in `base`
    else:
      continue
    for name in names:
      if name == "cover_jax" or name.startswith("cover_jax."):
        yield node.lineno, name


def test_root_modules_are_the_commands():
  root = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
  assert root <= set(COMMANDS), (f"{sorted(root - set(COMMANDS))} at the package root: the root "
                                 "holds only the commands (a library module goes in a package)")
  packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
  assert packages == set(RANKS), f"packages {sorted(packages ^ set(RANKS))}: give each a rank"


def test_imports_follow_the_layering():
  wrong = []
  for path in sorted(PACKAGE.rglob("*.py")):
    module = _module_name(path)
    package, rank = _package_and_rank(module)
    for line, imported in _imports(path, module):
      other, other_rank = _package_and_rank(imported)
      allowed = (other == package or other_rank < rank or (
          module in MAY_IMPORT_BELOW_THE_COMMANDS and other_rank < TOP))
      if not allowed and (module, imported) not in EXCEPTIONS:
        wrong.append(f"{path.relative_to(REPO)}:{line}: {module} ({package or 'commands'}) "
                     f"imports {imported} ({other or 'commands'})")
  assert not wrong, "imports against the layering of docs/code-map.md:\n" + "\n".join(wrong)


# ----------------------------------------------------------------------------- shape

MAX_FUNCTION_LINES = 60


def test_no_function_is_longer_than_60_lines():
  long = []
  for path in sorted(PACKAGE.rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        length = node.end_lineno - node.lineno + 1
        if length > MAX_FUNCTION_LINES:
          long.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.name}, {length} lines")
  assert not long, "functions over 60 lines:\n" + "\n".join(long)


def test_readme_is_at_most_300_lines():
  lines = len((REPO / "README.md").read_text().splitlines())
  assert lines <= 300, f"README.md has {lines} lines: move detail into docs/"


def test_code_map_names_every_module():
  code_map = (REPO / "docs" / "code-map.md").read_text()
  missing = [str(p.relative_to(PACKAGE)) for p in sorted(PACKAGE.rglob("*.py"))
             if p.name != "__init__.py" and f"`{p.relative_to(PACKAGE)}`" not in code_map]
  assert not missing, f"docs/code-map.md does not list {missing}: one line each"
