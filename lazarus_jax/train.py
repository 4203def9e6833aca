"""`python -m lazarus_jax.train --config C --workdir W [--config.key=value ...]`: train, then evaluate the run.

cli/train.py chains lazarus_jax.training.loop (training) and lazarus_jax.reporting.evaluate (evaluation).
"""

if __name__ == "__main__":
  from lazarus_jax.cli import hugepages

  hugepages.maybe_reexec()  # before the heavy imports (cli/hugepages.py)

  from lazarus_jax.cli import train
  from lazarus_jax.cli.common import run_cli

  run_cli(train.main, with_config=True)
