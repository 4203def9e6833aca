"""`python -m lazarus_jax.evaluate --config C --workdir W`: evaluate a trained run into W/eval.

The work is in lazarus_jax.reporting.evaluate.
"""

if __name__ == "__main__":
  from lazarus_jax.cli import hugepages

  hugepages.maybe_reexec()  # before the heavy imports (cli/hugepages.py)

  from lazarus_jax.cli.common import run_cli, workdir_main
  from lazarus_jax.reporting import evaluate

  run_cli(workdir_main(evaluate.run, "the run directory to evaluate (outputs go to <workdir>/eval)"), with_config=True)
