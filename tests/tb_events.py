"""Reads TensorBoard event files back (TFRecord framing + tensorboardX's protobufs): what a test checks was
written, without tensorboard installed."""

from __future__ import annotations

import glob
import os
import struct


def events(tb_dir: str):
  """Every Event in `tb_dir`'s event files, file by file in name (= creation) order."""
  from tensorboardX.proto import event_pb2

  for path in sorted(glob.glob(os.path.join(tb_dir, "events.out.tfevents.*"))):
    data = open(path, "rb").read()
    i = 0
    while i < len(data):  # [u64 length][u32 crc][payload][u32 crc]
      (n,) = struct.unpack("<Q", data[i : i + 8])
      ev = event_pb2.Event()
      ev.ParseFromString(data[i + 12 : i + 12 + n])
      i += 12 + n + 4
      yield ev


def scalars(tb_dir: str) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} of the simple-value scalars."""
  out: dict = {}
  for ev in events(tb_dir):
    for v in ev.summary.value:
      if v.WhichOneof("value") == "simple_value":
        out.setdefault(v.tag, []).append((ev.step, v.simple_value))
  return out


def hparams(tb_dir: str) -> tuple[dict, list[str]]:
  """The HParams plugin's session hyperparameters {name: value} and its experiment's metric tags (the last ones)."""
  from tensorboardX.proto import plugin_hparams_pb2

  values, metrics = {}, []
  for ev in events(tb_dir):
    for v in ev.summary.value:
      if v.metadata.plugin_data.plugin_name != "hparams":
        continue
      data = plugin_hparams_pb2.HParamsPluginData()
      data.ParseFromString(v.metadata.plugin_data.content)
      if data.HasField("session_start_info"):
        values = {k: getattr(x, x.WhichOneof("kind")) for k, x in data.session_start_info.hparams.items()}
      if data.HasField("experiment"):
        metrics = [m.name.tag for m in data.experiment.metric_infos]
  return values, metrics
