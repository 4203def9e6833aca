"""User-facing errors: one clear line, non-zero exit, no traceback."""

from __future__ import annotations

import functools
import sys


class UserError(Exception):
  """A mistake in the user's input (config, path, data). Printed as one line; exit code 2."""


def cli_entry(fn):
  """Wraps a CLI `main`: user errors become one line on stderr and exit status 2."""

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  return wrapper
