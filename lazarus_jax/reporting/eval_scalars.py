"""Evaluate's headline numbers as TensorBoard scalars (`eval/...`) in the run's `<workdir>/tb`, beside training's.

At the evaluated adapter's training step, so they line up with the training curves. The base model's (when it
was measured in the same run) go under `eval_base/`.
"""

from __future__ import annotations

from lazarus_jax.training.logging_utils import tb_writer


def _with_interval(out: dict, tag: str, summary: dict | None, key: str = "accuracy") -> None:
  if not summary or summary.get(key) is None:
    return
  out[tag] = summary[key]
  for end in ("ci_low", "ci_high"):
    if summary.get(end) is not None:
      out[f"{tag}/{end}"] = summary[end]


def headline_scalars(part: dict, row: int, prefix: str = "eval") -> dict[str, float]:
  """{tag: value} for one model's metrics (`evaluate_model`'s dict): lens accuracy at L with its interval,
  probe accuracy at L, answer accuracy, each overall (probes: per format only) and per format."""
  out: dict[str, float] = {}
  cls = part.get("classifier_eval") or {}
  _with_interval(out, f"{prefix}/lens_accuracy_L", cls)
  for fmt, summary in (cls.get("by_format") or {}).items():
    _with_interval(out, f"{prefix}/lens_accuracy_L/{fmt}", summary)
  for fmt, probe in ((part.get("probes") or {}).get("by_format") or {}).items():
    layers = probe.get("layers") if isinstance(probe, dict) else None
    if layers and row < len(layers):  # a format with too few examples to probe has none
      at_l = layers[row]
      out[f"{prefix}/probe_accuracy_L/{fmt}"] = at_l["test_accuracy"]
      out[f"{prefix}/probe_accuracy_L/{fmt}/ci_low"], out[f"{prefix}/probe_accuracy_L/{fmt}/ci_high"] = at_l["test_ci"]
  answers = part.get("answer_accuracy")
  _with_interval(out, f"{prefix}/answer_accuracy", answers)
  for fmt, summary in ((answers or {}).get("by_format") or {}).items():
    _with_interval(out, f"{prefix}/answer_accuracy/{fmt}", summary)
  return {k: float(v) for k, v in out.items()}


def write(workdir: str, results: dict) -> dict[str, float]:
  """Writes the results' headline scalars into `<workdir>/tb`; returns them (tag -> value)."""
  row = results["lens_row"]
  scalars = headline_scalars(results, row)
  if results.get("base"):
    scalars.update(headline_scalars(results["base"], row, "eval_base"))
  origin = (results.get("model") or {}).get("adapter_origin") or {}
  step = origin.get("step") or 0
  writer = tb_writer(workdir, suffix=".eval")
  try:
    for tag, value in scalars.items():
      writer.add_scalar(tag, value, step)
  finally:
    writer.close()
  return scalars
