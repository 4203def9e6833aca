"""Command-line plumbing shared by train and evaluate: `--config <file> [--config.key=value]`, `--workdir`.

Configs are locked, so a mistyped key fails at parse time. Every user error (bad flag, bad value, missing
file) ends as one line on stderr and exit status 2, before any work and without touching outputs.
"""

from __future__ import annotations

import sys

from lazarus_jax.errors import UserError


def run_cli(main, with_config: bool = True) -> None:
  from absl import flags
  from ml_collections import config_flags

  if with_config:
    config_flags.DEFINE_config_file("config", None, "a config file, e.g. configs/smollm2_135m.py",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "output directory (default: runs/<timestamp>)")
  try:
    argv = flags.FLAGS(sys.argv)
  except Exception as e:  # absl's flag errors, a config file that does not exist or fails to load
    print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
    sys.exit(2)
  if with_config and flags.FLAGS.config is None:
    print("error: --config is required, e.g. --config configs/smollm2_135m.py", file=sys.stderr)
    sys.exit(2)
  try:
    sys.exit(main(argv) or 0)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
