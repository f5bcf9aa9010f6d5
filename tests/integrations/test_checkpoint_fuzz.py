"""Generated checkpoint corruptions over every format hf_sparse saves: each one loads with ``from_pretrained`` and
either gives the uncorrupted model's outputs, or raises a typed ``HfSparseError`` whose message names the file,
tensor or key — never an untyped exception, a crash, a hang, a memory blow-up or a silently wrong model.

Checkpoints (tiny random-config models, saved once per test): a BERT with every Linear format (csr, csc, coo, bsr,
hybrid, nm, bitmask, lowrank, lowrank_sparse, qcsr, qbsr, qnm) and a CSR word-embedding table; BERTs with a qdense
Linear and each compressed embedding table (qdense, lowrank, hashed, qr, tt, rowmap, qrow, hot); the first one
sharded (``model.safetensors.index.json``); a Llama (tied and untied head) and a GPT-2 (tied head). Each test runs its
corpus in a subprocess whose address space may grow by at most 2 GB over what it had after the imports, with a
30-second alarm per case: a memory blow-up or a hang fails the case instead of the machine.

Outcomes, by corruption kind:

- ``typed``: an ``HfSparseError`` that names something (see ``test_malformed._names_something``);
- ``equal``: loaded, and the logits equal the uncorrupted model's bit for bit (a benign corruption: metadata,
  ``weight_map`` entries, ...; half-precision ``dtype`` edits are compared within their precision);
- ``valid, different``: only for rewrites of stored integers (indices, codes): the loaded model is another valid
  model — each sparse layer's structure checks out independently and its output equals its dense reconstruction's;
  a checksum would be needed to tell it from the saved one, and hf_sparse checkpoints carry none.

Anything else is a failure. Each test prints its counts (the numbers quoted in the security notes).
"""

from __future__ import annotations

import collections
import copy
import json
import math
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
RLIMIT_GROWTH = 2 << 30  # bytes of address space a corpus may add to what the imports took
CASE_SECONDS = 30
IDS = torch.arange(40).reshape(4, 10) % 128
FLOAT_CODES = {"F32", "F16", "BF16", "F64"}
INT_CODES = {"I8", "U8", "I16", "I32"}
#: Kinds whose loaded outcome may be another valid model (rewritten integers: indices, integer codes).
MAY_DIFFER = {"index"}


# -- the checkpoints -------------------------------------------------------------------------------------------------
def _linear_module(fmt, params, linear, g):
    from test_malformed import _keep_mask

    from hf_sparse import SparseLinear
    from hf_sparse.formats import QBSR, QCSR, QNM, LowRank, LowRankSparse, QDense, to_format
    from hf_sparse.nn.quant import QuantLinear

    w = linear.weight.detach()
    if fmt == "lowrank":
        return SparseLinear(LowRank.from_dense(w, rank=params["rank"]), linear.bias)
    if fmt == "lowrank_sparse":
        return SparseLinear(LowRankSparse.from_dense(w, rank=params["rank"], density=0.1), linear.bias)
    if fmt == "qdense":
        return QuantLinear(QDense.from_dense(w, **params), linear.bias)
    base = fmt[1:] if fmt in ("qcsr", "qbsr", "qnm") else fmt
    mask = _keep_mask(base, params, w, g)
    if fmt in ("qcsr", "qbsr", "qnm"):
        return QuantLinear({"qcsr": QCSR, "qbsr": QBSR, "qnm": QNM}[fmt].from_dense(w, mask, **params), linear.bias)
    return SparseLinear(to_format(fmt, w, mask, **params), linear.bias)


L0, L1 = "bert.encoder.layer.0.", "bert.encoder.layer.1."
EMB = "bert.embeddings.word_embeddings"
LINEAR_PLAN = {
    L0 + "attention.self.query": ("csr", {}),
    L0 + "attention.self.key": ("csc", {}),
    L0 + "attention.self.value": ("coo", {}),
    L0 + "attention.output.dense": ("bsr", {"block": [8, 8]}),
    L0 + "intermediate.dense": ("hybrid", {}),
    L0 + "output.dense": ("nm", {"n": 2, "m": 4}),
    L1 + "attention.self.query": ("bitmask", {}),
    L1 + "attention.self.key": ("lowrank", {"rank": 4}),
    L1 + "attention.self.value": ("lowrank_sparse", {"rank": 4}),
    L1 + "attention.output.dense": ("qcsr", {}),
    L1 + "intermediate.dense": ("qbsr", {"block": [8, 8]}),
    L1 + "output.dense": ("qnm", {"n": 2, "m": 4}),
}
EMBEDDING_TABLES = {
    "qdense": None,
    "lowrank": None,
    "hashed": {"method": "hashed", "compression": 0.25},
    "qr": {"method": "qr", "compression": 0.25, "op": "mult"},
    "tt": {"method": "tt", "compression": 0.25},
    "rowmap": {"method": "rowmap", "compression": 0.25},
    "qrow": {"method": "qrow", "bits": 4},
    "hot": {"method": "qrow", "bits": 2, "hot_rows": 6, "hot_bits": 4},
}


