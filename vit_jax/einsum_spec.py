"""What each index of a two-operand einsum spec (`"bqhd,bkhd->bhqk"`) does, parsed once for every product that
takes such a spec (vit_jax's products, oneDNN's, their derivatives and `remat` policies)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class EinsumSpec:
    a: str
    b: str
    out: str

    @classmethod
    def parse(cls, spec: str) -> EinsumSpec:
        operands, out = spec.replace(" ", "").split("->")
        a, b = operands.split(",")
        return cls(a, b, out)

    @property
    def batch(self) -> list[str]:
        """In both operands and the result."""
        return [i for i in self.out if i in self.a and i in self.b]

    @property
    def contracted(self) -> list[str]:
        """In both operands, summed away."""
        return [i for i in self.a if i in self.b and i not in self.out]

    def dimension_numbers(self) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], tuple[tuple[int, ...], ...]]:
        """`lax.dot_general`'s (contracting, batch) dimension numbers of the same product."""
        axes = lambda indices: (tuple(map(self.a.index, indices)), tuple(map(self.b.index, indices)))
        return axes(self.contracted), axes(self.batch)
