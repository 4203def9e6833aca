"""Command-line plumbing shared by train and evaluate: `--config <file> [--config.key=value]`, `--workdir`.

Configs are locked, so a mistyped key fails at parse time. Every user error (bad flag, bad value, missing
file) ends as one line on stderr and exit status 2, before any work and without touching outputs.
"""

from __future__ import annotations

import os
import re
import sys

from lazarus_jax.errors import UserError, os_error_line, print_error, tidy_stderr, unicode_error_line

CONFIG_FLAGS_HELP = """flags:
  --config FILE              a config file, e.g. configs/smollm2_135m.py (see lazarus_jax/config.py for every key)
  --config.<key>=<value>     override one config value, e.g. --config.train.steps=200 --config.classifier.weight=0
  --workdir DIR              output directory (default: runs/<timestamp>)"""


def workdir_main(run, what: str):
  """A `main(argv)` that calls `run(config, workdir)` and requires --workdir (evaluate, sweep)."""

  def main(argv):
    from absl import flags

    if not flags.FLAGS.workdir:
      raise UserError(f"--workdir is required: {what}")
    run(flags.FLAGS.config, flags.FLAGS.workdir)
    return 0

  return main


def run_cli(main, with_config: bool = True) -> None:
  from absl import flags
  from ml_collections import config_flags

  tidy_stderr()
  if with_config:
    config_flags.DEFINE_config_file("config", None, "a config file, e.g. configs/smollm2_135m.py", lock_config=True)
    flags.DEFINE_string("workdir", None, "output directory (default: runs/<timestamp>)")
  if any(a in ("-h", "--help", "--helpfull") for a in sys.argv[1:]):
    try:
      print((sys.modules["__main__"].__doc__ or "").strip() + "\n")
      print(flags.FLAGS.module_help(main.__module__) if not with_config else CONFIG_FLAGS_HELP, flush=True)
    except BrokenPipeError:  # `--help | head`: the reader has what it wanted
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)
  if with_config:
    sys.argv = shipped_config_argv(sys.argv)
  try:
    argv = flags.FLAGS(sys.argv)
  except Exception as e:  # absl's flag errors, a bad --config.<key> or value, a config file that fails to load
    if with_config and "Failed loading config file" in str(e) or "earlier failure to load" in str(e):
      _fail(config_file_error_line(_config_arg(sys.argv), e))
    _fail(flag_error_line(e, sys.argv))
  if with_config:
    if flags.FLAGS.config is None:
      _fail("--config is required, e.g. --config configs/smollm2_135m.py")
    try:  # the config file loads lazily: force it here so a bad file is one line, not a traceback
      flags.FLAGS.config.to_dict()
    except Exception as e:
      _fail(config_file_error_line(config_flags.get_config_filename(flags.FLAGS["config"]), e))
  try:
    sys.exit(main(argv) or 0)
  except UserError as e:
    _fail(str(e))
  except KeyboardInterrupt:  # Ctrl-C outside the training loop (which checkpoints first): no traceback
    print_error("interrupted")
    sys.exit(130)
  except OSError as e:  # the disk or the path, not the program (the checks before any work catch most)
    _fail(os_error_line(e, flags.FLAGS.workdir if with_config else None, resumable=with_config))
  except UnicodeError as e:
    _fail(unicode_error_line(e))


def _fail(line: str) -> None:
  print_error(line)  # always one line
  sys.exit(2)


def flag_error_line(e: Exception, argv) -> str:
  """One line for a flag error; an unknown `--config.<key>` is named in full with ml_collections' suggestion."""
  text = str(e).replace("\\n", "\n").replace("\\'", "'")
  key = getattr(e, "flagname", None) or ""
  key = key[len("config.") :] if key.startswith("config.") else ""
  if not key and ("Did you mean" in text or isinstance(e, (KeyError, AttributeError))):
    # ml_collections names only the unknown field: find the override that holds it
    m = re.search(r"'(\w+)'", text)
    hits = [a[len("--config.") :].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    hits = [h for h in hits if m and m.group(1) in h.split(".")]
    key = hits[0] if hits else ""
  if key:
    hint = ""
    m = re.search(r'Did you mean "(\w+)" instead of "(\w+)"', text)
    if m and m.group(2) in key.split("."):
      parts = key.split(".")
      parts[parts.index(m.group(2))] = m.group(1)
      hint = f" (did you mean {'.'.join(parts)}?)"
    return f"unknown config key {key}{hint}: the keys are documented in lazarus_jax/config.py"
  if isinstance(e, SyntaxError):  # raised while loading the config file
    return f"config file {e.filename} could not be loaded ({e.msg}, line {e.lineno}): fix the file"
  first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
  if len(first) > 1 and first[0] == first[-1] and first[0] in "'\"":  # a KeyError's repr
    first = first[1:-1]
  return first


def shipped_config_argv(argv: list[str]) -> list[str]:
  """argv with `--config X` pointing at the shipped config named X when X is no file here (an installed package
  run from any directory). A config_flags argument after ':' is kept."""
  from lazarus_jax import configs

  out = list(argv)
  for i, a in enumerate(out):
    if a in ("--config", "-config") and i + 1 < len(out):
      j, value, prefix = i + 1, out[i + 1], ""
    elif a.startswith("--config="):
      j, value, prefix = i, a.split("=", 1)[1], "--config="
    else:
      continue
    path, sep, arg = value.partition(":")
    out[j] = prefix + configs.resolve(path) + sep + arg
  return out


def _config_arg(argv) -> str | None:
  for i, a in enumerate(argv):
    if a in ("--config", "-config") and i + 1 < len(argv):
      return argv[i + 1]
    if a.startswith("--config="):
      return a.split("=", 1)[1]
  return None


def config_file_error_line(path: str | None, e: Exception) -> str:
  if path and not os.path.exists(path):
    from lazarus_jax import configs

    return (
      f"config file {path} does not exist: pass a file or a shipped config ({', '.join(configs.names())}), e.g. --config smollm2_135m"
    )
  reason = [line.strip() for line in str(e).splitlines() if line.strip()]
  return f"config file {path} could not be loaded ({reason[-1] if reason else type(e).__name__}): fix the file"