def _bert(plan, seed, table=None):
    from hf_sparse.embeddings import EmbeddingCompressionConfig, TableCompression, compress_embeddings_
    from hf_sparse.formats import QDense
    from hf_sparse.integrations import sparse_config_for
    from hf_sparse.nn import SparseEmbedding, replace_module
    from hf_sparse.nn.lowrank_embedding import LowRankEmbedding
    from hf_sparse.nn.quant import QuantEmbedding
    from hf_sparse.testing import tiny_bert_classifier

    model = tiny_bert_classifier(seed=seed)
    g = torch.Generator().manual_seed(seed)
    for name, (fmt, params) in plan.items():
        replace_module(model, name, _linear_module(fmt, params, model.get_submodule(name), g))
    words = model.get_submodule(EMB)
    if table == "csr":
        replace_module(
            model, EMB, SparseEmbedding.from_embedding(words, torch.rand(words.weight.shape, generator=g) < 0.3)
        )
    elif table == "qdense":
        weight = QDense.from_dense(words.weight.detach(), bits=4, granularity="group", group_size=8)
        replace_module(model, EMB, QuantEmbedding(weight))
    elif table == "lowrank":
        replace_module(model, EMB, LowRankEmbedding.from_embedding(words, 8))
    elif table is not None:
        spec = TableCompression(**EMBEDDING_TABLES[table])
        compress_embeddings_(model, EmbeddingCompressionConfig(tables={"word_embeddings": spec}), progress=False)
    model.config.quantization_config = sparse_config_for(model)
    return model.eval()


def _decoder(kind, seed):
    from transformers import GPT2Config, GPT2LMHeadModel

    from hf_sparse.integrations import sparse_config_for
    from hf_sparse.nn import SparseEmbedding, replace_module
    from hf_sparse.testing import tiny_causal_lm

    g = torch.Generator().manual_seed(seed)
    if kind == "gpt2":
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_positions=64, n_embd=32, n_layer=2, n_head=4)).eval()
        wpe = model.transformer.wpe
        replace_module(
            model,
            "transformer.wpe",
            SparseEmbedding.from_embedding(wpe, torch.rand(wpe.weight.shape, generator=g) < 0.3),
        )
    else:
        model = tiny_causal_lm(seed=seed, tie_word_embeddings=kind == "llama_tied")
        plan = {
            "model.layers.0.self_attn.q_proj": ("csr", {}),
            "model.layers.0.mlp.up_proj": ("nm", {"n": 2, "m": 4}),
            "model.layers.1.self_attn.o_proj": ("qcsr", {}),
            "model.layers.1.mlp.down_proj": ("lowrank", {"rank": 4}),
        }
        for name, (fmt, params) in plan.items():
            replace_module(model, name, _linear_module(fmt, params, model.get_submodule(name), g))
    model.config.quantization_config = sparse_config_for(model)
    return model.eval()


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


