"""A co-training study's numbers: mean and spread over seeds, paired differences, and the report.

The study (`python -m cover_jax.study`, arms in cover_jax/config/study_arms.py)
trains every arm for seeds 0..N-1; this module turns the runs' test top-1
(video-level, the number papers report) into:

  study.json   every run's results and seconds, and the summary below
  study.md     per dataset and arm: mean +- std over seeds, the paired
               difference to its reference arm with its standard error, the
               steps on the dataset and in total; then what the comparisons show
  study.png    grouped bars (one group per video dataset), std error bars, a dot per seed

Statistics. For an arm, mean and sample standard deviation (ddof=1) over its
seeds. A paired difference takes, seed by seed, the arm's top-1 minus its
reference's (both runs share the seed) over the seeds both have; its standard
error is the differences' std / sqrt(n). A comparison "helps" when the 95%
Student-t interval of the mean difference lies above 0, "hurts" when it lies
below, and is "not resolved" otherwise (one seed: no interval). All numbers
are percentage points of top-1.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

import numpy as np

from cover_jax.config import study_arms

METRIC = "video_top1"
# What each comparison measures: (arm, reference, question); '{d}': the dataset.
COMPARISONS = (
    ("videos", "alone-{d}", "(1) co-training the video sets, at equal steps per dataset"),
    ("videos", "alone_total-{d}", "(1) co-training the video sets, at equal total steps"),
    ("videos_images", "videos", "(2) adding images to the co-trained video sets"),
    ("videos_images", "alone-{d}", "(1)+(2) videos and images against the dataset alone"),
    ("finetune-{d}", "videos_images", "fine-tuning after co-training"),
    ("finetune-{d}", "alone-{d}", "co-trained then fine-tuned, against alone"),
    ("alone-{d}", "scratch-alone-{d}", "stage-0 pretraining, the dataset alone"),
    ("scratch-videos", "scratch-alone-{d}", "(1) from scratch"),
    ("scratch-videos_images", "scratch-alone-{d}", "(1)+(2) from scratch"),
)
# Two-sided 95% Student-t quantiles by degrees of freedom.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof=1; nan for a single value)."""
  x = np.asarray(values, np.float64)
  return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else math.nan


