"""Plain descriptions of model inputs/outputs, shared by the SDK, the tasks and the runtime."""

from __future__ import annotations

from pydantic import BaseModel


class TensorSpec(BaseModel):
    """A named tensor with a concrete shape and a numpy dtype name."""

    name: str
    dtype: str
    shape: list[int]


class IndexGuard(BaseModel):
    """Valid value range [low, high) for an integer input that indexes a Gather.

    Out-of-range Gather indices segfault TVM-compiled code (FACTS.md), so every value is checked first.
    """

    input: str
    low: int
    high: int
    node: str