# -- safetensors bytes ---------------------------------------------------------------------------------------------
def _split(data: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _join(header, body: bytes, *, raw: bytes | None = None) -> bytes:
    text = raw if raw is not None else json.dumps(header, separators=(",", ":")).encode()
    return len(text).to_bytes(8, "little") + text + body


def _nested(depth: int, inner: str = '"x"') -> str:
    return "[" * depth + inner + "]" * depth


def _header_cases(rng: random.Random, data: bytes, count: int):
    """Structured header edits (each a (what, bytes) pair): every tensor entry's dtype, shape and offsets, nesting
    and size of ``__metadata__``, the length field, duplicate keys, numbers of every JSON type."""
    header, body = _split(data)
    keys = [k for k in header if k != "__metadata__"]
    n = int.from_bytes(data[:8], "little")
    fixed = [
        ("length 0", (0).to_bytes(8, "little") + data[8:]),
        ("length 7", (7).to_bytes(8, "little") + data[8:]),
        ("length 2**63", (2**63).to_bytes(8, "little") + data[8:]),
        ("length 2**40", (2**40).to_bytes(8, "little") + data[8:]),
        ("length n-1", (n - 1).to_bytes(8, "little") + data[8:]),
        ("length n+1", (n + 1).to_bytes(8, "little") + data[8:]),
        ("length = file", len(data).to_bytes(8, "little") + data[8:]),
        ("trailing byte", data + b"\0"),
        ("top-level list", _join(None, body, raw=b"[" + json.dumps(header).encode() + b"]")),
        ("not utf-8", _join(None, body, raw=json.dumps(header).encode().replace(b'"', b'"\xff', 1))),
        ("NUL in header", _join(None, body, raw=json.dumps(header).encode().replace(b"{", b"{\0", 1))),
        (
            "duplicate key",
            _join(None, body, raw=json.dumps(header).encode().replace(b"{", b'{"' + keys[0].encode() + b'":{},', 1)),
        ),
        (
            "float in offsets",
            _join(
                None, body, raw=json.dumps(header).encode().replace(b'"data_offsets":[0,', b'"data_offsets":[0.0,', 1)
            ),
        ),
        (
            "NaN literal",
            _join(
                None, body, raw=json.dumps(header).encode().replace(b'"data_offsets":[0,', b'"data_offsets":[NaN,', 1)
            ),
        ),
        (
            "negative offset",
            _join(
                None, body, raw=json.dumps(header).encode().replace(b'"data_offsets":[0,', b'"data_offsets":[-0,', 1)
            ),
        ),
        (
            "int of 5000 digits",
            _join(
                None,
                body,
                raw=json.dumps(header)
                .encode()
                .replace(b'"data_offsets":[0,', b'"data_offsets":[' + b"9" * 5000 + b",", 1),
            ),
        ),
        (
            "int of 4000 digits",
            _join(
                None,
                body,
                raw=json.dumps(header)
                .encode()
                .replace(b'"data_offsets":[0,', b'"data_offsets":[' + b"9" * 4000 + b",", 1),
            ),
        ),
    ]
    for depth in (4, 40, 900, 5_000, 100_000):
        for where in ("__metadata__", "shape", "entry"):
            h = copy.deepcopy(header)
            if where == "__metadata__":
                h.pop("__metadata__", None)
                raw = (
                    json.dumps(h)
                    .encode()
                    .replace(b"{", b'{"__metadata__":{"format":' + _nested(depth).encode() + b"},", 1)
                )
            elif where == "shape":
                raw = (
                    json.dumps(h).encode().replace(b'"shape":[', b'"shape":[' + _nested(depth, "1").encode() + b",", 1)
                )
            else:
                raw = json.dumps(h).encode().replace(b"{", b'{"nested":' + _nested(depth).encode() + b",", 1)
            fixed.append((f"nesting {depth} in {where}", _join(None, body, raw=raw)))
    for size in (10, 100_000):
        h = copy.deepcopy(header)
        h["__metadata__"] = {"format": "pt", "big": "x" * size, "k" * size: "v"}
        fixed.append((f"metadata strings of {size}", _join(h, body)))
    h = copy.deepcopy(header)
    h["__metadata__"] = {"format": "pt", "n": 5}
    fixed.append(("metadata value not a string", _join(h, body)))
    many = (
        b'{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":['
        + b"1," * 4_500_000
        + b'1],"data_offsets":[0,4]}}'
    )
    fixed.append(("a shape of 4.5 million dims", _join(None, body, raw=many)))
    yield from fixed
    edits = {
        "dtype": [
            "F16",
            "BF16",
            "F64",
            "I8",
            "U8",
            "I16",
            "I32",
            "I64",
            "BOOL",
            "F8_E4M3",
            "F32 ",
            "f32",
            "",
            None,
            5,
            ["F32"],
        ],
        "shape": [
            [2**60],
            [2**62, 2**62],
            [-1],
            [],
            [1.5],
            None,
            "x",
            [True],
            [10**30],
            [0],
            ["4"],
            [2**31, 2**31, 2**31],
        ],
        "data_offsets": ["+1", "swap", "zero", [0, 2**70], None, [0], ["0", "4"], [0, 4, 8], [-4, 0], [2**63, 2**63]],
        "key": ["extra", "missing", "renamed", "null entry", "list entry"],
    }
    produced = 0
    while produced < count - len(fixed):
        key = rng.choice(keys)
        field = rng.choice(list(edits))
        value = rng.choice(edits[field])
        h = copy.deepcopy(header)
        entry = h[key]
        if field == "key":
            if value == "extra":
                entry["extra"] = 1
            elif value == "missing":
                entry.pop(rng.choice(["dtype", "shape", "data_offsets"]))
            elif value == "renamed":
                h[key + "x"] = h.pop(key)
            else:
                h[key] = None if value == "null entry" else [entry]
        elif field == "data_offsets" and isinstance(value, str):
            b, e = entry["data_offsets"]
            entry["data_offsets"] = {"+1": [b + 1, e + 1], "swap": [e, b], "zero": [0, 0]}[value]
        elif field == "shape" and value == [0] and not entry["shape"]:
            continue
        else:
            entry[field] = copy.deepcopy(value)
        new = _join(h, body)
        if new == data:
            continue
        produced += 1
        yield f"{key}: {field} -> {json.dumps(value)[:40]}", new


def _set_value(data: bytearray, entry, start: int, index: int, value: float) -> None:
    dtype = entry["dtype"]
    torch_dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}[dtype]
    raw = torch.tensor([value], dtype=torch_dtype).view(torch.uint8).numpy().tobytes()
    pos = start + entry["data_offsets"][0] + index * len(raw)
    data[pos : pos + len(raw)] = raw


