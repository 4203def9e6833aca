"""The package's layers (README "Layout"): every import inside lazarus_jax points down the list, none up."""

import ast
import pathlib

import repo

# Lowest first. A module may import its own layer and the ones before it.
LAYERS = [
  ("base", {"errors", "files", "workdir", "provenance"}),
  ("models", {"models"}),
  ("data", {"data"}),
  ("config", {"config", "configs", "settings", "experiment"}),
  ("training", {"training"}),
  ("analysis", {"analysis"}),
  ("reporting", {"reporting"}),
  ("cli", {"cli"}),
  ("entry points and the API", {"train", "evaluate", "sweep", "lens", "preflight", "export", "api", "__init__"}),
]
PACKAGE = pathlib.Path(repo.ROOT) / "lazarus_jax"


def layer_of(dotted: str) -> int:
  parts = dotted.split(".")
  top = parts[1] if len(parts) > 1 else "__init__"
  for i, (_, names) in enumerate(LAYERS):
    if top in names:
      return i
  raise AssertionError(f"{dotted} is in no layer: add it to tests/test_layout.py and the README's Layout")


def imports_of(path: pathlib.Path):
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lazarus_jax":
      for alias in node.names:
        yield node.lineno, (f"lazarus_jax.{alias.name}" if node.module == "lazarus_jax" else node.module)
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.split(".")[0] == "lazarus_jax":
          yield node.lineno, alias.name


def module_name(path: pathlib.Path) -> str:
  return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def test_every_import_points_down_the_layers():
  upward = []
  for path in sorted(PACKAGE.rglob("*.py")):
    me = layer_of(module_name(path))
    for line, target in imports_of(path):
      if layer_of(target) > me:
        upward.append(
          f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} ({LAYERS[layer_of(target)][0]} is above {LAYERS[me][0]})"
        )
  assert not upward, "\n".join(upward)


def test_the_command_line_tools_keep_their_module_names():
  for tool in ("train", "evaluate", "sweep", "lens", "preflight", "export"):
    assert (PACKAGE / f"{tool}.py").is_file(), tool
