"""`python -m lazarus_jax.lens --model M --prompts "7 * 8 = |..." --targets multiply,add,...`: the all-layer logit lens.

The work is in lazarus_jax.analysis.lens.
"""

if __name__ == "__main__":
  import sys

  from lazarus_jax.errors import tidy_stderr

  tidy_stderr()
  from lazarus_jax.analysis import lens

  lens.main(sys.argv[1:])