def _nonfinite_cases(data: bytes):
    """NaN, +inf and -inf at a random place of every floating-point tensor (values, biases, LayerNorm, embeddings,
    factors, scales, tables)."""
    from test_malformed import _Layout

    layout = _Layout(data)
    rng = random.Random(len(data))
    for key, entry in sorted(layout.entries.items()):
        size = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}.get(entry["dtype"])
        if size is None:
            continue
        count = (entry["data_offsets"][1] - entry["data_offsets"][0]) // size
        if not count:
            continue
        for value in (math.nan, math.inf, -math.inf):
            new = bytearray(data)
            _set_value(new, entry, layout.data_start, rng.randrange(count), value)
            yield f"{value} in {key}", key, bytes(new)


def _index_cases(rng: random.Random, data: bytes, count: int):
    from test_malformed import _Layout, _mutate_index

    layout = _Layout(data)
    keys = [k for k, e in layout.entries.items() if e["dtype"] in INT_CODES and layout.count(k) > 0]
    produced = 0
    while produced < count:
        new = bytearray(data)
        what = _mutate_index(rng, layout, new, keys)
        if bytes(new) == data:
            continue
        produced += 1
        yield what, bytes(new)


def _tensor_name_cases(rng: random.Random, data: bytes):
    """Every tensor removed; every tensor renamed (one character, a suffix); extra tensors in an existing module, in
    a layer past the last one, and at a new name."""
    from safetensors.torch import load, save

    tensors = load(data)
    keys = sorted(tensors)
    for key in keys:
        rest = {k: v for k, v in tensors.items() if k != key}
        yield "missing", f"{key} removed", save(rest, metadata={"format": "pt"})
        i = rng.randrange(len(key))
        new_name = key[:i] + ("#" if key[i] != "#" else "$") + key[i + 1 :]
        for renamed in (new_name, key + "_old"):
            moved = dict(rest)
            moved[renamed] = tensors[key]
            yield "renamed", f"{key} -> {renamed}", save(moved, metadata={"format": "pt"})
    first = keys[0]
    owner = first.rpartition(".")[0]
    layer = next((k for k in keys if ".layer.1." in k or ".layers.1." in k or ".h.1." in k), first)
    beyond = layer.replace(".1.", ".7.", 1)
    for extra in (owner + ".extra", beyond, "foo.bar", "zzz"):
        grown = dict(tensors)
        grown[extra] = torch.zeros(3)
        yield "extra", f"extra tensor {extra}", save(grown, metadata={"format": "pt"})


_ODD = [None, True, False, 0, -1, 1.5, 2**64, 10**300, "", "x", [], {}, [1, 2], {"a": 1}]


def _config_cases(rng: random.Random, config: dict, count: int, model_kind: str):
    """quantization_config edits (``test_malformed._mutate_config``: declared dtypes and shapes, format parameters,
    deleted keys, values of other types) and huge ints, nulls and bools anywhere in it; model sizes in config.json
    (the layer count up and down, widths, vocabulary) and ``tie_word_embeddings`` flipped."""
    from test_malformed import _mutate_config, _parent, _paths

    names = sorted(config["quantization_config"]["modules"])
    layers_key = "n_layer" if model_kind == "gpt2" else "num_hidden_layers"
    width_key = "n_embd" if model_kind == "gpt2" else "hidden_size"
    for key, values in (
        (layers_key, [config[layers_key] + 1, config[layers_key] - 1, config[layers_key] + 5]),
        (width_key, [config[width_key] * 2]),
        ("vocab_size", [config["vocab_size"] + 1]),
        ("tie_word_embeddings", [not config.get("tie_word_embeddings", True)]),
    ):
        for value in values:
            new = copy.deepcopy(config)
            new[key] = value
            yield "config_model", f"{key} -> {value}", new
    for dtype in ("float16", "bfloat16", "float64"):
        new = copy.deepcopy(config)
        new["dtype"] = dtype
        yield "config_dtype", f"dtype -> {dtype}", new
    produced = 0
    while produced < count:
        new = copy.deepcopy(config)
        qc = new["quantization_config"]
        if rng.random() < 0.6:
            what = _mutate_config(rng, qc, names)
        else:
            paths = [p for p in _paths(qc) if p != ("quant_method",)]
            path = rng.choice(paths)
            value = copy.deepcopy(rng.choice(_ODD))
            _parent(qc, path)[path[-1]] = value
            what = f"{path} -> {json.dumps(value)[:30]}"
        if new == config:
            continue
        produced += 1
        yield "config", what, new


