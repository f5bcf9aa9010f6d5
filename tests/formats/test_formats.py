"""Property tests of the storage formats: seeded random shapes, sparsities, masks and block sizes."""

import random

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from hf_sparse.errors import FormatError
from hf_sparse.formats import BSR, CSR, FORMATS, NM, Hybrid, from_tensors, index_dtype, to_format
from hf_sparse.testing import random_format_case as _case

ALL = ["csr", "csc", "coo", "bsr", "bitmask", "nm", "hybrid", "full"]


def test_every_format_round_trips_exactly_over_1000_cases():
    rng = random.Random(1234)
    for i in range(1400):
        name = ALL[i % len(ALL)]
        weight, mask, params = _case(rng, name)
        fmt = to_format(name, weight, mask, **params)
        fmt.validate()
        assert torch.equal(fmt.to_dense(), weight * mask), (name, weight.shape, params)
        tensors = fmt.tensors()
        assert fmt.nbytes == sum(t.numel() * t.element_size() for t in tensors.values())
        again = from_tensors(st_load(st_save(tensors)), fmt.params())  # through safetensors bytes
        assert torch.equal(again.to_dense(), weight * mask)
        for t in tensors.values():
            assert t.dtype != torch.int64  # indices are int16/int32, never int64


def _corrupt(rng: random.Random, tensors: dict) -> dict:
    tensors = {k: v.clone() for k, v in tensors.items()}
    key = rng.choice(sorted(tensors))
    t = tensors[key]
    kind = rng.choice(["dtype", "truncate", "extend", "poke", "poke", "shuffle", "dim"])
    if kind == "dtype":
        tensors[key] = t.to(rng.choice([torch.int64, torch.float64, torch.int32, torch.uint8, torch.int16]))
    elif kind == "truncate" and t.numel():
        tensors[key] = t.reshape(-1)[:-1] if t.dim() == 1 else t[:-1]
    elif kind == "extend":
        tensors[key] = torch.cat([t, t[:1]]) if t.numel() else torch.ones(1, dtype=t.dtype)
    elif kind == "poke" and t.numel():
        flat = t.reshape(-1)
        j = rng.randrange(flat.numel())
        if t.dtype.is_floating_point:
            flat[j] = float("nan")
        else:
            info = torch.iinfo(t.dtype)
            flat[j] = rng.choice([-1, info.max, int(flat[j]) + rng.randint(1, 50), 0])
    elif kind == "shuffle" and t.numel() > 1:
        flat = t.reshape(-1)
        tensors[key] = flat[torch.randperm(flat.numel())].reshape(t.shape)
    elif kind == "dim":
        tensors[key] = t.reshape(1, -1) if t.dim() == 1 else t.reshape(-1)
    return tensors


def test_malformed_tensors_raise_format_errors_and_never_crash():
    rng = random.Random(99)
    raised = 0
    for i in range(1400):
        name = ALL[i % len(ALL)]
        weight, mask, params = _case(rng, name)
        fmt = to_format(name, weight, mask, **params)
        bad = _corrupt(rng, fmt.tensors())
        try:
            rebuilt = from_tensors(bad, fmt.params())
        except FormatError:
            raised += 1
            continue
        # Accepted: then it is a well-formed format (e.g. a changed value, a permutation inside a valid order).
        rebuilt.to_dense()
    assert raised > 700


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda f: CSR(f.crow_indices.flip(0), f.col_indices, f.values, f.shape), "must start at 0"),
        (lambda f: CSR(torch.tensor([0, 3, 2, 4], dtype=torch.int32), f.col_indices, f.values, f.shape), "monotone"),
        (lambda f: CSR(f.crow_indices, f.col_indices.to(torch.int64), f.values, f.shape), "dtype torch.int64"),
        (lambda f: CSR(f.crow_indices, f.col_indices.flip(0), f.values, f.shape), "not sorted"),
        (lambda f: CSR(f.crow_indices, f.col_indices + 5, f.values, f.shape), "out of range"),
        (lambda f: CSR(f.crow_indices, f.col_indices, f.values[:-1], f.shape), "end at 3"),
        (lambda f: CSR(f.crow_indices, f.col_indices, f.values.to(torch.int32), f.shape), "values has dtype"),
    ],
)
def test_csr_errors_say_what_is_wrong(make, fragment):
    w = torch.tensor([[1.0, 0, 2, 0, 0], [0, 0, 0, 0, 0], [0, 3.0, 0, 4.0, 0]])
    f = CSR.from_dense(w)
    with pytest.raises(FormatError, match=fragment):
        make(f)


def test_construction_errors():
    with pytest.raises(FormatError, match="not divisible by the block"):
        BSR.from_dense(torch.ones(10, 16), block=(4, 4))
    with pytest.raises(FormatError, match="more than n=2"):
        NM.from_dense(torch.ones(2, 8), n=2, m=4)
    with pytest.raises(FormatError, match="2-D"):
        CSR.from_dense(torch.ones(3))
    with pytest.raises(FormatError, match="Mask must be a bool"):
        CSR.from_dense(torch.ones(3, 3), torch.ones(3, 3))
    with pytest.raises(FormatError, match="takes no parameters"):
        CSR.from_dense(torch.ones(3, 3), block=(1, 1))
    with pytest.raises(FormatError, match="'format' key"):
        from_tensors({}, {})
    with pytest.raises(ValueError, match="Unknown sparse format 'ell'"):
        to_format("ell", torch.ones(2, 2))


def test_index_dtypes_and_hybrid_rows():
    assert index_dtype(768) == torch.int16 and index_dtype(32768) == torch.int16
    assert index_dtype(32769) == torch.int32 and index_dtype(30522) == torch.int16
    w = torch.zeros(4, 64)
    w[0] = 1.0  # a dense row
    w[2, 5] = 2.0  # a sparse row
    h = Hybrid.from_dense(w)
    assert h.dense_rows.tolist() == [0] and h.sparse_rows.tolist() == [1, 2, 3]
    assert torch.equal(h.to_dense(), w)
    assert h.nbytes < CSR.from_dense(w).nbytes + 64 * 4
    # The lossy formats (qdense, qcsr, qbsr, qnm; lowrank, lowrank_sparse) are tested in tests/quantization and
    # tests/lowrank.
    embedding_only = {
        "hashed",
        "qr",
        "tt",
        "rowmap",
        "hot",
        "qrow",
    }  # tables: tested in tests/embeddings and qrow's tests
    assert set(FORMATS) == set(ALL) | {"qdense", "qcsr", "qbsr", "qnm", "lowrank", "lowrank_sparse"} | embedding_only
