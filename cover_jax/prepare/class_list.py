"""One fixed class list per dataset, saved beside its records and reused by every split.

DMVR's generator numbers classes by `set(labels)` of whichever CSV it is
given, so a train and a test set made separately can disagree on what label 7
means. Here the list is decided once, when the first split is prepared, and
written to `<dataset_dir>/classes.txt` (line i is the name of class i); every
later split reads it and refuses labels it does not contain.

The list is, in order of preference:
1. the dataset's existing `classes.txt` (never re-derived);
2. an official list, when the dataset has one (`read_official`):
   Something-Something-v2's `something-something-v2-labels.json` ({name:
   index}), Moments-in-Time's `moments_categories.txt` (`name,index` lines), or
   any file with one name per line;
3. the sorted set of labels of the first split prepared (Kinetics has no
   numbered list; sorted names are the usual convention).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from etils import epath

CLASSES_FILE = "classes.txt"


class ClassListError(ValueError):
  """A class list that cannot be read or does not fit the labels; says how to fix it."""


def _check_names(names: list[str], source: str) -> list[str]:
  if not names:
    raise ClassListError(f"{source}: the class list is empty")
  if any(not name for name in names):
    raise ClassListError(f"{source}: class {names.index('')} has an empty name")
  seen = set()
  for name in names:
    if name in seen:
      raise ClassListError(f"{source}: class {name!r} is listed twice")
    seen.add(name)
  return names


def _by_index(index_of: dict[str, int], source: str) -> list[str]:
  """{name: index} with indices 0..n-1, each once -> names in index order."""
  names = [""] * len(index_of)
  for name, index in index_of.items():
    if not 0 <= index < len(names) or names[index]:
      raise ClassListError(f"{source}: class {name!r} has index {index}; indices must be "
                           f"0..{len(names) - 1}, each used once")
    names[index] = name
  return names


def _text_lines(text: str, source: str) -> list[str]:
  lines = [line.strip() for line in text.splitlines()]
  while lines and not lines[-1]:
    lines.pop()
  if "" in lines:
    raise ClassListError(f"{source}: line {lines.index('') + 1} is blank; a class list has "
                         "one class name per line and no blank lines")
  return lines


def _numbered_lines(lines: list[str]) -> dict[str, int] | None:
  """'name,index' lines (Moments-in-Time) -> {name: index}; None if any line is not one."""
  index_of = {}
  for line in lines:
    name, sep, index = line.rpartition(",")
    if not sep or not index.strip().isdigit():
      return None
    index_of[name.strip()] = int(index)
  return index_of if len(index_of) == len(lines) else None


def read_official(path: str) -> list[str]:
  """An official class list, in its official order.

  Args:
    path: a `.json` file holding {name: index} (index may be a string, as in
      SSv2's labels file) or a list of names; or a text file with one name per
      line, or `name,index` per line.

  Raises:
    ClassListError: missing file, unreadable content, or indices that are not
      0..n-1 each once.
  """
  file = epath.Path(path)
  if not file.exists():
    raise ClassListError(f"{path}: no such class list file")
  text = file.read_text(encoding="utf-8")
  if str(path).endswith(".json"):
    try:
      content = json.loads(text)
    except json.JSONDecodeError as e:
      raise ClassListError(f"{path}: not valid JSON ({e})") from None
    if isinstance(content, dict):
      try:
        index_of = {name: int(index) for name, index in content.items()}
      except (TypeError, ValueError) as e:
        raise ClassListError(f"{path}: expected {{class name: index}}; {e}") from None
      return _check_names(_by_index(index_of, path), path)
    if isinstance(content, list) and all(isinstance(name, str) for name in content):
      return _check_names(content, path)
    raise ClassListError(f"{path}: expected a JSON {{name: index}} map or a list of names")
  lines = _text_lines(text, path)
  numbered = _numbered_lines(lines)
  return _check_names(_by_index(numbered, path) if numbered else lines, path)


def read_classes_txt(dataset_dir: str) -> list[str] | None:
  """The dataset's saved class list, or None if it has none yet."""
  file = epath.Path(dataset_dir) / CLASSES_FILE
  if not file.exists():
    return None
  source = str(file)
  return _check_names(_text_lines(file.read_text(encoding="utf-8"), source), source)


def write_classes_txt(dataset_dir: str, names: list[str]) -> None:
  """Writes `classes.txt` whole or not at all (temp file, then rename)."""
  for name in names:
    if "\n" in name or "\r" in name or name != name.strip():
      raise ClassListError(f"class name {name!r} cannot be stored one per line "
                           "(newline or surrounding spaces)")
  directory = epath.Path(dataset_dir)
  directory.mkdir(parents=True, exist_ok=True)
  temp = directory / f".{CLASSES_FILE}.tmp"
  temp.write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
  temp.replace(directory / CLASSES_FILE)


def check_labels(labels: Iterable[str], names: list[str], source: str) -> None:
  """ClassListError naming the labels that are not in the class list."""
  known = set(names)
  unknown = sorted({label for label in labels if label not in known})
  if unknown:
    shown = ", ".join(repr(label) for label in unknown[:10])
    more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
    raise ClassListError(
        f"{len(unknown)} label(s) are not in the class list {source} ({len(names)} "
        f"classes): {shown}{more}. A dataset keeps one class list for all its splits: "
        "check that the annotations belong to this dataset (and --output_dir), or pass "
        "the dataset's official class list with --class_list when preparing its first split")


def resolve(dataset_dir: str, labels: list[str], official: str | None = None) -> list[str]:
  """The dataset's class list: decided once (see the module docstring), then reused.

  Writes `classes.txt` if the dataset has none yet.

  Args:
    dataset_dir: the prepared dataset's directory.
    labels: the class names of the split being prepared.
    official: path of an official class list, or None.

  Raises:
    ClassListError: a label is not in the list, or `official` disagrees with
      the dataset's saved list.
  """
  saved = read_classes_txt(dataset_dir)
  official_names = read_official(official) if official else None
  saved_path = str(epath.Path(dataset_dir) / CLASSES_FILE)
  if saved is not None:
    if official_names is not None and official_names != saved:
      raise ClassListError(
          f"{official} does not match the class list already saved as {saved_path} "
          f"({len(official_names)} vs {len(saved)} classes, first difference at index "
          f"{_first_difference(official_names, saved)}); a dataset's class list never changes "
          "after its first split: drop --class_list, or prepare into a new --output_dir")
    check_labels(labels, saved, saved_path)
    return saved
  names = official_names if official_names is not None else sorted(set(labels))
  check_labels(labels, names, official or "derived from the labels")
  write_classes_txt(dataset_dir, names)
  return names


def _first_difference(a: list[str], b: list[str]) -> int:
  return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