# -- the runner ------------------------------------------------------------------------------------------------------
class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang(f"no answer within {CASE_SECONDS} s")


def _vm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def _structure_ok(model) -> None:
    """The independent oracle for a model that loaded with other values: every hf_sparse layer validates, stores
    no position twice (csr, csc, coo, bsr, nm, bitmask, hybrid: ``test_malformed._stored_mask``) and computes what
    its dense reconstruction computes."""
    from test_malformed import _stored_mask

    from hf_sparse import SparseLinear
    from hf_sparse.nn.stored import StoredWeightMixin

    g = torch.Generator().manual_seed(0)
    for name, module in model.named_modules():
        if not isinstance(module, StoredWeightMixin):
            continue
        fmt = module.weight_format(validate=True)
        if fmt.name in ("csr", "csc", "coo", "bsr", "nm", "bitmask", "hybrid"):
            mask, stored = _stored_mask(fmt)
            assert int(mask.sum()) == stored, f"{name}: duplicate stored positions"
        if isinstance(module, SparseLinear):
            x = torch.randn(3, module.in_features, generator=g)
            with torch.no_grad():
                got = module(x).double()
                dense = fmt.to_dense().double()
                exact = x.double() @ dense.t() + (module.bias.double() if module.bias is not None else 0)
                bound = 1e-3 * (x.double().abs() @ dense.abs().t()) + 1e-3
            assert torch.all((got - exact).abs() <= bound), f"{name}: output differs from its dense reconstruction"


def _judge(kind: str, load, reference) -> str:
    """The outcome of one case, or an AssertionError saying why it is a failure."""
    from test_malformed import _names_something

    from hf_sparse.errors import HfSparseError

    try:
        model = load()
    except HfSparseError as exc:
        message = str(exc)
        assert _names_something(message) and len(message) < 4000, f"vague or huge message: {message[:300]!r}"
        return "typed"
    except RuntimeError as exc:
        # A dense tensor whose shape config.json changed: transformers refuses it itself (its report, logged just
        # before, names each tensor) unless the caller passed ignore_mismatched_sizes=True on purpose.
        if kind == "config_model" and "ignore_mismatched_sizes" in str(exc):
            return "transformers error"
        raise
    with torch.no_grad():
        out = model(input_ids=IDS).logits
    if kind == "config_dtype":
        tol = 1e-5 if out.dtype == torch.float64 else 5e-2
        torch.testing.assert_close(out.float(), reference, rtol=tol, atol=tol)
        return "equal"
    if torch.equal(out, reference):
        return "equal"
    assert kind in MAY_DIFFER, "loaded, but the outputs differ from the uncorrupted model's"
    assert bool(torch.isfinite(out).all()), "loaded, and the outputs are not finite"
    _structure_ok(model)
    return "valid, different"


def _run_cases(cases, counts: collections.Counter, failures: list) -> None:
    for kind, what, load, reference in cases:
        signal.alarm(CASE_SECONDS)
        try:
            counts[kind, _judge(kind, load, reference)] += 1
        except (Exception, _Hang) as exc:  # every failure is collected and reported, none stops the corpus
            counts[kind, "FAILED"] += 1
            failures.append(f"{kind} ({what}): {type(exc).__name__}: {str(exc)[:300]}")
        finally:
            signal.alarm(0)


def _single_file_cases(name: str, src: Path, work: Path, rng: random.Random, cls, model_kind: str, sizes: dict):
    """Every corruption kind of one single-file checkpoint, as (kind, what, load, reference) tuples (lazy: each
    writes its files into ``work`` just before it loads)."""
    data = (src / "model.safetensors").read_bytes()
    config = json.loads((src / "config.json").read_text())
    reference = _logits(cls.from_pretrained(src))
    case_dir = work / name
    shutil.rmtree(case_dir, ignore_errors=True)
    case_dir.mkdir(parents=True)

    def loader(new_data: bytes | None = None, new_config: dict | None = None):
        def load():
            (case_dir / "model.safetensors").write_bytes(data if new_data is None else new_data)
            (case_dir / "config.json").write_text(json.dumps(config if new_config is None else new_config))
            return cls.from_pretrained(case_dir)

        return load

    for what, _, new in _nonfinite_cases(data):
        yield "nonfinite", f"{name}: {what}", loader(new), reference
    for what, new in _index_cases(rng, data, sizes["index"]):
        yield "index", f"{name}: {what}", loader(new), reference
    for what, new in _header_cases(rng, data, sizes["header"]):
        yield "header", f"{name}: {what}", loader(new), reference
    names = list(_tensor_name_cases(rng, data))
    for kind, what, new in rng.sample(names, min(len(names), sizes["names"])):
        yield kind, f"{name}: {what}", loader(new), reference
    for kind, what, new in _config_cases(rng, config, sizes["config"], model_kind):
        yield kind, f"{name}: {what}", loader(None, new), reference


