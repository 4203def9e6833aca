"""`python -m lazarus_jax.lens --model M --prompts "7 * 8 = |..." --targets multiply,add,...`: the all-layer logit lens.

The command is cli/lens.py; the lens itself lazarus_jax.analysis.lens.
"""

if __name__ == "__main__":
  import sys

  from lazarus_jax.cli import lens

  lens.run(sys.argv[1:])
