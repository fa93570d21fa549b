"""Target names: what a user may write after --target, and which LLVM CPU each stands for (no TVM needed)."""

from kiln.targets.names import TargetName, parse, parse_all

__all__ = ["TargetName", "parse", "parse_all"]
