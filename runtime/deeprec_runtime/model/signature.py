"""Signatures of a SavedModel, and matching request names against them.

A request names inputs and outputs either by signature alias ("input1") or by tensor name
("input1:0"); both forms are in DeepRec's docs, so both are accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from deeprec_runtime.codec import wire_dtype_name, wire_dtype_of_tf
from deeprec_runtime.errors import InvalidArgument


@dataclass(frozen=True)
class TensorSpec:
    alias: str
    name: str
    """Graph tensor name, e.g. "input1:0"."""
    dtype: tf.DType
    wire_dtype: int
    shape: tuple[int, ...] | None
    """Dimensions with -1 for unknown ones; None for unknown rank."""

    def check(self, array_dtype_code: int, shape: tuple[int, ...], key: str) -> None:
        if array_dtype_code != self.wire_dtype:
            raise InvalidArgument(
                f"input '{key}' has dtype {wire_dtype_name(array_dtype_code)} but the signature "
                f"expects {wire_dtype_name(self.wire_dtype)}")
        if self.shape is None:
            return
        if len(shape) != len(self.shape) or any(
                want not in (-1, got) for want, got in zip(self.shape, shape, strict=True)):
            raise InvalidArgument(
                f"input '{key}' has shape {list(shape)} but the signature expects "
                f"{[d if d >= 0 else None for d in self.shape]}")


@dataclass(frozen=True)
class Signature:
    name: str
    method_name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_inputs_by_any", _index(self.inputs))
        object.__setattr__(self, "_outputs_by_any", _index(self.outputs))

    def input(self, key: str) -> TensorSpec:
        spec = self._inputs_by_any.get(key)  # type: ignore[attr-defined]
        if spec is None:
            raise InvalidArgument(
                f"unknown input '{key}' for signature '{self.name}'; inputs are "
                + ", ".join(f"{a} ({s.name})" for a, s in sorted(self.inputs.items())))
        return spec

    def output(self, key: str) -> TensorSpec:
        spec = self._outputs_by_any.get(key)  # type: ignore[attr-defined]
        if spec is None:
            raise InvalidArgument(
                f"unknown output '{key}' in output_filter for signature '{self.name}'; outputs are "
                + ", ".join(f"{a} ({s.name})" for a, s in sorted(self.outputs.items())))
        return spec


def _index(specs: dict[str, TensorSpec]) -> dict[str, TensorSpec]:
    by_any = {s.name: s for s in specs.values()}
    by_any.update(specs)  # an alias wins over a tensor name that happens to equal it
    return by_any


def _spec(alias: str, info) -> TensorSpec:
    dtype = tf.dtypes.as_dtype(info.dtype)
    shape = None if info.tensor_shape.unknown_rank else tuple(d.size for d in info.tensor_shape.dim)
    return TensorSpec(alias, info.name, dtype, wire_dtype_of_tf(dtype), shape)


def parse_signatures(meta_graph_def) -> dict[str, Signature]:
    """Signatures of a MetaGraphDef whose tensors are all named (sparse/ragged ones are skipped)."""
    out = {}
    for key, sig in meta_graph_def.signature_def.items():
        if any(not i.name for i in list(sig.inputs.values()) + list(sig.outputs.values())):
            continue
        out[key] = Signature(
            name=key, method_name=sig.method_name,
            inputs={a: _spec(a, i) for a, i in sig.inputs.items()},
            outputs={a: _spec(a, i) for a, i in sig.outputs.items()})
    return out
