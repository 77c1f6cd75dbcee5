"""Run outputs: WORKDIR/metrics.jsonl, TensorBoard scalars, the d2l-style training plot, a progress bar and
the final one-line summary.

metrics.jsonl holds one JSON object per event: {"step": int, "epoch": float, **metrics}. By convention
training logging events carry `train_*` keys (train_loss, train_accuracy, ...), evaluation events carry
`eval_*` keys, and throughput / wall time use IMAGES_PER_SEC_KEY / WALL_TIME_KEY; other keys (learning_rate,
...) are free-form. Only process 0 writes; on the other processes every writer is a no-op.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Iterable, TextIO

from absl import logging
import jax
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np
from tensorboardX import SummaryWriter
from tqdm import tqdm

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_SUBDIR = "tensorboard"
IMAGES_PER_SEC_KEY = "img_per_s"  # the name the issue and README promise
WALL_TIME_KEY = "wall_time_s"
_RESERVED_KEYS = ("step", "epoch")
# (metric, matplotlib format): d2l's Animator styles, so the plot reads like the book's.
_CURVES = (("train_loss", "-"), ("train_accuracy", "m--"), ("eval_loss", "c:"), ("eval_accuracy", "g-."))


def _is_process_zero() -> bool:
  return jax.process_index() == 0


def _to_number(key: str, value: Any) -> int | float:
  """Python number from a python/numpy/jax scalar (jax arrays are fetched here, once per event)."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    array = np.asarray(value)
    if array.size != 1 or not np.issubdtype(array.dtype, np.number):
      raise TypeError(f"metric {key!r} must be a number, got {type(value).__name__} {value!r}")
    value = array.item()
  return value


# --------------------------------------------------------------------------------------------- jsonl files


def _parse_lines(lines: Iterable[str], path: str) -> list[dict]:
  records = []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      # A run killed mid-write leaves at most one partial line; losing it beats refusing to read the rest.
      logging.warning("Skipping unreadable line %d of %s: %.80r", number, path, line)
  return records


def read_metrics(path: str | os.PathLike) -> list[dict]:
  """All events of a metrics.jsonl file, in file order."""
  with open(path, encoding="utf-8") as f:
    return _parse_lines(f, os.fspath(path))


