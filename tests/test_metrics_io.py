"""Run outputs: metrics.jsonl events, resume truncation, TensorBoard files, the training plot, progress bar
and summary line."""

import glob
import io
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from regnet_jax import metrics_io
from regnet_jax.metrics_io import (MetricsWriter, Progress, plot_training_curves, read_metrics, summary_line,
                                   training_curves_figure, truncate_after)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write_run(workdir, steps_per_epoch=10, epochs=3, **kwargs):
  with MetricsWriter(workdir, **kwargs) as writer:
    for epoch in range(epochs):
      for step in range(epoch * steps_per_epoch + 5, (epoch + 1) * steps_per_epoch + 1, 5):
        writer.write(step, step / steps_per_epoch,
                     {"train_loss": jnp.float32(2.0 / step), "train_accuracy": np.float64(1 - 1.0 / step)})
      step = (epoch + 1) * steps_per_epoch
      writer.write(step, epoch + 1.0, {"eval_loss": 1.0 / (epoch + 1), "eval_accuracy": 0.5 + 0.1 * epoch})
  return os.path.join(workdir, metrics_io.METRICS_FILE)


def test_metrics_jsonl_lines(tmp_path):
  path = _write_run(tmp_path, epochs=2)
  lines = open(path).read().splitlines()
  assert len(lines) == 6  # per epoch: two train events, one eval event
  first = json.loads(lines[0])
  assert first == {"step": 5, "epoch": 0.5, "train_loss": pytest.approx(0.4), "train_accuracy": 0.8}
  assert type(first["step"]) is int and type(first["train_loss"]) is float
  assert json.loads(lines[2]) == {"step": 10, "epoch": 1.0, "eval_loss": 1.0, "eval_accuracy": 0.5}
  assert read_metrics(path) == [json.loads(line) for line in lines]
  # TensorBoard event file written beside it.
  assert glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))


def test_writer_appends_and_can_be_disabled(tmp_path):
  path = _write_run(tmp_path, epochs=1, tensorboard=False)
  with MetricsWriter(tmp_path, tensorboard=False) as writer:
    writer.write(20, 2.0, {"eval_accuracy": 0.7})
  assert [r["step"] for r in read_metrics(path)] == [5, 10, 10, 20]
  assert not os.path.exists(tmp_path / "tensorboard")
  with MetricsWriter(tmp_path / "off", enabled=False) as writer:
    writer.write(1, 0.1, {"train_loss": 1.0})
  assert not os.path.exists(tmp_path / "off")


def test_writer_rejects_bad_metrics(tmp_path):
  with MetricsWriter(tmp_path, tensorboard=False) as writer:
    with pytest.raises(ValueError, match="reserved"):
      writer.write(1, 0.1, {"step": 3})
    with pytest.raises(TypeError, match="'train_loss' must be a number"):
      writer.write(1, 0.1, {"train_loss": np.ones(3)})


def test_truncate_after_drops_later_steps_atomically(tmp_path):
  path = _write_run(tmp_path, epochs=3, tensorboard=False)
  with open(path, "a") as f:
    f.write('{"step": 31, "epoch": 3.1, "train_lo')  # a line cut by kill -9
  dropped = truncate_after(path, 15)
  records = read_metrics(path)
  assert [r["step"] for r in records] == [5, 10, 10, 15]
  assert dropped == 6  # 9 events + the partial line, 4 kept
  assert not os.path.exists(path + ".tmp")
  assert truncate_after(tmp_path / "missing.jsonl", 3) == 0


def test_resume_step_truncates_and_heals_a_partial_line(tmp_path):
  path = _write_run(tmp_path, epochs=2, tensorboard=False)
  with open(path, "a") as f:
    f.write('{"step": 21, "epo')
  with MetricsWriter(tmp_path, tensorboard=False, resume_step=10) as writer:
    writer.write(15, 1.5, {"train_loss": 0.1})
  assert [r["step"] for r in read_metrics(path)] == [5, 10, 10, 15]
  # Without resume_step, a partial last line is ended before appending, so only it is lost.
  with open(path, "a") as f:
    f.write('{"step": 16, "epo')
  with MetricsWriter(tmp_path, tensorboard=False) as writer:
    writer.write(17, 1.7, {"train_loss": 0.1})
  assert [r["step"] for r in read_metrics(path)] == [5, 10, 10, 15, 17]


def test_plot_writes_png_with_named_curves(tmp_path):
  path = _write_run(tmp_path, epochs=3, tensorboard=False)
  out = plot_training_curves(path, tmp_path / "plots" / "training.png")
  assert out == str(tmp_path / "plots" / "training.png")
  data = open(out, "rb").read()
  assert data.startswith(PNG_SIGNATURE) and len(data) > 5000

  figure = training_curves_figure(read_metrics(path))
  axes = figure.axes[0]
  lines = {line.get_label(): line for line in axes.lines}
  assert set(lines) == {"train_loss", "train_accuracy", "eval_loss", "eval_accuracy"}
  np.testing.assert_allclose(lines["eval_accuracy"].get_xdata(), [1.0, 2.0, 3.0])
  np.testing.assert_allclose(lines["eval_accuracy"].get_ydata(), [0.5, 0.6, 0.7])
  assert len(lines["train_loss"].get_xdata()) == 6 and lines["train_loss"].get_xdata()[0] == 0.5
  assert [t.get_text() for t in axes.get_legend().get_texts()] == list(lines)
  assert axes.get_xlabel() == "epoch" and axes.xaxis.get_gridlines()[0].get_visible()


def test_plot_without_metrics_still_draws(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text("")
  out = plot_training_curves(path, tmp_path / "empty.png")
  assert open(out, "rb").read(8) == PNG_SIGNATURE


def test_summary_line():
  line = summary_line({"step": 4680, "epoch": 10.0, "eval_loss": 0.25, "eval_accuracy": np.float32(0.91234),
                       "train_loss": 0.21234, "learning_rate": 0.001, "img_per_s": 190.33,
                       "wall_time_s": 3120.4})
  assert line == ("done: step 4680 epoch 10.0 | eval_accuracy 0.9123 eval_loss 0.25 | train_loss 0.2123 | "
                  "learning_rate 0.001 | 190.3 img/s | 3120 s")
  assert summary_line({"step": 3}) == "done: step 3"


def test_progress_shows_rate_postfix_and_stays_quiet_when_disabled():
  stream = io.StringIO()  # not a TTY: refreshes only every non_tty_interval_s
  with Progress(100, initial_step=10, images_per_step=256, file=stream, non_tty_interval_s=0) as bar:
    for _ in range(3):
      bar.update(5, loss=jnp.float32(0.123456))
  text = stream.getvalue()
  assert "25/100" in text and "loss=0.1235" in text and "img/s=" in text
  quiet = io.StringIO()
  with Progress(100, file=quiet, enabled=False) as bar:
    bar.update(5, loss=1.0)
  assert quiet.getvalue() == ""
