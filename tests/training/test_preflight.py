"""The pre-flight check (`lazarus_jax.training.aot`): the config's real step compiled for a slice on abstract weights, and a
job that will not fit refused in one line. Simulated CPU devices stand in for the slice (no libtpu here)."""

import importlib.util
import json
import os

import jax
import pytest

from lazarus_jax.errors import UserError
from lazarus_jax.models.tiny import TINYLLAMA, tiny_backend
from lazarus_jax.training import aot

import repo

ROOT = repo.ROOT
GIB = 2**30


@pytest.mark.parametrize(
  "accelerator,topology",
  [
    ("v4-16", "v4:2x2x2"),
    ("v4-8", "v4:2x2x1"),
    ("v5litepod-16", "v5e:4x4"),
    ("v5litepod-4", "v5e:2x2"),
    ("v5p-32", "v5p:2x2x4"),
    ("v6e-8", "v6e:2x4"),
    ("v5e:4x4", "v5e:4x4"),
  ],
)
def test_accelerator_types_name_their_topology(accelerator, topology):
  assert aot.topology_name(accelerator) == topology


@pytest.mark.parametrize("bad", ["v3-8", "v5litepod-12", "tpu"])
def test_unknown_accelerator_types_are_refused(bad):
  with pytest.raises(UserError):
    aot.topology_name(bad)


@pytest.fixture(scope="module")
def tinyllama_shape_dir(tmp_path_factory):
  """TinyLlama's config.json and a tokenizer, no weights: what the check reads."""
  path = tmp_path_factory.mktemp("tinyllama_shape")
  (path / "config.json").write_text(json.dumps(TINYLLAMA))
  tiny_backend().save(str(path / "tokenizer.json"))
  (path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": False}))
  return str(path)


def tinyllama_config(path, **overrides):
  spec = importlib.util.spec_from_file_location("tinyllama", os.path.join(ROOT, "configs", "tinyllama.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.model.path = path
  for key, value in overrides.items():
    section, leaf = key.split(".")
    c[section][leaf] = value
  return c


def test_the_shipped_tinyllama_job_fits_8_chips_and_is_measured(tinyllama_shape_dir):
  mem, line = aot.preflight(tinyllama_config(tinyllama_shape_dir), "v4-16", devices=jax.devices(), hbm=32 * GIB)
  assert mem["fits"] and line.startswith("fits: v4:2x2x2 (8 chips, 32 GiB HBM each), mesh {'data': 8")
  assert mem["dtypes"]["param_dtype"] == "bfloat16" and mem["dtypes"]["activation_dtype"] == "bfloat16"  # auto on TPU
  assert mem["batch_size"] == 8 and mem["seq_len"] % 16 == 0  # the data's own length, from its tokenizer
  # Replicated bf16 weights: every chip holds the whole ~2 GiB base.
  assert 1.9 * GIB < mem["arguments"] < 2.3 * GIB


def test_a_job_that_will_not_fit_is_refused_and_fsdp_makes_it_fit(tinyllama_shape_dir):
  with pytest.raises(UserError) as e:
    aot.check(tinyllama_config(tinyllama_shape_dir), "v4-16", devices=jax.devices(), hbm=1 * GIB)
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith("pre-flight: does not fit: v4:2x2x2") and "mesh.shape='(1,-1,1)'" in msg
  line = aot.check(tinyllama_config(tinyllama_shape_dir, **{"mesh.shape": (1, -1, 1)}), "v4-16", devices=jax.devices(), hbm=1 * GIB)
  assert line.startswith("pre-flight: fits: v4:2x2x2") and "'fsdp': 8" in line
