"""The TensorBoard events are written in the run's own thread: a failing event file raises OSError where the run
can report it, instead of killing tensorboardX's writer thread and leaving the next write (or the exit hook)
blocked on its full queue. That hang was a CI failure of tests/test_disk.py on a slower CPU."""

from __future__ import annotations

import threading

import pytest
import tb_events

from lazarus_jax.training.logging_utils import MetricsWriter, SyncEventFileWriter


def _within(seconds: float, fn):
  """fn's result or exception, or a failure if it has not returned after `seconds` (a hang fails, not blocks)."""
  out: dict = {}

  def target():
    try:
      out["value"] = fn()
    except BaseException as e:  # noqa: BLE001 (handed back to the test)
      out["error"] = e

  t = threading.Thread(target=target, daemon=True)
  t.start()
  t.join(seconds)
  assert not t.is_alive(), f"still blocked after {seconds} s"
  return out


def _row(step: int) -> dict:
  return {"step": step, "loss": 1.0 / step, "classifier_accuracy": 0.5, "answer_loss": 2.0, "lr": 1e-3}


def test_events_match_the_metrics_and_no_writer_thread_is_left(tmp_path):
  before = {t.ident for t in threading.enumerate()}
  w = MetricsWriter(str(tmp_path), hparams={"seed": 0})
  for step in (1, 2, 3):
    w.write(_row(step))
  w.close()
  assert {t.ident for t in threading.enumerate()} <= before, "a tensorboardX writer thread outlived close"
  got = tb_events.scalars(str(tmp_path / "tb"))
  assert got["train/loss"] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
  assert [s for s, _ in got["train/lr"]] == [1, 2, 3]


def test_a_full_disk_under_the_event_file_raises_in_the_run_and_never_blocks(tmp_path, monkeypatch):
  from tensorboardX import record_writer

  monkeypatch.setattr(record_writer, "open_file", lambda path: open("/dev/full", "wb"))  # every flush: ENOSPC
  monkeypatch.setattr(SyncEventFileWriter, "FLUSH_SECONDS", 0.0)
  w = MetricsWriter(str(tmp_path))  # no hparams: their flush would be the first to fail

  def write_many():
    for step in range(1, 400):  # far past tensorboardX's queue of 10 and its 8 KiB file buffer
      w.write(_row(step))

  out = _within(30, write_many)
  assert isinstance(out.get("error"), OSError) and out["error"].errno == 28, out
  assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1, "metrics.jsonl is the record: the row is in"
  assert "error" not in _within(30, w.close)  # the run's own error is the one reported: close drops the events
