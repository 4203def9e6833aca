"""AOT-compiles the TinyLlama-shaped train step on 8 simulated CPU devices with abstract weights (no allocation).

The seed's model (22 layers, hidden 2048, 32/4 heads, intermediate 5632, vocab 32000) as ShapeDtypeStructs
carrying their NamedShardings: `jit(step, in_shardings, out_shardings).lower(...).compile()` must succeed on
each mesh (sharding errors surface here, before any weights load), and the memory analysis is printed.
"""

import time

import jax
import jax.numpy as jnp
import ml_collections
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from lazarus_jax import sharding
from lazarus_jax.lora import LoRA, LoRAConfig, add_lora
from lazarus_jax.model import LlamaConfig, LlamaModel, LoRAParam
from lazarus_jax.train import make_optimizer, make_train_step, opt_state_shardings

TINYLLAMA = dict(model_type="llama", vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                 num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4, rms_norm_eps=1e-5,
                 rope_theta=10000.0, tie_word_embeddings=False, max_position_embeddings=2048)
BATCH, SEQ, ANSWER = 64, 32, 8


def abstract_with(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


@pytest.mark.parametrize("mesh_shape", [(2, 4, 1), (1, 8, 1)], ids=["data2_fsdp4", "fsdp8"])
def test_tinyllama_step_compiles_abstractly_on_8_devices(mesh_shape):
  assert len(jax.devices()) == 8
  cfg = LlamaConfig.from_hf(TINYLLAMA, param_dtype="bfloat16", compute_dtype="bfloat16")
  lora_cfg = LoRAConfig(rank=32, alpha=64.0, targets=("v", "o"))
  mesh = sharding.make_mesh(mesh_shape)
  sharding.validate_model_for_mesh(mesh, cfg, BATCH)
  rules = sharding.DEFAULT_RULES

  def build():
    model = LlamaModel(cfg, rngs=nnx.Rngs(0))
    add_lora(model, lora_cfg, seed=0)
    return model

  with jax.set_mesh(mesh):
    abstract_model = nnx.eval_shape(build)  # shapes and logical axes only: nothing is allocated
  graphdef, base, _, rest = nnx.split(abstract_model, nnx.Param, LoRAParam, ...)
  base_sh = nnx.to_pure_dict(sharding.state_shardings(base, mesh, rules))
  base = abstract_with(nnx.to_pure_dict(base), base_sh)
  rest = nnx.to_pure_dict(rest)
  replicated = NamedSharding(mesh, PartitionSpec())

  tc = ml_collections.ConfigDict(dict(lr=5e-4, warmup_steps=50, steps=1000, end_lr_fraction=0.1, grad_clip=1.0,
                                      b1=0.9, b2=0.999, weight_decay=0.0))
  tx, schedule = make_optimizer(tc)

  def init_state():
    params = {"lora": nnx.to_pure_dict(nnx.state(LoRA(cfg, lora_cfg, nnx.Rngs(lora=0)), LoRAParam))}
    return {"lora": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
            "nonfinite": jnp.zeros((), jnp.int32), "skipped": jnp.zeros((), jnp.int32)}

  abstract_state = jax.eval_shape(init_state)
  lora_state = nnx.state(abstract_model, LoRAParam)
  lora_sh = nnx.to_pure_dict(sharding.state_shardings(lora_state, mesh, rules))  # {"lora": {v_a, ...}}
  state_sh = {"lora": lora_sh, "opt_state": opt_state_shardings(abstract_state["opt_state"], lora_sh, replicated),
              "step": replicated, "nonfinite": replicated, "skipped": replicated}
  state = abstract_with(abstract_state, state_sh)

  bsh = sharding.batch_sharding(mesh, rules)
  i32, f32 = jnp.int32, jnp.float32
  batch = {k: jax.ShapeDtypeStruct(shape, dt, sharding=bsh) for k, (shape, dt) in {
      "tokens": ((BATCH, SEQ), i32), "mask": ((BATCH, SEQ), i32), "readout": ((BATCH,), i32),
      "label": ((BATCH,), i32), "answer_pos": ((BATCH, ANSWER), i32), "answer_target": ((BATCH, ANSWER), i32),
      "answer_weight": ((BATCH, ANSWER), f32)}.items()}
  weight = jax.ShapeDtypeStruct((), f32, sharding=replicated)
  class_ids = jax.ShapeDtypeStruct((4,), i32, sharding=replicated)

  step = make_train_step(graphdef, tx, schedule, int(cfg.num_layers * 0.55), False, 1)
  jitted = jax.jit(step, in_shardings=(state_sh, base_sh, None, bsh, replicated, replicated),
                   out_shardings=(state_sh, replicated), donate_argnums=(0,))
  t0 = time.perf_counter()
  compiled = jitted.lower(state, base, rest, batch, weight, class_ids).compile()
  seconds = time.perf_counter() - t0

  mem = compiled.memory_analysis()
  gib = lambda b: b / 2**30  # noqa: E731
  print(f"\nTinyLlama step on mesh {dict(mesh.shape)} compiled in {seconds:.1f}s; per device: arguments "
        f"{gib(mem.argument_size_in_bytes):.3f} GiB, outputs {gib(mem.output_size_in_bytes):.3f} GiB, "
        f"temporaries {gib(mem.temp_size_in_bytes):.3f} GiB")
  # The bf16 base (~1.1e9 params = 2.05 GiB) is split over the fsdp axis: each device holds about 1/fsdp of it.
  n_params = sum(x.size for x in jax.tree.leaves(base))
  assert 1.0e9 < n_params < 1.2e9
  per_device_base = 2 * n_params / mesh.shape["fsdp"] / 2**30
  assert gib(mem.argument_size_in_bytes) < per_device_base * 1.25 + 0.1
  # The base weights really arrive sharded (no silent replication of the big matrices).
  assert base_sh["layers"]["gate"].spec[1] == "fsdp"
