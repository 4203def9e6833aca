"""Metrics: tensorboardX scalars under <workdir>/tb and one JSON object per log step in metrics.jsonl.

Only process 0 writes (other processes get a writer that keeps history but writes nothing). On resume the
history after the restored step is dropped, so the file holds exactly one row per logged step.

A remote workdir (gs://...) has no append: metrics.jsonl is rewritten whole at each row (one object write, never
torn), and the TensorBoard events go through `files` too (`_EpathEventFile`).
"""

from __future__ import annotations

import io
import json
import os
import sys
import time

from lazarus_jax import files
from lazarus_jax.config import flat_config


class MetricsWriter:
  def __init__(self, workdir: str, enabled: bool = True, truncate_after: int = 0, hparams: dict | None = None):
    self.enabled = enabled
    self.path = files.join(workdir, "metrics.jsonl")
    self.remote = files.is_remote(workdir)
    self.history: list[dict] = []
    self._tb = None
    if not enabled:
      return
    if files.exists(self.path):
      self.history = [r for r in read_metrics(self.path) if r["step"] <= truncate_after]
    self._rewrite()  # replaced whole: a kill here must not lose the history
    self._tb = tb_writer(workdir)
    self._events = self._tb.file_writer.event_writer
    if hparams:
      write_hparams(self._tb, hparams, HPARAM_METRICS)

  def _rewrite(self) -> None:
    files.write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.history))

  def write(self, row: dict) -> None:
    self.history.append(row)
    if not self.enabled:
      return
    if self.remote:
      self._rewrite()
    else:
      with open(self.path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    for k, v in row.items():
      if k != "step":
        self._tb.add_scalar(f"train/{k}", v, row["step"])
    self._events.flush_if_due()

  def close(self) -> None:
    if self._tb is None:
      return
    try:
      self._tb.close()
    except OSError:
      self._events.drop()  # the events copy metrics.jsonl: on a failing disk they go (the run reports the failure)


def read_metrics(path: str) -> list[dict]:
  """The rows of a metrics.jsonl; torn or foreign lines are skipped (see `_parse`)."""
  text = files.read_bytes(path).decode("utf-8", errors="replace")
  rows = [_parse(line) for line in text.splitlines() if line.strip()]
  return [r for r in rows if r is not None]


def _parse(line: str):
  # A run killed mid-write leaves a partial last line: it is dropped (its step is re-run after the resume).
  try:
    row = json.loads(line)
  except json.JSONDecodeError:
    return None
  return row if isinstance(row, dict) and isinstance(row.get("step"), int) else None


def tb_writer(workdir: str, suffix: str = ""):
  """A SummaryWriter on the run's TensorBoard directory `<workdir>/tb` (training's scalars, evaluate's, hparams).

  tensorboardX names its event file by the second and the host only: a second writer (evaluate's) takes a
  `suffix`, or within the same second it would replace the first's file (remote: the whole object)."""
  tb_dir = files.join(workdir, "tb")
  if files.is_remote(workdir):
    _register_remote_events(tb_dir)
  writer = summary_writer_class()(tb_dir, filename_suffix=suffix)
  writer.file_writer.event_writer = SyncEventFileWriter(writer.file_writer.event_writer)
  return writer


class SyncEventFileWriter:
  """tensorboardX's event file, written in the caller's thread instead of tensorboardX's background one.

  That thread dies on a failed write (a full disk) and leaves its bounded queue unread, so the next `add_scalar`,
  and the exit hook's `close`, block forever: a run on a failing disk hung instead of reporting. Here the failed
  write raises OSError in the run, which reports it like any other (one line, exit 2). Flushed every
  FLUSH_SECONDS (a live TensorBoard sees the run) and at close; metrics.jsonl stays the record.
  """

  FLUSH_SECONDS = 30.0

  def __init__(self, threaded):
    # Take over its file (the header is written) and end its thread: nothing is queued yet, so it ends at once.
    self._events, self._logdir = threaded._ev_writer, threaded.get_logdir()
    threaded._worker.stop()
    queue = threaded._event_queue  # 2.6.5: a multiprocessing.Queue, whose feeder thread must end too
    for end in ("close", "join_thread"):
      getattr(queue, end, lambda: None)()
    threaded._closed = True
    self._closed, self._last_flush = False, time.monotonic()

  def get_logdir(self) -> str:
    return self._logdir

  def add_event(self, event) -> None:
    if not self._closed:
      self._events.write_event(event)

  def flush(self) -> None:
    if not self._closed:
      self._events.flush()
      self._last_flush = time.monotonic()

  def flush_if_due(self) -> None:
    if time.monotonic() - self._last_flush >= self.FLUSH_SECONDS:
      self.flush()

  def close(self) -> None:
    if not self._closed:
      self._closed = True  # first: a failing close is not retried by tensorboardX's exit hook
      self._events.close()

  def drop(self) -> None:
    """Closed without writing what is left (a failed disk): tensorboardX's exit hook then does nothing."""
    self._closed = True

  def reopen(self) -> None:
    raise NotImplementedError("a closed run's event file is not reopened: open a new writer (tb_writer)")


# The config values a run's HParams row shows: what tells runs apart, scalars and strings only.
HPARAM_KEYS = (
  "seed",
  "model.source",
  "model.path",
  "lora.rank",
  "lora.alpha",
  "lora.targets",
  "lora.layer_start",
  "lora.layer_end",
  "classifier.layer",
  "classifier.layer_fraction",
  "classifier.weight",
  "classifier.target_set",
  "data.format",
  "train.objective",
  "train.steps",
  "train.batch_size",
  "train.lr",
  "train.warmup_steps",
  "train.weight_decay",
  "train.grad_accum_steps",
)
# The scalars the HParams dashboard sets against them (written by training and by evaluate).
HPARAM_METRICS = ("train/loss", "train/classifier_accuracy", "eval/lens_accuracy_L", "eval/answer_accuracy")


def run_hparams(c) -> dict:
  """HPARAM_KEYS of config `c` as {key: int | float | str | bool} (the HParams plugin takes nothing else)."""
  flat = flat_config(c)
  out = {}
  for k in HPARAM_KEYS:
    v = flat.get(k)
    if isinstance(v, (list, tuple)):
      v = ",".join(map(str, v))
    out[k] = v if isinstance(v, (bool, int, float, str)) else str(v)
  return out


def write_hparams(writer, hparams: dict, metric_tags) -> None:
  """The HParams plugin's experiment and session records in the writer's own directory (tensorboardX's
  `add_hparams` would open a sub-run of its own, apart from the run's scalars)."""
  from tensorboardX.summary import hparams as hparams_summary

  experiment, start, end = hparams_summary(hparams, {t: 0.0 for t in metric_tags})
  fw = writer._get_file_writer()
  for summary in (experiment, start, end):
    fw.add_summary(summary)
  writer.flush()


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


class _EpathEventFile:
  """A TensorBoard event file on a remote path: the records are kept and uploaded whole at each flush (what
  tensorboardX's own GCS writer does), through `files`, so every epath scheme works alike."""

  def __init__(self, path: str):
    self.path, self.buffer = path, io.BytesIO()

  def write(self, data: bytes) -> None:
    self.buffer.write(data)

  def flush(self) -> None:
    files.makedirs(self.path.rsplit("/", 1)[0])
    files.epath_of(self.path).write_bytes(self.buffer.getvalue())

  def close(self) -> None:
    self.flush()


class _EpathEventFactory:
  def open(self, path):
    return _EpathEventFile(path)

  def directory_check(self, path):
    pass  # object stores need no directories before their files


def _register_remote_events(path: str) -> None:
  summary_writer_class()  # tensorboardX imported without torch, before its registry is touched
  from tensorboardX import record_writer

  record_writer.register_writer_factory(path.split("://", 1)[0], _EpathEventFactory())


PROGRESS_ENV = "LAZARUS_JAX_PROGRESS"  # 0: no progress bars; 1: bars even when stderr is no terminal


def progress_wanted() -> bool:
  """Bars are for a person watching: on when stderr is a terminal (not in logs, pipes or tests), unless
  LAZARUS_JAX_PROGRESS says otherwise. Train, evaluate and sweep follow the same rule."""
  setting = os.environ.get(PROGRESS_ENV, "")
  if setting in ("0", "1"):
    return setting == "1"
  try:
    return sys.stderr.isatty()
  except (AttributeError, ValueError):  # a replaced or closed stream
    return False


def progress_bar(total: int, initial: int = 0, enabled: bool = True, desc: str = "train"):
  """A tqdm bar on stderr (`enabled`: this process shows one at all, e.g. process 0 only)."""
  from tqdm import tqdm

  return tqdm(
    total=total,
    initial=initial,
    disable=not (enabled and progress_wanted()),
    file=sys.stderr,
    dynamic_ncols=True,
    desc=desc,
    mininterval=1.0,
  )