def truncate_after(path: str | os.PathLike, step: int) -> int:
  """Drops events with step > `step` (and unreadable lines); returns how many lines were dropped.

  For resuming: the killed run may have logged past the checkpoint it is resumed from; without this the
  plot would show those steps twice. Atomic (tmp file + os.replace), so a crash leaves the old or the new
  file. Call it before opening a MetricsWriter on the file (or pass MetricsWriter(resume_step=...)).
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    return 0
  with open(path, encoding="utf-8") as f:
    lines = [line for line in f if line.strip()]
  kept = [json.dumps(r) + "\n" for r in _parse_lines(lines, path) if r.get("step", 0) <= step]
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(kept)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return len(lines) - len(kept)


class MetricsWriter:
  """Appends events to WORKDIR/metrics.jsonl (flushed per event) and, optionally, TensorBoard scalars."""

  def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True, tensorboard: bool = True,
               resume_step: int | None = None):
    self.path = os.path.join(os.fspath(workdir), METRICS_FILE)
    self._file: TextIO | None = None
    self._tensorboard: SummaryWriter | None = None
    if not (enabled and _is_process_zero()):
      return
    os.makedirs(workdir, exist_ok=True)
    if resume_step is not None:
      truncate_after(self.path, resume_step)
    self._file = open(self.path, "a", encoding="utf-8")
    self._end_partial_line()
    if tensorboard:
      self._tensorboard = SummaryWriter(logdir=os.path.join(os.fspath(workdir), TENSORBOARD_SUBDIR))

  def _end_partial_line(self) -> None:
    # A killed writer may have left a line without its newline; appending to it would corrupt two events.
    if self._file.tell() > 0:
      with open(self.path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b"\n":
          self._file.write("\n")

  def __enter__(self) -> "MetricsWriter":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def write(self, step: int, epoch: float, metrics: dict[str, Any]) -> None:
    if self._file is None:
      return
    clash = [k for k in metrics if k in _RESERVED_KEYS]
    if clash:
      raise ValueError(f"metric names {clash} are reserved: step and epoch are passed as arguments")
    record = {"step": int(step), "epoch": float(epoch), **{k: _to_number(k, v) for k, v in metrics.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tensorboard is not None:
      for key, value in record.items():
        if key != "step":
          self._tensorboard.add_scalar(key, value, global_step=record["step"])

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tensorboard is not None:
      self._tensorboard.close()
      self._tensorboard = None


# ------------------------------------------------------------------------------------------------- plot


def training_curves_figure(records: list[dict], *, title: str | None = None) -> Figure:
  """The d2l training plot: x = epoch; train loss/accuracy and eval loss/accuracy curves, legend, grid."""
  figure = Figure(figsize=(5.0, 3.5), dpi=120)
  FigureCanvasAgg(figure)  # Agg canvas on this figure only: no pyplot, no global backend switch
  axes = figure.add_subplot()
  for key, fmt in _CURVES:
    points = [(r["epoch"], r[key]) for r in records
              if key in r and "epoch" in r and isinstance(r[key], (int, float)) and math.isfinite(r[key])]
    if points:
      epochs, values = zip(*points)
      axes.plot(epochs, values, fmt, label=key)
  if axes.lines:
    axes.legend()
  else:
    axes.text(0.5, 0.5, "no train_/eval_ metrics yet", ha="center", va="center", transform=axes.transAxes)
  axes.set_xlabel("epoch")
  axes.grid(True)
  if title:
    axes.set_title(title)
  figure.tight_layout()
  return figure


def plot_training_curves(metrics_jsonl_path: str | os.PathLike, out_png: str | os.PathLike) -> str:
  """Draws the training plot of a metrics.jsonl file to `out_png` (PNG); returns its path."""
  out_png = os.fspath(out_png)
  records = read_metrics(metrics_jsonl_path)
  figure = training_curves_figure(records, title=os.path.basename(os.path.dirname(os.path.abspath(out_png))))
  os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
  figure.savefig(out_png, format="png")
  return out_png


# -------------------------------------------------------------------------------------- progress / summary


def _format_value(value: Any) -> str:
  return f"{value:.4g}" if isinstance(value, float) else str(value)


class Progress:
  """A tqdm bar over training steps with img/s, loss, ... and ETA; silent except on process 0.

  On a TTY it refreshes every 0.5 s; in a log file (CI, batch jobs) every `non_tty_interval_s`, since each
  refresh there is a new line.
  """

  def __init__(self, total_steps: int, *, initial_step: int = 0, images_per_step: int | None = None,
               enabled: bool = True, desc: str = "train", file: TextIO | None = None,
               non_tty_interval_s: float = 60.0):
    stream = file if file is not None else sys.stderr
    is_tty = bool(getattr(stream, "isatty", lambda: False)())
    self._images_per_step = images_per_step
    self._bar = tqdm(total=total_steps, initial=initial_step, desc=desc, unit="step", file=stream,
                     disable=not (enabled and _is_process_zero()), dynamic_ncols=is_tty,
                     mininterval=0.5 if is_tty else non_tty_interval_s, smoothing=0.1)

  def update(self, n_steps: int = 1, **postfix: Any) -> None:
    if self._bar.disable:
      return
    shown = {k: _format_value(_to_number(k, v)) for k, v in postfix.items()}
    rate = self._bar.format_dict.get("rate")  # tqdm's smoothed steps/s; None until it has two samples
    if self._images_per_step and rate:
      shown["img/s"] = f"{rate * self._images_per_step:.1f}"
    self._bar.set_postfix(shown, refresh=False)
    self._bar.update(n_steps)

  def close(self) -> None:
    self._bar.close()

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def summary_line(metrics: dict[str, Any]) -> str:
  """One line for the end of a run, e.g.
  'done: step 4680 epoch 10.0 | eval_accuracy 0.9123 eval_loss 0.25 | train_loss 0.21 | 190.3 img/s | 3120 s'.
  Groups: step/epoch, eval_*, train_*, other keys, IMAGES_PER_SEC_KEY, WALL_TIME_KEY; absent ones are skipped.
  """
  metrics = {k: _to_number(k, v) for k, v in metrics.items()}
  head = []
  if "step" in metrics:
    head.append(f"step {int(metrics['step'])}")
  if "epoch" in metrics:
    head.append(f"epoch {round(float(metrics['epoch']), 2)}")
  special = set(_RESERVED_KEYS) | {IMAGES_PER_SEC_KEY, WALL_TIME_KEY}

  def group(keys):
    return " ".join(f"{k} {_format_value(metrics[k])}" for k in sorted(keys))

  evals = [k for k in metrics if k.startswith("eval_")]
  trains = [k for k in metrics if k.startswith("train_")]
  others = [k for k in metrics if k not in special and k not in evals and k not in trains]
  parts = [" ".join(head), group(evals), group(trains), group(others)]
  if IMAGES_PER_SEC_KEY in metrics:
    parts.append(f"{metrics[IMAGES_PER_SEC_KEY]:.1f} img/s")
  if WALL_TIME_KEY in metrics:
    parts.append(f"{metrics[WALL_TIME_KEY]:.0f} s")
  return "done: " + " | ".join(p for p in parts if p)
