"""Quantised sparse weights (``qcsr``, ``qbsr``, ``qnm``): CSR, BSR and N:M whose values are symmetric int8 codes
with one scale per row. See :mod:`hf_sparse.formats.quantized` for the family."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..errors import FormatError, quote
from .base import (
    SparseFormat,
    check_indices,
    check_pointers,
    check_shape,
    check_tensor,
    check_weight,
    index_dtype,
    register_format,
    segment_pointers,
)
from .bsr import BSR
from .nm import NM
from .quantized import InputQuant, check_codes, check_scales
from .schemes import qparams_from_range, quantize

__all__ = ["QCSR", "QBSR", "QNM"]


@register_format("qcsr")
class QCSR(InputQuant, SparseFormat):
    """CSR with symmetric int8 codes and one scale per row: ``W[r, c] = values[p] * scales[r]``.

    Shapes:
        crow_indices: (rows + 1,) int32. col_indices: (nnz,) int16/int32. values: (nnz,) int8 in [-127, 127].
        scales: (rows,) float.
    """

    float_tensors: ClassVar[tuple[str, ...]] = ("scales", "input_scale")

    def __init__(
        self,
        crow_indices,
        col_indices,
        values,
        scales,
        shape,
        *,
        activation: str | None = None,
        input_scale=None,
        input_zero_point=None,
        validate: bool = True,
    ):
        self.shape = check_shape(shape)
        self.crow_indices, self.col_indices, self.values, self.scales = crow_indices, col_indices, values, scales
        self._set_input(activation, input_scale, input_zero_point)
        if validate:
            self.validate()

    @classmethod
    def from_dense(
        cls, weight, mask=None, *, scales: torch.Tensor | None = None, activation: str | None = None, **params: Any
    ):
        """Quantise the stored positions (``mask``, or the non-zeros) to int8 with one symmetric scale per row
        (``scales``, e.g. learned by QAT, or each row's largest magnitude / 127)."""
        if params:
            raise FormatError(f"qcsr takes only `scales` and `activation`, got {sorted(params)}.")
        _check_activation("qcsr", activation)
        keep = check_weight(weight, mask)
        rows, cols = weight.shape
        w = (weight * keep).detach().float()
        if scales is None:
            s, _ = qparams_from_range(w.amin(1), w.amax(1), 8, True)
        else:
            s = scales.detach().float().reshape(-1)
            if s.numel() != rows:
                raise FormatError(f"qcsr: one scale per row: got {s.numel()} scales for {rows} rows.")
        r, c = torch.nonzero(keep, as_tuple=True)
        codes = quantize(w[r, c].unsqueeze(1), s[r].unsqueeze(1), torch.zeros(1, 1), -127, 127).reshape(-1)
        return cls(
            segment_pointers(keep.sum(1)),
            c.to(index_dtype(cols)),
            codes.contiguous(),
            s.to(weight.dtype).contiguous(),
            (rows, cols),
            activation=activation,
            validate=False,
        )

    def to_dense(self) -> torch.Tensor:
        counts = torch.diff(self.crow_indices.to(torch.int64))
        rows = torch.repeat_interleave(torch.arange(self.shape[0], device=counts.device), counts)
        out = torch.zeros(self.shape, dtype=self.scales.dtype, device=self.scales.device)
        out[rows, self.col_indices.to(torch.int64)] = self.values.to(self.scales.dtype) * self.scales[rows]
        return out

    @property
    def dtype(self) -> torch.dtype:
        return self.scales.dtype

    def tensors(self):
        out = {
            "crow_indices": self.crow_indices,
            "col_indices": self.col_indices,
            "values": self.values,
            "scales": self.scales,
        }
        return {**out, **self._input_tensors()}

    def params(self):
        return {"format": self.name, "shape": list(self.shape), **self._input_params()}

    @classmethod
    def _from_tensors(cls, tensors, params, validate):
        extra = sorted(set(params) - {"format", "shape", "activation"})
        if extra:
            raise FormatError(f"qcsr: unknown parameters {extra}.")
        return cls(
            tensors["crow_indices"],
            tensors["col_indices"],
            tensors["values"],
            tensors["scales"],
            params["shape"],
            activation=params.get("activation"),
            input_scale=tensors.get("input_scale"),
            input_zero_point=tensors.get("input_zero_point"),
            validate=validate,
        )

    def validate(self) -> None:
        self._validate_input()
        rows, cols = self.shape
        check_tensor(self.name, "values", self.values, dtypes=(torch.int8,))
        nnz = self.values.numel()
        check_pointers(self.name, "crow_indices", self.crow_indices, rows, nnz)
        check_indices(self.name, "col_indices", self.col_indices, cols, self.crow_indices)
        if self.col_indices.numel() != nnz:
            raise FormatError(f"qcsr: col_indices has {self.col_indices.numel()} entries, values {nnz}.")
        check_scales(self.name, self.scales, (rows,))
        check_codes(self.name, "values", self.values, 8, symmetric=True)


def _check_activation(fmt: str, activation: str | None) -> None:
    """``from_dense`` records ``None`` (weight-only) or ``"dynamic"`` input quantisation; static ranges come from
    calibration or QAT, which store them with the weight."""
    if activation not in (None, "dynamic"):
        raise FormatError(
            f"{fmt}.from_dense: activation must be None or 'dynamic', got {quote(activation)} (static input ranges "
            "come from QAT or calibration: QuantizationConfig(activation='static'))."
        )


def _row_codes(fmt: str, weight, mask, scales) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(keep-mask, float codes (rows, cols) in [-127, 127] with zeros outside the mask, per-row scales)."""
    keep = check_weight(weight, mask)
    rows = weight.shape[0]
    w = (weight * keep).detach().float()
    if scales is None:
        s, _ = qparams_from_range(w.amin(1), w.amax(1), 8, True)
    else:
        s = scales.detach().float().reshape(-1)
        if s.numel() != rows:
            raise FormatError(f"{fmt}: one scale per row: got {s.numel()} scales for {rows} rows.")
    codes = quantize(w, s.unsqueeze(1), torch.zeros(1, 1), -127, 127).float() * keep
    return keep, codes, s


def _float_twin(fmt: str, build):
    """Run ``build`` (which makes the float format with the same structure) and re-label its errors as ``fmt``'s."""
    try:
        return build()
    except FormatError as exc:
        msg, prefix = str(exc), f"{fmt[1:]}: "
        raise FormatError(f"{fmt}: {msg.removeprefix(prefix)}") from None


@register_format("qbsr")
class QBSR(InputQuant, SparseFormat):
    """BSR with symmetric int8 codes and one scale per row: ``W[r, c] = code(r, c) * scales[r]``, stored in dense
    ``r x c`` blocks (zeros included) wherever a block keeps any position.

    Shapes:
        crow_indices: (rows / r + 1,) int32. col_indices: (blocks,) block columns. values: (blocks, r, c) int8 in
        [-127, 127]. scales: (rows,) float.
    """

    float_tensors: ClassVar[tuple[str, ...]] = ("scales", "input_scale")

    def __init__(
        self,
        crow_indices,
        col_indices,
        values,
        scales,
        shape,
        block,
        *,
        activation: str | None = None,
        input_scale=None,
        input_zero_point=None,
        validate: bool = True,
    ):
        self.shape = check_shape(shape)
        self.block = tuple(block) if isinstance(block, (list, tuple)) else block
        self.crow_indices, self.col_indices, self.values, self.scales = crow_indices, col_indices, values, scales
        self._set_input(activation, input_scale, input_zero_point)
        if validate:
            self.validate()

    @classmethod
    def from_dense(
        cls,
        weight,
        mask=None,
        *,
        block=(16, 16),
        scales: torch.Tensor | None = None,
        activation: str | None = None,
        **params: Any,
    ):
        """Quantise the stored blocks to int8 with one symmetric scale per row (``scales``, e.g. learned by QAT, or
        each row's largest kept magnitude / 127). ``activation="dynamic"`` records per-token 8-bit input
        quantisation: with blocks ``r x c``, ``c`` a multiple of 4 (``block=(1, 4)``), layers then run on integer
        dot products (:func:`~hf_sparse.ops.dynamic_int8_linear`)."""
        if params:
            raise FormatError(f"qbsr takes only `block`, `scales` and `activation`, got {sorted(params)}.")
        _check_activation("qbsr", activation)
        keep, codes, s = _row_codes("qbsr", weight, mask, scales)
        twin = _float_twin("qbsr", lambda: BSR.from_dense(codes, keep, block=block))
        return cls(
            twin.crow_indices,
            twin.col_indices,
            twin.values.to(torch.int8),
            s.to(weight.dtype).contiguous(),
            twin.shape,
            twin.block,
            activation=activation,
            validate=False,
        )

    def _twin(self) -> BSR:
        values = self.values.to(self.scales.dtype)
        return BSR(self.crow_indices, self.col_indices, values, self.shape, self.block, validate=False)

    def to_dense(self) -> torch.Tensor:
        return self._twin().to_dense() * self.scales.unsqueeze(1)

    @property
    def dtype(self) -> torch.dtype:
        return self.scales.dtype

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    def tensors(self):
        out = {
            "crow_indices": self.crow_indices,
            "col_indices": self.col_indices,
            "values": self.values,
            "scales": self.scales,
        }
        return {**out, **self._input_tensors()}

    def params(self):
        return {"format": self.name, "shape": list(self.shape), "block": list(self.block), **self._input_params()}

    @classmethod
    def _from_tensors(cls, tensors, params, validate):
        extra = sorted(set(params) - {"format", "shape", "block", "activation"})
        if extra:
            raise FormatError(f"qbsr: unknown parameters {extra}.")
        return cls(
            tensors["crow_indices"],
            tensors["col_indices"],
            tensors["values"],
            tensors["scales"],
            params["shape"],
            params["block"],
            activation=params.get("activation"),
            input_scale=tensors.get("input_scale"),
            input_zero_point=tensors.get("input_zero_point"),
            validate=validate,
        )

    def validate(self) -> None:
        self._validate_input()
        check_tensor(self.name, "values", self.values, dtypes=(torch.int8,), ndim=3)
        check_scales(self.name, self.scales, (self.shape[0],))
        _float_twin("qbsr", lambda: self._twin().validate())
        check_codes(self.name, "values", self.values, 8, symmetric=True)


@register_format("qnm")
class QNM(InputQuant, SparseFormat):
    """N:M with symmetric int8 codes and one scale per row: per row and group of ``m`` columns, ``n`` slots hold a
    code and its int8 position in the group (sorted; spare slots hold zeros at unused positions).

    Shapes:
        values: (rows, cols / m * n) int8 in [-127, 127]. indices: (rows, cols / m * n) int8 in [0, m).
        scales: (rows,) float.
    """

    float_tensors: ClassVar[tuple[str, ...]] = ("scales", "input_scale")

    def __init__(
        self,
        values,
        indices,
        scales,
        shape,
        n,
        m,
        *,
        activation: str | None = None,
        input_scale=None,
        input_zero_point=None,
        validate: bool = True,
    ):
        self.shape = check_shape(shape)
        self.n, self.m = n, m
        self.values, self.indices, self.scales = values, indices, scales
        self._set_input(activation, input_scale, input_zero_point)
        if validate:
            self.validate()

    @classmethod
    def from_dense(
        cls,
        weight,
        mask=None,
        *,
        n: int = 2,
        m: int = 4,
        scales: torch.Tensor | None = None,
        activation: str | None = None,
        **params,
    ):
        """Quantise the kept positions (at most ``n`` in every ``m`` consecutive columns) to int8 with one symmetric
        scale per row."""
        if params:
            raise FormatError(f"qnm takes only `n`, `m`, `scales` and `activation`, got {sorted(params)}.")
        _check_activation("qnm", activation)
        keep, codes, s = _row_codes("qnm", weight, mask, scales)
        twin = _float_twin("qnm", lambda: NM.from_dense(codes, keep, n=n, m=m))
        return cls(
            twin.values.to(torch.int8),
            twin.indices,
            s.to(weight.dtype).contiguous(),
            twin.shape,
            twin.n,
            twin.m,
            activation=activation,
            validate=False,
        )

    def _twin(self) -> NM:
        return NM(self.values.to(self.scales.dtype), self.indices, self.shape, self.n, self.m, validate=False)

    def to_dense(self) -> torch.Tensor:
        return self._twin().to_dense() * self.scales.unsqueeze(1)

    @property
    def dtype(self) -> torch.dtype:
        return self.scales.dtype

    def tensors(self):
        return {"values": self.values, "indices": self.indices, "scales": self.scales, **self._input_tensors()}

    def params(self):
        return {"format": self.name, "shape": list(self.shape), "n": self.n, "m": self.m, **self._input_params()}

    @classmethod
    def _from_tensors(cls, tensors, params, validate):
        extra = sorted(set(params) - {"format", "shape", "n", "m", "activation"})
        if extra:
            raise FormatError(f"qnm: unknown parameters {extra}.")
        return cls(
            tensors["values"],
            tensors["indices"],
            tensors["scales"],
            params["shape"],
            params["n"],
            params["m"],
            activation=params.get("activation"),
            input_scale=tensors.get("input_scale"),
            input_zero_point=tensors.get("input_zero_point"),
            validate=validate,
        )

    def validate(self) -> None:
        self._validate_input()
        check_tensor(self.name, "values", self.values, dtypes=(torch.int8,), ndim=2, length=self.shape[0])
        check_scales(self.name, self.scales, (self.shape[0],))
        _float_twin("qnm", lambda: NM(self.values.to(self.scales.dtype), self.indices, self.shape, self.n, self.m))
        check_codes(self.name, "values", self.values, 8, symmetric=True)