def _sharded_cases(src: Path, work: Path, rng: random.Random, cls):
    """A sharded checkpoint: shard paths in ``model.safetensors.index.json`` outside the folder (``..``, absolute,
    ``/dev/zero``, links out of the folder), shards that are not regular files (a FIFO, a folder) or not
    safetensors, a malformed index, every header corruption applied to a shard, shards truncated, removed or
    duplicated; ``weight_map`` entries pointing at the wrong shard (benign: transformers reads each shard's own
    header)."""
    reference = _logits(cls.from_pretrained(src))
    index = json.loads((src / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    outside = work / "outside"
    outside.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / shards[0], outside / "stolen.safetensors")
    case_dir = work / "sharded_case"

    def fresh():
        shutil.rmtree(case_dir, ignore_errors=True)
        shutil.copytree(src, case_dir, symlinks=True)

    def with_index(edit):
        def load():
            fresh()
            new = copy.deepcopy(index)
            edit(new, case_dir)
            (case_dir / "model.safetensors.index.json").write_text(json.dumps(new))
            return cls.from_pretrained(case_dir)

        return load

    def point_first_shard(target):
        def edit(new, folder):
            name = target(folder) if callable(target) else target
            for key, shard in new["weight_map"].items():
                if shard == shards[0]:
                    new["weight_map"][key] = name

        return edit

    def link(name, to):
        def target(folder):
            os.symlink(to, folder / name)
            return name

        return target

    def fifo(folder):
        os.mkfifo(folder / "pipe.safetensors")
        return "pipe.safetensors"

    def directory(folder):
        (folder / "dir.safetensors").mkdir()
        return "dir.safetensors"

    def renamed_bin(folder):
        os.rename(folder / shards[0], folder / "model-00001.bin")
        return "model-00001.bin"

    def other_name(folder):
        os.rename(folder / shards[0], folder / "weights part 1.safetensors")
        return "weights part 1.safetensors"

    targets = {
        "../outside": f"../{outside.name}/stolen.safetensors",
        "absolute": str(outside / "stolen.safetensors"),
        "/dev/zero": "/dev/zero",
        "/proc/self/mem": "/proc/self/mem",
        "sub/../..": f"sub/../../{outside.name}/stolen.safetensors",
        "link out": link("out.safetensors", outside / "stolen.safetensors"),
        "link to /dev/zero": link("zero.safetensors", "/dev/zero"),
        "dangling link": link("gone.safetensors", work / "nothing"),
        "FIFO": fifo,
        "folder": directory,
        "missing file": "model-00009-of-00009.safetensors",
        "renamed .bin": renamed_bin,
        "empty name": "",
        "NUL in name": "a\0b.safetensors",
        "5": 5,
        "null": None,
        "list": ["x"],
    }
    for what, target in targets.items():
        yield "index_path", f"shard -> {what}", with_index(point_first_shard(target)), reference
    yield "index_path", "shard renamed, index agrees", with_index(point_first_shard(other_name)), reference

    def set_key(key, value):
        def edit(new, folder):
            new[key] = value

        return edit

    for what, edit in {
        "weight_map null": set_key("weight_map", None),
        "weight_map list": set_key("weight_map", []),
        "weight_map empty": set_key("weight_map", {}),
        "metadata missing": lambda new, folder: new.pop("metadata"),
        "metadata list": set_key("metadata", []),
        "metadata dtype garbage": lambda new, folder: new["metadata"].update(dtype="int8x"),
        "metadata deep": set_key("metadata", json.loads(_nested(800, "{}"))),
    }.items():
        yield "index_json", what, with_index(edit), reference

    def raw_index(raw: bytes):
        def load():
            fresh()
            (case_dir / "model.safetensors.index.json").write_bytes(raw)
            return cls.from_pretrained(case_dir)

        return load

    text = json.dumps(index).encode()
    yield "index_json", "not JSON", raw_index(text[:-5]), reference
    yield "index_json", "not UTF-8", raw_index(text.replace(b'"', b'"\xff', 1)), reference
    yield "index_json", "top-level list", raw_index(b"[" + text + b"]"), reference
    yield (
        "index_json",
        "nesting 100000",
        raw_index(text.replace(b"{", b'{"deep":' + _nested(100_000).encode() + b",", 1)),
        reference,
    )

    def huge_index():
        fresh()
        path = case_dir / "model.safetensors.index.json"
        with open(path, "r+b") as fh:
            fh.truncate(70_000_000)  # a sparse file: cheap to make, 70 MB to read
        return cls.from_pretrained(case_dir)

    yield "index_json", "70 MB index", huge_index, reference

    def benign_move(new, folder):
        keys = sorted(new["weight_map"])
        for key in rng.sample(keys, 5):
            new["weight_map"][key] = shards[-1] if new["weight_map"][key] == shards[0] else shards[0]

    for i in range(5):
        yield "index_benign", f"weight_map entries moved ({i})", with_index(benign_move), reference
    yield "index_benign", "metadata extra", with_index(lambda new, folder: new["metadata"].update(note="x")), reference

    def shard_bytes(shard: str, new_bytes: bytes):
        def load():
            fresh()
            (case_dir / shard).write_bytes(new_bytes)
            return cls.from_pretrained(case_dir)

        return load

    for shard in shards:
        data = (src / shard).read_bytes()
        for what, new in _header_cases(rng, data, 60):
            yield "shard_header", f"{shard}: {what}", shard_bytes(shard, new), reference
        for cut in (0, 5, 20, len(data) // 2, len(data) - 1):
            yield "shard_header", f"{shard}: cut at {cut}", shard_bytes(shard, data[:cut]), reference
        for what, _, new in _nonfinite_cases(data):
            yield "nonfinite", f"{shard}: {what}", shard_bytes(shard, new), reference

    def remove_shard():
        fresh()
        (case_dir / shards[-1]).unlink()
        return cls.from_pretrained(case_dir)

    def duplicate_tensor():
        from safetensors.torch import load_file, save_file

        fresh()
        first = load_file(case_dir / shards[0])
        last = load_file(case_dir / shards[-1])
        key = sorted(first)[0]
        last[key] = first[key]
        save_file(last, case_dir / shards[-1], metadata={"format": "pt"})
        return cls.from_pretrained(case_dir)

    yield "shard_files", "a shard removed", remove_shard, reference
    yield "shard_files", "a tensor in two shards", duplicate_tensor, reference


def _worker(which: str, root: str, out: str) -> None:
    """Runs one corpus (in a subprocess: see ``_run``) and writes its counts and failures to ``out``."""
    import warnings

    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore")
    os.environ["HF_DEACTIVATE_ASYNC_LOAD"] = "1"
    torch.set_num_threads(1)
    root_path = Path(root)
    rng = random.Random(f"{which}-2024")
    cases = []
    start = time.perf_counter()
    if which == "linear":
        model = _bert(LINEAR_PLAN, seed=1, table="csr")
        model.save_pretrained(root_path / "linear")
        sizes = {"index": 500, "header": 400, "names": 330, "config": 400}
        cases.append(
            _single_file_cases(
                "linear",
                root_path / "linear",
                root_path / "cases",
                rng,
                AutoModelForSequenceClassification,
                "bert",
                sizes,
            )
        )
    elif which == "embeddings":
        for i, table in enumerate(EMBEDDING_TABLES):
            plan = {L0 + "attention.self.query": ("qdense", {"bits": 4, "granularity": "group", "group_size": 8})}
            _bert(plan, seed=10 + i, table=table).save_pretrained(root_path / table)
            sizes = {"index": 40, "header": 40, "names": 40, "config": 50}
            cases.append(
                _single_file_cases(
                    table,
                    root_path / table,
                    root_path / "cases",
                    rng,
                    AutoModelForSequenceClassification,
                    "bert",
                    sizes,
                )
            )
    elif which == "sharded":
        _bert(LINEAR_PLAN, seed=2, table="csr").save_pretrained(root_path / "sharded", max_shard_size="30KB")
        cases.append(
            _sharded_cases(root_path / "sharded", root_path / "cases", rng, AutoModelForSequenceClassification)
        )
    elif which == "decoders":
        for kind in ("llama", "llama_tied", "gpt2"):
            _decoder(kind, seed=3).save_pretrained(root_path / kind)
            sizes = {"index": 40, "header": 60, "names": 80, "config": 60}
            cases.append(
                _single_file_cases(kind, root_path / kind, root_path / "cases", rng, AutoModelForCausalLM, kind, sizes)
            )
    # Only now, after the imports and the reference models: the corpus may add at most 2 GB of address space.
    limit = _vm_bytes() + RLIMIT_GROWTH
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    signal.signal(signal.SIGALRM, _alarm)
    counts: collections.Counter = collections.Counter()
    failures: list[str] = []
    for group in cases:
        _run_cases(group, counts, failures)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(out).write_text(
        json.dumps(
            {
                "counts": [[k, o, n] for (k, o), n in sorted(counts.items())],
                "failures": failures,
                "seconds": time.perf_counter() - start,
                "peak_rss_mb": peak_mb,
            }
        )
    )


def _run(which: str, tmp_path: Path) -> dict:
    out = tmp_path / "result.json"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(HERE)!r})
        import test_checkpoint_fuzz as fuzz
        fuzz._worker({which!r}, {str(tmp_path)!r}, {str(out)!r})
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0 and out.exists(), (
        f"the corpus process died (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    )
    result = json.loads(out.read_text())
    total = sum(n for _, _, n in result["counts"])
    by_kind: dict[str, dict[str, int]] = {}
    for kind, outcome, n in result["counts"]:
        by_kind.setdefault(kind, {})[outcome] = n
    print(
        f"\n{which}: {total} corruptions in {result['seconds']:.0f} s, peak RSS {result['peak_rss_mb']:.0f} MB: "
        + "; ".join(f"{k}: {v}" for k, v in by_kind.items())
    )
    assert not result["failures"], f"{len(result['failures'])} of {total} failed:\n" + "\n".join(
        result["failures"][:40]
    )
    result["total"], result["by_kind"] = total, by_kind
    return result


def test_every_linear_format_and_a_sparse_table(tmp_path):
    result = _run("linear", tmp_path)
    assert result["total"] >= 1500
    kinds = result["by_kind"]
    for kind in ("nonfinite", "missing", "renamed", "extra"):
        assert set(kinds[kind]) == {"typed"}, (kind, kinds[kind])
    # the one benign model edit: tie_word_embeddings flipped on a classifier, which ties nothing
    assert kinds["config_model"].get("equal", 0) <= 1


def test_every_embedding_table_format(tmp_path):
    result = _run("embeddings", tmp_path)
    assert result["total"] >= 1200
    for kind in ("nonfinite", "missing", "renamed", "extra"):
        assert set(result["by_kind"][kind]) == {"typed"}, (kind, result["by_kind"][kind])


def test_sharded_checkpoint_and_its_index(tmp_path):
    result = _run("sharded", tmp_path)
    kinds = result["by_kind"]
    for kind in ("index_path", "index_json", "nonfinite", "shard_files"):
        assert set(kinds[kind]) <= {"typed"} or kind == "index_path", (kind, kinds[kind])
    assert kinds["index_path"].get("equal") == 1  # the one benign edit: a renamed shard the index names
    assert set(kinds["index_benign"]) == {"equal"}


def test_decoders_with_tied_and_untied_heads(tmp_path):
    result = _run("decoders", tmp_path)
    for kind in ("nonfinite", "missing", "renamed", "extra"):
        assert set(result["by_kind"][kind]) == {"typed"}, (kind, result["by_kind"][kind])
    assert set(result["by_kind"]["config_model"]) <= {"typed", "transformers error"}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_dtype_loads_every_format_and_matches_float32(tmp_path, dtype):
    """``from_pretrained(..., dtype=bfloat16 | float16)``: stored values load converted (quantisation scales keep
    their dtype), every layer computes in the model's dtype, and the logits match the float32 model's."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    models = {"linear": _bert(LINEAR_PLAN, seed=1, table="csr")}
    for i, table in enumerate(EMBEDDING_TABLES):
        models[table] = _bert({L0 + "attention.self.query": ("qdense", {"bits": 8})}, seed=10 + i, table=table)
    models["llama"] = _decoder("llama", seed=3)
    for name, model in models.items():
        model.save_pretrained(tmp_path / name)
        cls = AutoModelForCausalLM if name == "llama" else AutoModelForSequenceClassification
        expected = _logits(cls.from_pretrained(tmp_path / name))
        loaded = cls.from_pretrained(tmp_path / name, dtype=dtype)
        for module_name, module in loaded.named_modules():
            values = getattr(module, "weight_values", getattr(module, "weight_u", None))
            if values is not None and values.is_floating_point():
                assert values.dtype == dtype, (name, module_name, values.dtype)
        got = _logits(loaded)
        assert got.dtype == dtype, name
        scale = expected.abs().max().item()
        torch.testing.assert_close(got.float(), expected, rtol=0.05, atol=0.05 * max(scale, 1.0), msg=name)
