"""Model dtypes `auto`: resolved from the platform and the CPU's flags, the shipped configs' default, and recorded."""

import importlib.util
import json
import os

import pytest

from lazarus_jax import experiment, provenance, settings
from lazarus_jax.cli.train import train_and_evaluate
from lazarus_jax.models import dtypes

import repo
from tiny_runs import tiny_config

ROOT = repo.ROOT
SAPPHIRE_RAPIDS = frozenset("fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8".split())
ZEN4 = frozenset("fpu sse2 avx2 avx512f avx512bw avx512_bf16".split())
SKYLAKE = frozenset("fpu sse2 avx2 avx512f avx512bw avx512_vnni".split())
AUTO3 = ("auto", "auto", "auto")


def chosen(choice):
  return choice.param_dtype, choice.compute_dtype, choice.activation_dtype


@pytest.mark.parametrize(
  "flags,why", [(SAPPHIRE_RAPIDS, "CPU has amx_bf16, avx512_bf16"), (ZEN4, "CPU has avx512_bf16")], ids=["amx", "avx512_bf16"]
)
def test_cpu_with_native_bf16_gets_bf16_matmuls_and_float32_activations(flags, why):
  choice = dtypes.resolve(*AUTO3, platform="cpu", flags=flags)
  assert chosen(choice) == ("bfloat16", "bfloat16", "float32")
  assert choice.reason.startswith(why) and "activations float32 on CPU" in choice.reason
  assert choice.describe() == (
    f"dtypes: param auto -> bfloat16, compute auto -> bfloat16, activation auto -> float32 ({choice.reason})"
  )


@pytest.mark.parametrize("flags", [SKYLAKE, frozenset()], ids=["avx512_without_bf16", "no_flags"])
def test_cpu_without_native_bf16_stays_float32(flags):
  choice = dtypes.resolve(*AUTO3, platform="cpu", flags=flags)
  assert chosen(choice) == ("float32", "float32", "float32")
  assert choice.reason == "CPU has neither amx_bf16 nor avx512_bf16"


@pytest.mark.parametrize("platform,cc", [("tpu", None), ("gpu", "9.0"), ("gpu", "8.0"), ("rocm", None)])
def test_accelerators_get_bf16_everywhere(platform, cc):
  # The host CPU's flags do not matter on an accelerator.
  choice = dtypes.resolve(*AUTO3, platform=platform, flags=frozenset(), compute_capability=cc)
  assert chosen(choice) == ("bfloat16", "bfloat16", "bfloat16")
  assert choice.reason == ("TPU" if platform == "tpu" else "GPU")


def test_a_gpu_without_bf16_tensor_cores_stays_float32():
  choice = dtypes.resolve(*AUTO3, platform="gpu", compute_capability="7.0")
  assert chosen(choice) == ("float32", "float32", "float32")
  assert "7.0" in choice.reason


def test_explicit_values_pass_through():
  choice = dtypes.resolve("float32", "bfloat16", "float16", platform="tpu")
  assert chosen(choice) == ("float32", "bfloat16", "float16") and choice.reason == ""
  # Only the auto entries are resolved.
  mixed = dtypes.resolve("float32", "auto", "auto", platform="cpu", flags=ZEN4)
  assert chosen(mixed) == ("float32", "bfloat16", "float32")
  assert mixed.as_dict()["requested"] == {"param_dtype": "float32", "compute_dtype": "auto", "activation_dtype": "auto"}


def test_cpu_flags_read_x86_and_arm_cpuinfo(tmp_path):
  x86 = tmp_path / "x86"
  x86.write_text(
    "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu avx2 avx512_bf16\n"
  )
  arm = tmp_path / "arm"
  arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
  assert dtypes.cpu_flags(str(x86)) == {"fpu", "avx2", "avx512_bf16"}
  assert dtypes.cpu_flags(str(arm)) == {"fp", "asimd", "bf16", "i8mm"}
  assert dtypes.cpu_flags(str(tmp_path / "missing")) == frozenset()
  # Every result records the CPU (provenance.cpu): its model and the flags that decide dtypes and speed.
  assert provenance.cpu(str(x86)) == {"model": "AMD EPYC", "flags": ["avx2", "avx512_bf16"]}
  assert provenance.cpu(str(arm))["flags"] == ["asimd", "bf16"]
  assert set(provenance.collect()["cpu"]) == {"model", "flags"}


def _config(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize("name", ["smollm2_135m", "tinyllama"])
def test_shipped_configs_default_to_auto(name):
  c = _config(name)
  assert (c.model.param_dtype, c.model.compute_dtype, c.model.activation_dtype) == AUTO3
  settings.parse(c)  # auto is a valid value


def test_tiny_config_stays_float32():
  c = _config("tiny")
  assert (c.model.param_dtype, c.model.compute_dtype, c.model.activation_dtype) == ("float32",) * 3


@pytest.mark.parametrize(
  "flags,want",
  [(ZEN4, ("bfloat16", "bfloat16", "float32")), (SKYLAKE, ("float32", "float32", "float32"))],
  ids=["bf16_cpu", "f32_cpu"],
)
def test_a_run_records_the_resolved_dtypes(monkeypatch, tmp_path, capsys, flags, want):
  """train_and_evaluate with auto dtypes on a (faked) CPU: one line says the choice; the model is built in it; the run's
  train_summary.json and its evaluation's results.json record it with the reason."""
  monkeypatch.setattr(dtypes, "cpu_flags", lambda path="/proc/cpuinfo": flags)
  built = []
  load_model = experiment.load_model
  monkeypatch.setattr(experiment, "load_model", lambda c: built.append(load_model(c)) or built[-1])
  c = tiny_config(
    **{
      "train.steps": 2,
      "train.checkpoint_every": 100,
      "model.param_dtype": "auto",
      "model.compute_dtype": "auto",
      "model.activation_dtype": "auto",
      "eval.enabled": True,
      "eval.generate": False,
      "eval.probes": False,
      "eval.compare_base": False,
      "eval.max_examples_per_op": 4,
    }
  )
  train_and_evaluate(c, str(tmp_path))
  cfg = built[0].config
  assert (cfg.param_dtype, cfg.compute_dtype, cfg.activation_dtype) == want
  reason = dtypes.resolve(*AUTO3, platform="cpu", flags=flags).reason
  line = [x for x in capsys.readouterr().err.splitlines() if x.startswith("dtypes: ")]
  assert line and line[0] == (f"dtypes: param auto -> {want[0]}, compute auto -> {want[1]}, activation auto -> {want[2]} ({reason})")
  expected = {
    "param_dtype": want[0],
    "compute_dtype": want[1],
    "activation_dtype": want[2],
    "requested": {"param_dtype": "auto", "compute_dtype": "auto", "activation_dtype": "auto"},
    "reason": reason,
    "kernels": {
      "attention": "blockwise",
      "layer_loop": "scan",  # kernels.py: auto on a CPU
      "requested": {"attention": "auto", "layer_loop": "auto"},
      "reason": "blockwise attention on cpu (einsum up to 128 positions); scanned layers on cpu",
    },
  }
  with open(tmp_path / "train_summary.json") as f:
    assert json.load(f)["provenance"]["dtypes"] == expected
  with open(tmp_path / "eval" / "results.json") as f:
    assert json.load(f)["provenance"]["dtypes"] == expected
