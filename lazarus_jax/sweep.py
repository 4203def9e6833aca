"""`python -m lazarus_jax.sweep --config C --workdir W`: train and evaluate a grid of arms, then compare them.

The work is in lazarus_jax.reporting.sweep.
"""

if __name__ == "__main__":
  from lazarus_jax.cli import hugepages

  hugepages.maybe_reexec()  # before the heavy imports (cli/hugepages.py)

  from lazarus_jax.cli.common import run_cli, workdir_main
  from lazarus_jax.reporting import sweep

  run_cli(workdir_main(sweep.run, "the sweep directory (arms go to <workdir>/arms/<name>-<config hash>)"), with_config=True)
