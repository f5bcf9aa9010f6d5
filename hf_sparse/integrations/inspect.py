"""``hf-sparse inspect DIR``: what a saved sparse checkpoint holds, per layer, read from its files only."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import FormatError, quote

__all__ = ["inspect_checkpoint", "format_inspection"]

_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _tensor_headers(folder: Path) -> dict[str, tuple[list[int], str]]:
    """Shape and dtype of every tensor in the folder's safetensors files, from their headers (nothing is loaded),
    each header checked and bounded as ``from_pretrained`` checks it."""
    from .safetensors_header import read_safetensors_header

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FormatError(f"{quote(str(folder))}: no .safetensors file; is this a saved model folder?")
    out = {}
    for file in files:
        for key, head in read_safetensors_header(file).items():
            out[key] = (list(head.shape), head.dtype)
    return out


def inspect_checkpoint(path: str | Path) -> dict:
    """Per sparse layer: format, shape, stored fraction, bytes; plus totals and the file size.

    Raises:
        FormatError: no config.json / safetensors, or no ``hf_sparse`` quantization_config.
    """
    folder = Path(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FormatError(f"{quote(str(folder))}: no config.json; is this a saved model folder?")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{quote(str(config_file))} is not valid JSON ({quote(str(exc)[:200])}).") from None
    qconfig = config.get("quantization_config") if isinstance(config, dict) else None
    if not isinstance(qconfig, dict) or qconfig.get("quant_method") != "hf_sparse":
        raise FormatError(
            f"{quote(str(folder))}: config.json has no hf_sparse quantization_config (not a sparse checkpoint)."
        )
    from ..nn.description import HfSparseConfig

    # The same checks as from_pretrained: a malformed description is a FormatError naming the key.
    HfSparseConfig(
        modules=qconfig.get("modules"),
        schema_version=qconfig.get("schema_version"),
        structure=qconfig.get("structure"),
    )
    headers = _tensor_headers(folder)
    layers = []
    for name, spec in sorted(qconfig.get("modules", {}).items()):
        params = spec.get("params", {})
        rows, cols = params.get("shape", [0, 0])
        stored_bytes, stored = 0, 0
        for tname in spec.get("tensors", {}):
            key = f"{name}.weight_{tname}"
            if key not in headers:
                raise FormatError(
                    f"{quote(str(folder))}: tensor {quote(key)} described in config.json is missing from the weights."
                )
            shape, dtype = headers[key]
            count = 1
            for d in shape:
                count *= d
            stored_bytes += count * _BYTES.get(dtype, 4)
            if tname in ("values", "dense_values"):
                # packed 4- and 2-bit codes hold 8 / bits weights per byte
                stored += count * (8 // params["bits"] if params.get("bits") in (2, 4) else 1)
        dense_bytes = rows * cols * 4
        layers.append(
            {
                "name": name,
                "format": params.get("format"),
                "bits": params.get("bits", 8 if params.get("format") in ("qcsr", "qbsr", "qnm") else None),
                "shape": [rows, cols],
                "stored_fraction": stored / max(rows * cols, 1),
                "bytes": stored_bytes,
                "dense_fp32_bytes": dense_bytes,
            }
        )
    file_bytes = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    sparse_bytes = sum(layer["bytes"] for layer in layers)
    dense_bytes = sum(layer["dense_fp32_bytes"] for layer in layers)
    return {
        "path": str(folder),
        "schema_version": qconfig.get("schema_version"),
        "layers": layers,
        "totals": {
            "sparse_layers": len(layers),
            "sparse_layer_bytes": sparse_bytes,
            "same_layers_dense_fp32_bytes": dense_bytes,
            "ratio": sparse_bytes / max(dense_bytes, 1),
            "checkpoint_bytes": file_bytes,
        },
    }


def format_inspection(report: dict) -> str:
    """A plain-text table of :func:`inspect_checkpoint`'s report."""
    lines = [f"{'layer':<60} {'format':<8} {'shape':>11} {'stored':>7} {'bytes':>11}"]
    for layer in report["layers"]:
        shape = "x".join(map(str, layer["shape"]))
        lines.append(
            f"{layer['name']:<60} {layer['format']:<8} {shape:>11} {layer['stored_fraction']:>7.1%} "
            f"{layer['bytes']:>11,}"
        )
    t = report["totals"]
    lines.append(
        f"{t['sparse_layers']} sparse layers: {t['sparse_layer_bytes']:,} bytes, {t['ratio']:.1%} of the same layers "
        f"dense in fp32 ({t['same_layers_dense_fp32_bytes']:,}); checkpoint files {t['checkpoint_bytes']:,} bytes"
    )
    return "\n".join(lines)
