"""Issue 16 §3: every numeric config key has a range (config.RANGES), checked at start; NaN and infinity never pass.

The table is the mechanism: a numeric key added to `default_config()` without a range fails here, and each range
refuses the values just outside it (and accepts its bounds and sentinels), in one line naming the key.
"""

from __future__ import annotations

import glob
import importlib.util
import math
import os

import pytest

from lazarus_jax import config as config_lib
from lazarus_jax import settings
from lazarus_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _numeric_keys(c) -> set:
  out = set()
  for key, value in config_lib.flat_config(c).items():
    values = value if isinstance(value, (tuple, list)) else [value]
    if values and all(config_lib.is_number(v) for v in values):
      out.add(key)
  return out


def _shipped_configs():
  for path in sorted(glob.glob(os.path.join(REPO, "configs", "[!_]*.py"))):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield os.path.basename(path), module.get_config()


def test_every_numeric_key_has_a_range_and_every_range_a_key():
  keys = _numeric_keys(config_lib.default_config())
  assert keys - set(config_lib.RANGES) == set(), "numeric config keys without a range in config.RANGES"
  assert set(config_lib.RANGES) - keys == set(), "ranges for keys that are not numeric config keys"


@pytest.mark.parametrize("name,c", list(_shipped_configs()))
def test_shipped_configs_are_in_range(name, c):
  config_lib.check_ranges(c)
  settings.parse(c)


def _outside(rng: config_lib.Range, value):
  """Values just outside `rng`, of the key's type."""
  is_int = isinstance(value, int)
  step = 1 if is_int else 1e-6
  out = []
  if rng.low is not None:
    out.append(rng.low if rng.open_low else rng.low - step)
  if rng.high is not None:
    out.append(rng.high if rng.open_high else rng.high + step)
  if not is_int:
    out += [math.nan, math.inf, -math.inf]
  return [v - step if v in rng.special else v for v in out]  # e.g. -1 means "all": -2 is outside


def _inside(rng: config_lib.Range, value):
  out = list(rng.special)
  if rng.low is not None and not rng.open_low:
    out.append(rng.low)
  if rng.high is not None and not rng.open_high:
    out.append(rng.high)
  return out


def _set(c, key, value):
  *path, name = key.split(".")
  node = c
  for p in path:
    node = node[p]
  old = node[name]
  if isinstance(old, tuple):
    value = (value,) * len(old)
    if key == "mesh.shape" and value[0] == -1:
      value = (-1, 1, 1)  # one fill at most (a separate check)
  elif isinstance(old, float):
    value = float(value)
  with c.unlocked():
    node[name] = value


@pytest.mark.parametrize("key", sorted(config_lib.RANGES))
def test_each_range_refuses_what_lies_outside_and_accepts_its_bounds(key):
  rng = config_lib.RANGES[key]
  default = config_lib.flat_config(config_lib.default_config())[key]
  sample = default[0] if isinstance(default, tuple) else default
  bad = _outside(rng, sample)
  assert bad, key
  for value in bad:
    c = config_lib.default_config()
    _set(c, key, value)
    with pytest.raises(UserError, match=rf"^{key} must be .*got "):
      config_lib.check_ranges(c)
  for value in _inside(rng, sample):
    c = config_lib.default_config()
    _set(c, key, value)
    config_lib.check_ranges(c)


def test_validate_config_checks_ranges_first_thing():
  c = config_lib.default_config()
  c.train.lr = math.nan  # passed `lr <= 0` (NaN compares false): the first update was applied
  with pytest.raises(UserError, match="train.lr must be > 0, got nan"):
    settings.parse(c)
  c = config_lib.default_config()
  c.train.max_to_keep = 0  # orbax kept no checkpoint: "saved" said, nothing on disk, resume restarted at 0
  with pytest.raises(UserError, match="train.max_to_keep must be >= 1, got 0"):
    settings.parse(c)
