"""`python -m lazarus_jax.preflight --config C --topology v5litepod-16`: does the config's step fit the slice's HBM?

Exit status 0 and one line when it fits, 2 and one line naming what to change when it does not (training/aot.py;
needs `pip install "jax[tpu]"`; no TPU needed). launch/tpu_preflight.sh runs it before a pod-slice job.
"""

if __name__ == "__main__":
  from absl import flags

  from lazarus_jax.cli.common import run_cli
  from lazarus_jax.training import aot

  flags.DEFINE_string("topology", None, "a TPU VM accelerator type (v4-16, v5litepod-16, ...) or a topology (v5e:4x4)", required=True)

  def main(argv):
    print(aot.check(flags.FLAGS.config, flags.FLAGS.topology))
    return 0

  run_cli(main, with_config=True)
