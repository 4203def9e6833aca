"""The lens command: `python -m lazarus_jax.lens --model M --prompts "p1|p2" [--targets ...] [--json F] [--png F]`.

Flags are absl flags parsed by cli/common.run_cli, as for train / evaluate / sweep: one error path, one line per
error, exit status 2. The lens itself is lazarus_jax.analysis.lens.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from types import SimpleNamespace

import jax
from absl import flags

from lazarus_jax.analysis import lens
from lazarus_jax.cli.common import run_cli
from lazarus_jax.data.targets import DEFAULT_TARGETS, parse_targets, resolve_targets
from lazarus_jax.errors import UserError
from lazarus_jax.files import write_json

# name, default, help; absl flags keep their dashed names (--top-k) as the argparse tool had them.
_STRINGS = (
  ("model", None, "tiny-random, smollm2-135m, an HF checkpoint dir or a .gguf (required)"),
  ("adapter", None, "a trained adapter directory to apply"),
  ("prompts", None, '"p1|p2|..." or @file (one prompt per line) (required)'),
  ("targets", ",".join(DEFAULT_TARGETS), "label[=word],..."),
  ("json", None, "write the results here"),
  ("png", None, "write a layer x target heatmap per prompt here"),
  (
    "positions-png",
    None,
    "write a layer x position lens figure (top token, its probability at every row and prompt position; the first "
    "4 prompts) here; --json then also holds the grids",
  ),
)
_INTEGERS = (("top-k", 5, "top tokens per row"), ("batch-size", 16, "prompts per lens call"))


def define_flags() -> None:
  """The lens flags, once per process (an in-process caller may run the command several times)."""
  for name, default, help_text in _STRINGS:
    if name not in flags.FLAGS:
      flags.DEFINE_string(name, default, help_text)
  for name, default, help_text in _INTEGERS:
    if name not in flags.FLAGS:
      flags.DEFINE_integer(name, default, help_text)


def parsed_args() -> SimpleNamespace:
  names = [n for n, _, _ in _STRINGS + _INTEGERS]
  return SimpleNamespace(**{n.replace("-", "_"): flags.FLAGS[n].value for n in names})


def read_prompts(spec: str) -> list[str]:
  """`p1|p2|...`, or `@file` with one prompt per line (blank lines skipped, other whitespace kept)."""
  if spec.startswith("@"):
    path = spec[1:]
    if not os.path.isfile(path):
      raise UserError(f"prompts file {path} does not exist")
    from lazarus_jax.files import read_text

    prompts = [line.rstrip("\r") for line in read_text(path, "prompts file").split("\n")]
    prompts = [p for p in prompts if p.strip()]
    where = f"prompts file {path}"
  else:
    prompts = spec.split("|")
    if any(not p.strip() for p in prompts):
      raise UserError(f"--prompts {spec!r} has an empty prompt: separate prompts with single '|'")
    where = "--prompts"
  if not prompts:
    raise UserError(f"no prompts in {where}")
  return prompts


def _check_output(path: str | None, flag: str) -> None:
  if path is None:
    return
  directory = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(directory):
    raise UserError(f"{flag} {path}: directory {directory} does not exist")
  if os.path.isdir(path):
    raise UserError(f"{flag} {path} is a directory: give a file name")
  from lazarus_jax.files import check_output_dir

  check_output_dir(directory, flag)  # writable, before any work


def main(argv) -> int:
  args = parsed_args()
  if len(argv) > 1:
    raise UserError(f"unexpected argument {argv[1]!r}: every option is a --flag (see --help)")
  for name in ("model", "prompts"):
    if not getattr(args, name):
      raise UserError(f"--{name} is required (see --help)")
  # Validate everything cheap before loading anything, and write nothing until the end.
  prompts = read_prompts(args.prompts)
  target_spec = parse_targets(args.targets)
  _check_output(args.json, "--json")
  _check_output(args.png, "--png")
  _check_output(args.positions_png, "--positions-png")
  if args.top_k < 1:
    raise UserError(f"--top-k must be >= 1, got {args.top_k}")
  if args.batch_size < 1:
    raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
  if (args.png or args.positions_png) and importlib.util.find_spec("matplotlib") is None:
    raise UserError("--png and --positions-png need matplotlib: pip install matplotlib")
  if args.adapter and not os.path.isdir(args.adapter):
    raise UserError(f"adapter directory {args.adapter} does not exist")

  from lazarus_jax.models import adapters
  from lazarus_jax.models.loading import load_pretrained

  t0 = time.perf_counter()
  pretrained = load_pretrained(args.model)
  model = pretrained.build()
  adapter_info = adapters.load_adapter(model, args.adapter) if args.adapter else None  # its LoRA config
  tok = pretrained.tokenizer
  print(
    f"model {pretrained.source}: {model.cfg.num_layers} blocks, {model.cfg.num_layers + 1} lens rows, "
    f"vocab {model.cfg.vocab_size} (loaded in {time.perf_counter() - t0:.1f}s)"
  )
  if adapter_info is not None:
    print(f"adapter {args.adapter}: {adapter_info}")
  # A tool, not training: targets in the prompt are allowed, but said.
  targets = resolve_targets(tok, target_spec, prompts, allow_target_in_prompt=True)
  print(targets.describe())

  timings: dict = {}
  results = lens.run_lens(model, tok, prompts, targets, top_k=args.top_k, batch_size=args.batch_size, timings=timings)
  print(
    f"lens: {timings['n_prompts']} prompts x {model.cfg.num_layers + 1} rows, compile {timings['compile_s']:.2f}s, "
    f"run {timings['run_s']:.3f}s (batch {timings['batch_size']}, seq_len {timings['seq_len']}, "
    f"{jax.devices()[0].platform})"
  )
  for res in results:
    print()
    print(lens.format_table(res, targets.labels))

  grids = [lens.position_lens(model, tok, p) for p in prompts[:4]] if args.positions_png else None
  if args.json:
    doc = {
      "model": pretrained.source,
      "adapter": args.adapter,
      "n_layers": model.cfg.num_layers,
      "layer_convention": lens.LAYER_CONVENTION,
      "top_k": args.top_k,
      **targets.as_dict(),
      "timing": {k: timings[k] for k in ("compile_s", "run_s")},
      "prompts": results,
    }
    if grids is not None:
      doc["positions"] = grids

    write_json(args.json, doc)
    print(f"\nwrote {args.json}")
  if args.png:
    lens.save_png(results, targets.labels, args.png)
    print(f"wrote {args.png}")
  if grids is not None:
    lens.save_position_png(grids, args.positions_png)
    print(f"wrote {args.positions_png}")
  return 0


def run(argv: list[str]) -> None:
  """The command with these arguments (no program name), as `python -m lazarus_jax.lens` runs it; exits."""
  define_flags()
  flags.FLAGS.unparse_flags()  # a second in-process run starts from the defaults
  sys.argv = ["python -m lazarus_jax.lens", *argv]
  run_cli(main, with_config=False)
