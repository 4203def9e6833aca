"""settings.parse: one typed field for every config key, holding that key's value (or its parsed form)."""

from __future__ import annotations

import dataclasses

import pytest

from lazarus_jax import settings
from lazarus_jax.config import default_config, flat_config
from lazarus_jax.configs import tiny as tiny_config
from lazarus_jax.errors import UserError

# Keys whose typed field has another name or a parsed value: key -> (field path, the value parse gives it).
PARSED = {
  "data.format": ("data.formats", lambda c: tuple(settings.data_formats(c))),
  "data.eval_format": ("data.eval_formats", lambda c: tuple(settings.eval_formats(c))),
  "lora.targets": ("lora.targets", lambda c: tuple(settings.comma_list(c.lora.targets, "lora.targets"))),
  "lora.layer_end": ("lora.layer_end", lambda c: None if c.lora.layer_end == -1 else c.lora.layer_end),
  "eval.mechanism.steer_alphas": ("eval.mechanism.steer_alphas", lambda c: tuple(settings.steer_alphas(c))),
  "mesh.rules": ("mesh.rules", lambda c: tuple(tuple(r) for r in c.mesh.rules)),
}
SWEEP_LISTS = ("weights", "formats", "layer_fractions", "seeds", "target_sets", "grpo_arms")


def _field(obj, path: str):
  for name in path.split("."):
    assert dataclasses.is_dataclass(obj), f"{path}: {type(obj).__name__} is not a typed sub-config"
    assert name in {f.name for f in dataclasses.fields(obj)}, f"{path}: no field {name} in {type(obj).__name__}"
    obj = getattr(obj, name)
  return obj


@pytest.mark.parametrize("objective", ["dual_reward", "grpo"])
def test_every_config_key_has_its_typed_field(objective):
  c = default_config()
  c.train.objective = objective
  parsed = settings.parse(c)
  for key, value in flat_config(c).items():
    if key.startswith("grpo.") and objective != "grpo":
      assert parsed.grpo is None  # GRPO's settings exist only when it trains
      continue
    if key.startswith("sweep.") and key.split(".")[1] in SWEEP_LISTS:
      got = _field(parsed, key)
      given = settings.comma_list(value, key)
      as_given = [type(x)(g) for x, g in zip(got, given)]  # "0.7" -> 0.7, "1" -> 1, "symbolic" -> "symbolic"
      assert isinstance(got, tuple) and list(got) == as_given and len(got) == len(given), key
      continue
    if key.startswith("classifier.targets."):
      continue  # a mapping: checked below
    path, want = PARSED.get(key, (key, None))
    got = _field(parsed, path)
    expected = want(c) if want else (tuple(value) if isinstance(value, list) else value)
    assert got == expected, f"{key}: settings holds {got!r}, the config {expected!r}"
  assert parsed.classifier.targets == dict(c.classifier.targets)
  assert parsed.record is c  # the record the run writes (config.json) is the config itself


def test_typed_fields_are_exactly_the_config_keys():
  # A field without a key would be a setting no config can change: every field of every section is one key.
  c = default_config()
  c.train.objective = "grpo"
  parsed = settings.parse(c)
  keys = set(flat_config(c))
  renamed = {path: key for key, (path, _) in PARSED.items()}

  def walk(obj, prefix):
    for f in dataclasses.fields(obj):
      if f.name == "record":
        continue
      path = prefix + f.name
      value = getattr(obj, f.name)
      if dataclasses.is_dataclass(value):
        walk(value, path + ".")
      elif path == "classifier.targets":
        assert any(k.startswith("classifier.targets.") for k in keys)
      else:
        assert renamed.get(path, path) in keys, f"settings field {path} is no config key"

  walk(parsed, "")


def test_parse_returns_frozen_sections():
  parsed = settings.parse(tiny_config.get_config())
  with pytest.raises(dataclasses.FrozenInstanceError):
    parsed.train.steps = 5
  assert parsed.model.location == parsed.model.source  # model.path empty: model.source is what loads
  c = tiny_config.get_config()
  c.model.path = "/somewhere"
  assert settings.parse(c).model.location == "/somewhere"


def test_a_bad_value_is_refused_before_any_section_is_built():
  c = tiny_config.get_config()
  c.eval.probe_method = "sgd"
  with pytest.raises(UserError, match="eval.probe_method"):
    settings.parse(c)
