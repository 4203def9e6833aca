"""What a sweep arm is: its objective / weight label, format, depth, seed and target set, and its name."""

from __future__ import annotations

import dataclasses

NAMED_WEIGHTS = {0.0: "sft", 0.7: "dual", 1.0: "classifier"}


# Keys that never change an arm's results, left out of its hash. Each is one that train also accepts on resume
# (train.RESUMABLE_KEYS), so a partly trained arm continues under a changed value instead of being refused.
# eval.mechanism: adds a results.json section (read only by sweep.md's mechanism contrast, which lists the seeds that
# lack it); listed so that arms recorded before the section existed keep their hashes.
NON_RESULT_KEYS = ("resume", "overwrite", "distributed", "train.log_every", "train.table_steps", "eval.batch_size", "eval.mechanism")


@dataclasses.dataclass(frozen=True)
class Arm:
  arm: str  # base | sft | dual | classifier | w<value>, + "@<target set>" for a set other than operation
  weight: float | None  # None for base
  fmt: str
  layer_fraction: float | None  # None: depth-independent (base, w = 0), read at every depth
  seed: int
  target_set: str = "operation"

  @property
  def name(self) -> str:
    depth = "" if self.layer_fraction is None else f"-f{self.layer_fraction:g}"
    return f"{self.arm}-{self.fmt}{depth}-s{self.seed}"


def arm_label(weight: float | None, target_set: str = "operation") -> str:
  label = "base" if weight is None else NAMED_WEIGHTS.get(round(weight, 6), f"w{weight:g}")
  return label if target_set == "operation" else f"{label}@{target_set}"


def grpo_label(arm: str, target_set: str = "operation") -> str:
  return arm if target_set == "operation" else f"{arm}@{target_set}"


def plain_arm(arm: str) -> str:
  """The arm's weight label without its target set ("dual@arbitrary" -> "dual")."""
  return arm.split("@")[0]


def target_suffix(arm: str) -> str:
  return arm[arm.index("@") :] if "@" in arm else ""
