"""Metrics: tensorboardX scalars under <workdir>/tb and one JSON object per log step in metrics.jsonl.

Only process 0 writes (other processes get a writer that keeps history but writes nothing). On resume the
history after the restored step is dropped, so the file holds exactly one row per logged step.
"""

from __future__ import annotations

import json
import os
import sys


class MetricsWriter:
  def __init__(self, workdir: str, enabled: bool = True, truncate_after: int = 0):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.history: list[dict] = []
    self._tb = None
    if not enabled:
      return
    if os.path.exists(self.path):
      self.history = [r for r in read_metrics(self.path) if r["step"] <= truncate_after]
    with open(self.path + ".tmp", "w", encoding="utf-8") as f:  # replaced whole: a kill here must not lose the history
      for r in self.history:
        f.write(json.dumps(r) + "\n")
    os.replace(self.path + ".tmp", self.path)
    self._tb = summary_writer_class()(os.path.join(workdir, "tb"))

  def write(self, row: dict) -> None:
    self.history.append(row)
    if not self.enabled:
      return
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(row) + "\n")
    for k, v in row.items():
      if k != "step":
        self._tb.add_scalar(f"train/{k}", v, row["step"])

  def close(self) -> None:
    if self._tb is None:
      return
    try:
      self._tb.flush()
      self._tb.close()
    except OSError:
      # The events copy metrics.jsonl: on a failing disk drop them, and keep tensorboardX's exit hook from
      # retrying the flush (a traceback after the run's own error line).
      for fw in (getattr(self._tb, "all_writers", None) or {}).values():
        if getattr(fw, "event_writer", None) is not None:
          fw.event_writer._closed = True


def read_metrics(path: str) -> list[dict]:
  """The rows of a metrics.jsonl; torn or foreign lines are skipped (see `_parse`)."""
  with open(path, encoding="utf-8", errors="replace") as f:
    rows = [_parse(line) for line in f if line.strip()]
  return [r for r in rows if r is not None]


def _parse(line: str):
  # A run killed mid-write leaves a partial last line: it is dropped (its step is re-run after the resume).
  try:
    row = json.loads(line)
  except json.JSONDecodeError:
    return None
  return row if isinstance(row, dict) and isinstance(row.get("step"), int) else None


def summary_writer_class():
  """tensorboardX's SummaryWriter, imported with torch hidden.

  tensorboardX imports torch whenever it is installed (only to accept torch tensors); the training path must
  not import torch (DESIGN.md §6), and it costs seconds at start-up.
  """
  if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
    sys.modules["torch"] = None  # makes `import torch` raise ImportError, which tensorboardX tolerates
    try:
      import tensorboardX  # noqa: F401  (imported for its side effect: cached without torch)
    finally:
      del sys.modules["torch"]
  from tensorboardX import SummaryWriter
  return SummaryWriter


def progress_bar(total: int, initial: int, enabled: bool):
  from tqdm import tqdm
  return tqdm(total=total, initial=initial, disable=not enabled, file=sys.stderr, dynamic_ncols=True,
              desc="train", mininterval=1.0)
