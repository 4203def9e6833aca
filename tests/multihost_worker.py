"""One process of the multi-host test: 2 simulated CPU devices, gloo collectives, then train.run."""

import sys

import jax

port, process_id, n_processes, devices_per_process, workdir = sys.argv[1:6]
jax.config.update("jax_num_cpu_devices", int(devices_per_process))
jax.config.update("jax_cpu_collectives_implementation", "gloo")
if int(n_processes) > 1:
  jax.distributed.initialize(f"localhost:{port}", num_processes=int(n_processes), process_id=int(process_id))

import importlib.util  # noqa: E402

from lazarus_jax.training import loop as train  # noqa: E402

spec = importlib.util.spec_from_file_location("tiny_config", sys.argv[6])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
config = module.get_config()
config.eval.enabled = False
config.train.steps = 6
config.train.log_every = 1
config.train.checkpoint_every = 3
config.train.batch_size = 8
config.mesh.shape = (-1, 1, 1)
train.run(config, workdir)
print(f"process {jax.process_index()} of {jax.process_count()} finished on {jax.device_count()} devices")
