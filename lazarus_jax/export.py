"""`python -m lazarus_jax.export --workdir W [--step N] [--out DIR] [--overwrite]`: the PEFT adapter of a checkpoint.

Default: the newest complete checkpoint, written to W/adapter-step-N. The work is in lazarus_jax.training.export.
"""

if __name__ == "__main__":
  from absl import flags

  from lazarus_jax.cli.common import run_cli

  flags.DEFINE_string("workdir", None, "the training run's directory", required=True)
  flags.DEFINE_integer("step", None, "the checkpoint step to export (default: the newest complete one)")
  flags.DEFINE_string("out", None, "the adapter directory to write (default: <workdir>/adapter-step-<step>)")
  flags.DEFINE_bool("overwrite", False, "replace an --out that holds something else")

  def main(argv):
    from lazarus_jax.training import export

    f = flags.FLAGS
    step, out, written = export.export_checkpoint(f.workdir, f.step, f.out, f.overwrite)
    print(f"{'exported' if written else 'already there, unchanged:'} the adapter of checkpoint step {step} -> {out}")
    return 0

  run_cli(main, with_config=False)