def paired_difference(values: Mapping[int, float], reference: Mapping[int, float]) -> dict:
  """Mean of (value - reference) over the seeds both have, its standard error and 95% interval."""
  seeds = sorted(set(values) & set(reference))
  diffs = np.array([values[s] - reference[s] for s in seeds], np.float64)
  if not len(diffs):
    return {"n": 0}
  mean = float(diffs.mean())
  se = float(diffs.std(ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 else math.nan
  half = t95(len(diffs) - 1) * se
  return {"n": len(diffs), "diff": mean, "se": se, "low": mean - half, "high": mean + half,
          "seeds": seeds}


def t95(dof: int) -> float:
  """The two-sided 95% Student-t quantile (nan for no degree of freedom)."""
  if dof < 1:
    return math.nan
  return _T95.get(dof, 1.96 + 2.4 / dof)


def verdict(comparison: dict) -> str:
  if comparison.get("n", 0) < 2:
    return "one seed: no interval"
  if comparison["low"] > 0:
    return "helps"
  return "hurts" if comparison["high"] < 0 else "not resolved"


def summarize(arms: Sequence[study_arms.Arm], top1: Mapping[str, Mapping[int, Mapping[str, float]]],
              train_top1: Mapping | None = None) -> dict:
  """{dataset: {arm: stats}} in percent from {arm: {seed: {dataset: top-1 fraction}}}.

  Every arm that trained on a dataset and has results gets its mean, std, seeds,
  steps and the paired difference to its reference arm (where that has results);
  `train_top1` (the same layout) adds the mean training top-1.
  """
  by_name = {arm.name: arm for arm in arms}
  summary = {}
  for arm in arms:
    for dataset in arm.datasets:
      values = _values(top1, arm.name, dataset)
      if not values:
        continue
      mean, std = mean_std(list(values.values()))
      row = {"mean": mean, "std": std, "n": len(values), "seeds": values, "start": arm.start,
             "steps_per_dataset": arm.steps_per_dataset, "total_steps": arm.total_steps,
             "kind": arm.kind}
      train = _values(train_top1 or {}, arm.name, dataset)
      if train:
        row["train_mean"] = mean_std(list(train.values()))[0]
      reference = arm.reference_for(dataset)
      if reference in by_name and _values(top1, reference, dataset):
        row["reference"] = reference
        row["vs_reference"] = paired_difference(values, _values(top1, reference, dataset))
      summary.setdefault(dataset, {})[arm.name] = row
  return summary


def _values(top1, arm: str, dataset: str) -> dict[int, float]:
  """{seed: top-1 in percent} of an arm on a dataset (seeds with results only)."""
  return {int(seed): 100.0 * r[dataset] for seed, r in top1.get(arm, {}).items() if dataset in r}


def comparisons(summary: Mapping[str, Mapping[str, dict]], datasets: Sequence[str]) -> list[dict]:
  """The `COMPARISONS` that both arms have results for, on each of `datasets`."""
  out = []
  for dataset in datasets:
    rows = summary.get(dataset, {})
    for arm, reference, question in COMPARISONS:
      arm, reference = arm.format(d=dataset), reference.format(d=dataset)
      if arm in rows and reference in rows:
        c = paired_difference(rows[arm]["seeds"], rows[reference]["seeds"])
        out.append({"dataset": dataset, "arm": arm, "reference": reference,
                    "question": question, **c, "verdict": verdict(c)})
  return out


def write(workdir, report: dict) -> None:
  """study.json, study.md and study.png in `workdir` from `build`'s report."""
  from etils import epath  # pylint: disable=import-outside-toplevel

  root = epath.Path(workdir)
  root.mkdir(parents=True, exist_ok=True)
  (root / "study.json").write_text(json.dumps(report, indent=1, default=_jsonable) + "\n")
  (root / "study.md").write_text(markdown(report))
  (root / "study.png").write_bytes(plot(report))


def _jsonable(value):
  return value.item() if isinstance(value, np.generic) else str(value)


def build(arms: Sequence[study_arms.Arm], runs: Sequence[dict], videos: Sequence[str],
          info: Mapping) -> dict:
  """The report: `runs` are {arm, seed, workdir, seconds, results} of the finished runs."""
  top1, train = {}, {}
  for run in runs:
    top1.setdefault(run["arm"], {})[run["seed"]] = {
        d: r[METRIC] for d, r in run["results"].items()}
    train.setdefault(run["arm"], {})[run["seed"]] = dict(run.get("train_top1") or {})
  summary = summarize(arms, top1, train)
  return {"metric": METRIC, "unit": "percent top-1 (video level)", **info,
          "videos": list(videos), "arms": [_arm_fields(arm) for arm in arms],
          "runs": list(runs), "summary": summary,
          "comparisons": comparisons(summary, videos)}


def _arm_fields(arm: study_arms.Arm) -> dict:
  return {"name": arm.name, "kind": arm.kind, "datasets": list(arm.datasets), "steps": arm.steps,
          "start": arm.start, "reference": arm.reference,
          "steps_per_dataset": arm.steps_per_dataset, "total_steps": arm.total_steps}


def markdown(report: Mapping) -> str:
  """study.md: the protocol in brief, a table per dataset, what the comparisons show."""
  lines = ["# Co-training study", "", _protocol(report), "", report.get("timing", ""), ""]
  summary = report["summary"]
  for dataset in list(report["videos"]) + sorted(set(summary) - set(report["videos"])):
    if dataset in summary:
      lines += _dataset_table(dataset, summary[dataset], report)
  lines += _findings(report)
  return "\n".join(lines) + "\n"


def _protocol(report: Mapping) -> str:
  seeds = report.get("seeds", [])
  return (f"Regime: {report.get('regime', '')} Seeds {', '.join(map(str, seeds))} (n = "
          f"{len(seeds)}). Test top-1 (video level), mean ± std over seeds; Δ: the paired "
          "difference to the reference arm (seed by seed), mean ± standard error. Steps: "
          "batches of the dataset / of all datasets together; co-trained arms take one batch "
          "of every dataset per step (stage 0 is every arm's and not counted).")


def _start(start: str) -> str:
  return {"pretrained": "stage 0", "scratch": "random"}.get(start, f"{start} (same seed)")


def _pm(value: float, spread: float, digits: int = 1) -> str:
  if math.isnan(spread):
    return f"{value:.{digits}f}"
  return f"{value:.{digits}f} ± {spread:.{digits}f}"


def _signed(c: Mapping) -> str:
  return f"{c['diff']:+.1f}" + ("" if math.isnan(c["se"]) else f" ± {c['se']:.1f}")


def _dataset_table(dataset: str, rows: Mapping[str, dict], report: Mapping) -> list[str]:
  info = report.get("datasets", {}).get(dataset, {})
  about = ", ".join(x for x in (f"{info['classes']} classes, chance {100 / info['classes']:.1f}%"
                                if info.get("classes") else "",
                                f"{info['train']} training / {info['test']} test examples"
                                if info.get("train") else "") if x)
  lines = [f"## {dataset}" + (f" ({about})" if about else ""), "",
           f"| arm | start | steps on {dataset} | total steps | train top-1 | top-1 (n seeds) "
           "| Δ vs | Δ |", "|---|---|---:|---:|---:|---|---|---:|"]
  for name, r in rows.items():
    c = r.get("vs_reference")
    delta = (r["reference"], _signed(c)) if c and c.get("n") else ("", "")
    train = f"{r['train_mean']:.1f}" if "train_mean" in r else ""
    lines.append(f"| {name} | {_start(r['start'])} | {r['steps_per_dataset']} | "
                 f"{r['total_steps']} | {train} | {_pm(r['mean'], r['std'])} ({r['n']}) | "
                 f"{delta[0]} | {delta[1]} |")
  return lines + [""]


def _findings(report: Mapping) -> list[str]:
  found = report["comparisons"]
  lines = ["## What it shows", "",
           "| dataset | comparison | arm − reference | Δ ± s.e. | 95% interval | verdict |",
           "|---|---|---|---:|---|---|"]
  for c in found:
    interval = _interval(c).replace(", 95% interval ", "")
    lines.append(f"| {c['dataset']} | {c['question']} | {c['arm']} − {c['reference']} | "
                 f"{_signed(c)} | {interval} | {c['verdict']} |")
  lines.append("")
  for question in dict.fromkeys(c["question"] for c in found):
    lines.append("- " + finding_sentence(question, [c for c in found if c["question"] == question]))
  return lines


def finding_sentence(question: str, found: Sequence[Mapping]) -> str:
  """One line: on which datasets a comparison helps, and where (by how much) it does not."""
  helps = [f"{c['dataset']} ({_signed(c)})" for c in found if c["verdict"] == "helps"]
  rest = [f"{c['dataset']} ({_signed(c)}: {c['verdict']}{_interval(c)})" for c in found
          if c["verdict"] != "helps"]
  text = f"{question[0].upper()}{question[1:]}: "
  text += f"helps on {', '.join(helps)}" if helps else "helps on no dataset"
  return text + (f"; does not appear on {', '.join(rest)}." if rest else ".")


def _interval(c: Mapping) -> str:
  return f", 95% interval [{c['low']:+.1f}, {c['high']:+.1f}]" if c.get("n", 0) > 1 else ""


def plot(report: Mapping) -> bytes:
  """study.png: a group of bars per video dataset (an arm each), std error bars, seeds as dots."""
  import io  # pylint: disable=import-outside-toplevel

  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")  # files only, no display
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel

  summary, datasets = report["summary"], [d for d in report["videos"] if d in report["summary"]]
  kinds = list(dict.fromkeys(_bar_label(a) for d in datasets for a in summary[d]))
  fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(kinds) * len(datasets)) + 2.2, 3.4))
  width = 0.8 / max(len(kinds), 1)
  colours, labelled = plt.get_cmap("tab10"), set()
  for k, label in enumerate(kinds):
    for g, dataset in enumerate(datasets):
      r = next((r for a, r in summary[dataset].items() if _bar_label(a) == label), None)
      if r is None:
        continue
      x = g + (k - (len(kinds) - 1) / 2) * width
      ax.bar(x, r["mean"], width * 0.9, color=colours(k % 10),
             label=None if label in labelled else label,
             yerr=0 if math.isnan(r["std"]) else r["std"], capsize=2, error_kw={"lw": 0.8})
      labelled.add(label)
      ax.plot([x] * r["n"], list(r["seeds"].values()), "k.", ms=2.5)
  ax.set_xticks(range(len(datasets)), datasets)
  ax.set_ylabel("test top-1 (%)")
  ax.set_ylim(0, 100)
  ax.set_title(f"mean ± std over {len(report.get('seeds', []))} seeds (dots: seeds)", fontsize=9)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=110)
  plt.close(fig)
  return buffer.getvalue()


# The legend's words for an arm's name without its dataset suffix.
_BAR_LABELS = {
    "alone": "alone", "alone_total": "alone, equal total steps", "videos": "videos co-trained",
    "videos_images": "videos + images", "finetune": "videos + images, then fine-tuned",
    "scratch-alone": "alone, from scratch", "scratch-videos": "videos, from scratch",
    "scratch-videos_images": "videos + images, from scratch"}


def _bar_label(arm: str) -> str:
  """The legend entry of an arm: bars of the same kind (any dataset) share a colour."""
  for prefix in ("alone_total-", "scratch-alone-", "alone-", "finetune-"):
    if arm.startswith(prefix):
      return _BAR_LABELS[prefix.rstrip("-")]
  return _BAR_LABELS.get(arm, arm)
