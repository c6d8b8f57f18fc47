"""The eval line, the metric names and the final accuracy table."""

from __future__ import annotations

from collections.abc import Mapping


def scalars(results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
  """`eval/<dataset>/<metric>` for the metric writers (counts of views left out)."""
  return {f"eval/{name}/{key}": float(value) for name, r in results.items()
          for key, value in r.items() if key not in ("num_videos", "num_clips")}


def format_line(results: Mapping[str, Mapping[str, float]]) -> str:
  return "  ".join(f"{n}: clip_top1 {r['clip_top1']:.3f} video_top1 {r['video_top1']:.3f} "
                   f"video_top5 {r['video_top5']:.3f}" for n, r in results.items())


def format_table(results: Mapping[str, Mapping[str, float]], num_classes: Mapping[str, int],
                 train_top1: Mapping[str, float], views: Mapping[str, str]) -> str:
  """A per-dataset accuracy table for the terminal; `views` is 'KxS' per dataset.

  A row per dataset in `num_classes`; one without results (no eval split, e.g.
  ImageNet-21k) shows its training numbers and says so.
  """
  width = max([12] + [len(name) + 1 for name in num_classes])  # the name column
  header = (f"{'dataset':<{width}} {'classes':>7} {'chance':>7} {'train top1':>10} {'views':>5} "
            f"{'clip top1':>9} {'video top1':>10} {'video top5':>10} {'videos':>7} "
            f"{'skipped':>7}")
  lines = [header, "-" * len(header)]
  for name in sorted(num_classes):
    train = f"{train_top1[name]:.1%}" if name in train_top1 else "-"
    row = f"{name:<{width}} {num_classes[name]:>7} {1 / num_classes[name]:>7.1%} {train:>10} "
    r = results.get(name)
    if r is None:
      lines.append(row + f"{'-':>5} no eval split (config.datasets.{name}.eval_split is empty)")
      continue
    lines.append(row + f"{views[name]:>5} {r['clip_top1']:>9.1%} {r['video_top1']:>10.1%} "
                 f"{r['video_top5']:>10.1%} {r['num_videos']:>7} "
                 f"{r.get('skipped_records', 0):>7}")
  lines.append("(views: K clips x S crops per test video; clip top1: each view scored alone;\n"
               " video top1/top5: the views' logits averaged per video, the number papers report;\n"
               " train: mean over the last logging window)")
  return "\n".join(lines)
