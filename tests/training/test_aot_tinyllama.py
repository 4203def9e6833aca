"""AOT-compiles the TinyLlama-shaped train step on 8 simulated CPU devices with abstract weights (no allocation).

The seed's model (22 layers, hidden 2048, 32/4 heads, intermediate 5632, vocab 32000) as ShapeDtypeStructs
carrying their NamedShardings, through `lazarus_jax.training.aot` (what `train.run` compiles): `.lower(...).compile()` must
succeed on each mesh (sharding errors surface here, before any weights load), and the memory analysis is printed.
"""

import functools
import re
import time

import jax
import pytest

from lazarus_jax.models import sharding
from lazarus_jax.models.model import LlamaConfig
from lazarus_jax.models.tiny import TINYLLAMA
from lazarus_jax.training import aot

BATCH, SEQ = 64, 32
CFG = LlamaConfig.from_hf(TINYLLAMA, param_dtype="bfloat16", compute_dtype="bfloat16")
GIB = 2**30


@functools.lru_cache(maxsize=None)
def compiled_on(mesh_shape):
  assert len(jax.devices()) == 8
  t0 = time.perf_counter()
  compiled = aot.lower_train_step(CFG, aot.StepSpec(BATCH, SEQ), sharding.make_mesh(mesh_shape)).compile()
  mem = aot.memory(compiled)
  print(
    f"\nTinyLlama step on mesh {mesh_shape} compiled in {time.perf_counter() - t0:.1f}s; per device: arguments "
    f"{mem['arguments'] / GIB:.3f} GiB, outputs {mem['outputs'] / GIB:.3f} GiB, "
    f"temporaries {mem['temporaries'] / GIB:.3f} GiB"
  )
  return compiled, mem


@pytest.mark.parametrize("mesh_shape", [(2, 4, 1), (1, 8, 1)], ids=["data2_fsdp4", "fsdp8"])
def test_tinyllama_step_compiles_abstractly_on_8_devices(mesh_shape):
  _, mem = compiled_on(mesh_shape)
  # The bf16 base (~1.1e9 params = 2.05 GiB) is split over the fsdp axis: each device holds about 1/fsdp of it.
  n_params = 1.1e9
  per_device_base = 2 * n_params / mesh_shape[1] / GIB
  assert mem["arguments"] / GIB < per_device_base * 1.25 + 0.1
  # The base weights really arrive sharded (no silent replication of the big matrices).
  mesh = sharding.make_mesh(mesh_shape)
  assert sharding.logical_to_spec(("layers", "embed", "mlp"), sharding.DEFAULT_RULES, (22, 2048, 5632), mesh)[1] == "fsdp"


def test_fsdp_working_set_is_the_data_parallel_one():
  """FSDP shards the weights and nothing else: each device's activations are those of its own batch slice and the
  frozen weights are gathered one layer at a time inside the scan. So the temporaries at fsdp 8 are those at data 8
  plus a few layers' gathered weights and the gathered unembedding, while the arguments shrink ~8x. (Unpinned,
  GSPMD gathered the activations over the batch instead: 5.2 GiB of temporaries at fsdp 8 vs 1.0 GiB at data 8.)"""
  _, data = compiled_on((8, 1, 1))
  _, fsdp = compiled_on((1, 8, 1))
  d, f, kv = CFG.hidden_size, CFG.intermediate_size, CFG.num_kv_heads * CFG.head_dim
  one_layer = 2 * (2 * d * d + 2 * d * kv + 3 * d * f)  # bf16 bytes of one block's projections (~88 MB)
  unembed = 4 * CFG.vocab_size * d  # gathered once; XLA:CPU converts it to float32 first (262 MB)
  assert fsdp["temporaries"] <= data["temporaries"] + 3 * one_layer + unembed, (fsdp, data)
  assert fsdp["arguments"] < data["arguments"] / 6


def test_fsdp_gathers_one_layer_of_weights_inside_the_scan():
  """In the compiled HLO the frozen weights are all-gathered as one layer's projection at a time (never a whole
  [layers, ...] stack), and no device gathers the whole batch's activations or logits (unpinned, GSPMD all-gathered
  f32[64,32,2048] residual streams and f32[576,32000] logits, and gathered no weight)."""
  compiled, _ = compiled_on((1, 8, 1))
  gathers = [
    (dt, tuple(int(x) for x in dims.split(",") if x))
    for dt, dims in re.findall(r"= (\w+)\[([0-9,]*)\][^ ]* all-gather(?:-start)?\(", compiled.as_text())
  ]
  d, f = CFG.hidden_size, CFG.intermediate_size
  q, kv = CFG.num_heads * CFG.head_dim, CFG.num_kv_heads * CFG.head_dim
  one_layer = {(d, q), (d, kv), (q, d), (d, f), (f, d)}
  weights = [shape for dt, shape in gathers if dt == "u16"]  # the packed bf16 base
  assert set(weights) == one_layer, gathers
  batch_activations = [
    (dt, shape) for dt, shape in gathers if dt in ("f32", "bf16") and any(shape[i : i + 2] == (BATCH, SEQ) for i in range(len(shape)))
  ]
  assert not batch_activations, batch_activations
  # Nor the head's rows (readout + answer positions of the whole batch): the unembedding is gathered instead.
  head_rows = BATCH * (1 + 8)
  assert not [shape for _, shape in gathers if head_rows in shape], gathers
  assert ("f32", (CFG.vocab_size, CFG.hidden_size)) in gathers or ("bf16", (CFG.vocab_size, CFG.hidden_size)) in gathers
