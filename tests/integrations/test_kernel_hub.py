"""Our kernels packaged for Hugging Face's ``kernels`` library: the build folder is what ``kernels`` resolves, the
package loads beside hf_sparse's own ops and agrees with them, it is pushed to the loopback Hub and loaded back with
``get_kernel``, and transformers runs a model's attention through it with ``attn_implementation="<repo>:<fn>"``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

kernels = pytest.importorskip("kernels", reason="the `kernels` package (the [dev] extra) is not installed")

from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    LlamaConfig,
)

import hf_sparse  # noqa: E402
from hf_sparse import SparseAttentionConfig, apply_sparse_attention_  # noqa: E402
from hf_sparse.attention.functional import sparse_attention_reference  # noqa: E402
from hf_sparse.attention.patterns import GlobalTokens, SlidingWindow  # noqa: E402
from hf_sparse.cli import main  # noqa: E402
from hf_sparse.integrations.hub import HubError  # noqa: E402
from hf_sparse.integrations.kernel_hub import (  # noqa: E402
    KERNEL_NAME,
    KernelBuildError,
    build_kernel_package,
    kernel_package_variants,
    push_kernel_package,
    register_hub_attention,
    variant_name,
)
from hf_sparse.testing import tiny_bert_classifier, tiny_causal_lm  # noqa: E402

REPO = "me/hf-sparse-kernels"


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """One CPU build of the package for the module (the compiled library is cached across runs)."""
    out = tmp_path_factory.mktemp("kernel-package")
    result = build_kernel_package(out)
    assert result["built"] == [variant_name("cpu")]
    return out


@pytest.fixture
def kernel_cache(tmp_path, monkeypatch):
    """Downloads of kernels go to a temporary Hub cache, not the user's."""
    import kernels.resolver
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(kernels.resolver, "CACHE_DIR", str(tmp_path / "hub-cache"))
    return tmp_path / "hub-cache"


def _local(package):
    return kernels.get_local_kernel(Path(package))


def _csr(weight):
    crow = torch.zeros(weight.shape[0] + 1, dtype=torch.int32)
    nz = weight != 0
    crow[1:] = nz.sum(1).cumsum(0)
    col = nz.nonzero()[:, 1].to(torch.int32)
    return crow, col, weight[nz]


def _sparse_weight(rows, cols, density=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    return w * (torch.rand(rows, cols, generator=g) < density)


# -- the folder --------------------------------------------------------------------------------------------------


def test_build_folder_is_what_kernels_resolves(package):
    from kernels._rust import Digest, DigestAlgorithm, Metadata
    from kernels.variants import get_variants_local, resolve_variant

    variant, trace = resolve_variant(get_variants_local(package / "build"))
    assert variant is not None, trace
    assert variant.variant_str == variant_name("cpu")
    folder = package / "build" / variant.variant_str
    meta = Metadata.read_from_file(folder / "metadata.json")
    assert str(meta.name) == KERNEL_NAME and meta.version == 1 and meta.python_depends == []
    assert meta.id.startswith("_hf_sparse_kernels_") and meta.id != "hf_sparse"
    meta.digest.validate(Digest.hash_variant(DigestAlgorithm.SHA256, folder))  # our digest == kernels' own
    assert (folder / "ops" / f"{meta.id}.so").is_file()
    assert f'NAMESPACE = "{meta.id}"' in (folder / "ops" / "_namespace.py").read_text()
    card = (package / "README.md").read_text()
    assert variant.variant_str in card and "windowed_attention" in card
    assert kernel_package_variants(package)[variant.variant_str]["id"] == meta.id


def test_package_python_is_the_kernels_hub_files_with_the_build_values(package):
    from hf_sparse._resources import data_dir
    from hf_sparse.integrations.kernel_hub import _PACKAGE_FILES

    folder = package / "build" / variant_name("cpu")
    meta = kernel_package_variants(package)[variant_name("cpu")]
    templates = data_dir("kernels") / "hub"
    for rel in _PACKAGE_FILES:
        built, template = (folder / rel).read_text(), (templates / rel).read_text()
        assert "@@" not in built
        if "@@" not in template:
            assert built == template
    ops_init = (folder / "ops" / "__init__.py").read_text()
    assert f"namespace {meta['id']})" in ops_init and 'BACKEND = "cpu"' in ops_init
    assert f'with_name("{meta["id"]}.so")' in ops_init


def test_render_refuses_unknown_placeholders_and_unsafe_values(tmp_path):
    from hf_sparse.integrations.kernel_hub import _render

    template = tmp_path / "t.py"
    template.write_text('A = "@@a@@"\nB = "@@b@@"\n')
    assert _render(template, {"a": "x y", "b": "1.0-z", "unused": ""}) == 'A = "x y"\nB = "1.0-z"\n'
    with pytest.raises(KernelBuildError, match=r"\['b'\]"):
        _render(template, {"a": "x"})
    with pytest.raises(KernelBuildError, match="cannot carry"):
        _render(template, {"a": 'x"; import os', "b": ""})


def test_rebuild_keeps_other_variants_and_replaces_its_own(package, tmp_path):
    import shutil

    copy = tmp_path / "pkg"
    shutil.copytree(package, copy)
    other = copy / "build" / "torch213-cu130-x86_64-linux"  # as if pushed from a GPU machine
    other.mkdir()
    (other / "metadata.json").write_text(json.dumps({"name": KERNEL_NAME, "version": 1}))
    stale = copy / "build" / variant_name("cpu") / "stale.txt"
    stale.write_text("from an older build")
    build_kernel_package(copy)  # cached library: no compilation
    assert other.is_dir() and not stale.exists()
    assert "torch213-cu130-x86_64-linux" in (copy / "README.md").read_text()


def test_bad_arguments_are_typed_errors(tmp_path):
    with pytest.raises(KernelBuildError, match="version"):
        build_kernel_package(tmp_path, version=0)
    with pytest.raises(KernelBuildError, match="unknown backend"):
        build_kernel_package(tmp_path, backends=("rocm",))
    with pytest.raises(KernelBuildError, match="no build/<variant>/"):
        push_kernel_package(tmp_path, REPO)
    (tmp_path / "build" / "x").mkdir(parents=True)
    with pytest.raises(KernelBuildError, match="metadata.json"):
        kernel_package_variants(tmp_path)
    if torch.version.cuda is None:
        with pytest.raises(KernelBuildError, match="CPU build"):
            variant_name("cuda")


# -- the package's functions -------------------------------------------------------------------------------------


def test_package_loads_beside_hf_sparse_and_matches_it(package):
    assert hf_sparse.ops.load_kernels()  # hf_sparse's own hf_sparse:: build, in the same process
    k = _local(package)
    assert k.BACKEND == "cpu" and k.NAMESPACE != "hf_sparse"
    w = _sparse_weight(48, 80)
    crow, col, values = _csr(w)
    x = torch.randn(7, 80)
    torch.testing.assert_close(k.linear_csr(crow, col, values, 48, 80, x), x @ w.T, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k.spmm_csr(crow, col, values, 48, 80, x.T.contiguous()), w @ x.T, rtol=1e-5, atol=1e-5)
    same = torch.ops.hf_sparse.linear_csr(crow, col, values, 48, 80, x)
    torch.testing.assert_close(k.linear_csr(crow, col, values, 48, 80, x), same, rtol=0, atol=0)
    # int8 values with per-row scales
    codes = torch.randint(-127, 128, values.shape, dtype=torch.int8)
    scales = torch.rand(48) + 0.5
    dense_q = torch.zeros(48, 80)
    dense_q[w != 0] = codes.float()
    torch.testing.assert_close(
        k.linear_qcsr(crow, col, codes, scales, 48, 80, x), x @ (dense_q * scales[:, None]).T, rtol=1e-4, atol=1e-4
    )
    # 4 x 4 blocks and 2:4
    blocks = torch.randn(3, 4, 4)
    bcrow, bcol = torch.tensor([0, 1, 2, 3], dtype=torch.int32), torch.tensor([0, 2, 1], dtype=torch.int32)
    wb = torch.zeros(12, 12)
    for r, c in enumerate([0, 2, 1]):
        wb[4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = blocks[r]
    xt = torch.randn(12, 5)
    torch.testing.assert_close(k.spmm_bsr(bcrow, bcol, blocks, 12, 12, xt), wb @ xt, rtol=1e-5, atol=1e-5)
    vals, idx = torch.randn(6, 4), torch.tensor([[0, 3, 1, 2]] * 6, dtype=torch.int8)
    wn = torch.zeros(6, 8)
    wn[:, 0], wn[:, 3], wn[:, 5], wn[:, 6] = vals[:, 0], vals[:, 1], vals[:, 2], vals[:, 3]
    xt = torch.randn(8, 3)
    torch.testing.assert_close(k.spmm_nm(vals, idx, 2, 4, 8, xt), wn @ xt, rtol=1e-5, atol=1e-5)


def test_sparse_linear_trains_through_the_package(package):
    """The package carries the autograd formulas: value and input gradients at the stored positions."""
    k = _local(package)
    w = _sparse_weight(16, 24, density=0.3, seed=1)
    crow, col, values = _csr(w)
    values = values.clone().requires_grad_()
    x = torch.randn(5, 24, requires_grad=True)
    g = torch.randn(5, 16)
    dv, dx = torch.autograd.grad(k.linear_csr(crow, col, values, 16, 24, x), (values, x), g)
    wd = w.clone().requires_grad_()
    xd = x.detach().clone().requires_grad_()
    ref_w, ref_x = torch.autograd.grad(xd @ wd.T, (wd, xd), g)
    torch.testing.assert_close(dv, ref_w[w != 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx, ref_x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_sparse_attention_and_its_backward_match_the_reference(package, causal):
    k = _local(package)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 150, 32, generator=g, requires_grad=True)
    key = torch.randn(2, 2, 150, 32, generator=g, requires_grad=True)
    v = torch.randn(2, 2, 150, 32, generator=g, requires_grad=True)
    padding = torch.ones(2, 150, dtype=torch.bool)
    padding[1, 130:] = False
    pattern = k.SlidingWindow(20) | k.GlobalTokens((0,))
    out = k.sparse_attention(q, key, v, pattern, causal=causal, key_padding_mask=padding)
    ref_pattern = SlidingWindow(20) | GlobalTokens((0,))
    ref = sparse_attention_reference(q, key, v, ref_pattern, causal=causal, key_padding_mask=padding)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, key, v), grad)
    want = torch.autograd.grad(ref, (q, key, v), grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # bfloat16 on CPU: computed in float32, returned in bfloat16
    half = k.sparse_attention(q.detach().bfloat16(), key.detach().bfloat16(), v.detach().bfloat16(), window=20)
    assert half.dtype == torch.bfloat16


def test_sparse_attention_refuses_bad_input(package):
    k = _local(package)
    q = torch.randn(1, 2, 10, 32)
    with pytest.raises(ValueError, match="exactly one of"):
        k.sparse_attention(q, q, q)
    with pytest.raises(ValueError, match="multiple of 16"):
        k.sparse_attention(torch.randn(1, 2, 10, 8), torch.randn(1, 2, 10, 8), torch.randn(1, 2, 10, 8), window=2)
    with pytest.raises(ValueError, match="not a multiple of 3 key/value heads"):
        k.sparse_attention(q, torch.randn(1, 3, 10, 32), torch.randn(1, 3, 10, 32), window=2)
    with pytest.raises(ValueError, match="key_padding_mask"):
        k.sparse_attention(q, q, q, window=2, key_padding_mask=torch.ones(1, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(batch, heads, length, head_dim\)"):
        k.sparse_attention(q[0], q[0], q[0], window=2)


# -- the Hub -----------------------------------------------------------------------------------------------------


def test_push_then_get_kernel_from_the_hub(package, hub_server, kernel_cache):
    url = push_kernel_package(package, REPO, token="t")
    assert hub_server.head(REPO, repo_type="kernel", revision="v1") in url
    files = hub_server.files(REPO, repo_type="kernel", revision="v1")
    variant = variant_name("cpu")
    assert f"build/{variant}/metadata.json" in files and "README.md" in files
    assert set(files) == set(hub_server.files(REPO, repo_type="kernel"))  # main carries the same build

    k = kernels.get_kernel(REPO, version=1, trust_remote_code=True)
    assert Path(k.__file__).is_relative_to(kernel_cache)
    w = _sparse_weight(8, 16)
    x = torch.randn(3, 16)
    torch.testing.assert_close(k.linear_csr(*_csr(w), 8, 16, x), x @ w.T, rtol=1e-5, atol=1e-5)
    assert kernels.has_kernel(REPO, version=1, trust_remote_code=True)
    with pytest.raises(ValueError, match="trust"):  # kernels' own rule: our repository is no trusted publisher
        kernels.get_kernel(REPO, version=1)
    with pytest.raises(ValueError, match="Version 2 not found"):
        kernels.get_kernel(REPO, version=2, trust_remote_code=True)


def test_second_push_replaces_only_its_variants(package, hub_server, tmp_path):
    push_kernel_package(package, REPO, token="t")
    other = tmp_path / "gpu-build"
    folder = other / "build" / "torch213-cu130-x86_64-linux"
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text(json.dumps({"name": KERNEL_NAME, "version": 1, "backend": {"type": "cuda"}}))
    (other / "README.md").write_text("card")
    push_kernel_package(other, REPO, token="t")
    files = hub_server.files(REPO, repo_type="kernel", revision="v1")
    assert f"build/{variant_name('cpu')}/metadata.json" in files  # the CPU build stays
    assert "build/torch213-cu130-x86_64-linux/metadata.json" in files
    (folder / "metadata.json").write_text(json.dumps({"name": KERNEL_NAME, "version": 2}))
    push_kernel_package(other, REPO, token="t")  # a new version starts from this build alone
    v2 = hub_server.files(REPO, repo_type="kernel", revision="v2")
    assert {p.split("/")[1] for p in v2 if p.startswith("build/")} == {"torch213-cu130-x86_64-linux"}


def test_failed_push_is_a_hub_error(package, hub_server):
    hub_server.fail_next(10, status=500, path_contains="/commit/")
    with pytest.raises(HubError, match="run the same push again"):
        push_kernel_package(package, REPO, token="t")


def test_cli_packages_and_pushes(package, hub_server, tmp_path, capsys):
    out = tmp_path / "cli-pkg"
    assert main(["package-kernels", str(out), "--push-to-hub", REPO, "--hub-token", "t"]) == 0
    printed = capsys.readouterr().out
    assert variant_name("cpu") in printed and REPO in printed
    assert f"build/{variant_name('cpu')}/metadata.json" in hub_server.files(REPO, repo_type="kernel", revision="v1")


# -- transformers ------------------------------------------------------------------------------------------------
# Three ways in: transformers' own (attn_implementation="<repo>" or "<repo>:windowed_attention", which it allows only
# with the kernels versions it was released against) and register_hub_attention (any kernels). Each test runs all
# three; transformers' own skip, after checking its refusal, where the installed pair does not match.


@pytest.fixture(params=["<repo>", "<repo>:windowed_attention", "register_hub_attention"])
def attn(request, package, hub_server, kernel_cache):
    """(attn_implementation, from_pretrained kwargs) that run the pushed package's windowed_attention."""
    from transformers.utils.import_utils import KERNELS_MAX_VERSION, KERNELS_MIN_VERSION, is_kernels_available

    push_kernel_package(package, REPO, token="t")
    if request.param == "register_hub_attention":
        return register_hub_attention(REPO, trust_remote_code=True), {}
    name = request.param.replace("<repo>", REPO)
    if not is_kernels_available():
        with pytest.raises(ImportError, match="kernels"):
            AutoModelForSequenceClassification.from_pretrained(
                _bert_with_window(request.getfixturevalue("tmp_path"), window=4),
                attn_implementation=name,
                allow_all_kernels=True,
            )
        pytest.skip(
            f"transformers {transformers.__version__} loads Hub kernels only with kernels >= {KERNELS_MIN_VERSION}, "
            f"< {KERNELS_MAX_VERSION}; kernels {kernels.__version__} is installed (register_hub_attention covers it)"
        )
    return name, {"allow_all_kernels": True}


def _ids(B, S, vocab=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (B, S), generator=g)
    mask = torch.ones_like(ids)
    mask[1, S - 7 :] = 0
    return ids, mask


def _bert_with_window(tmp_path, **settings):
    model = tiny_bert_classifier(
        seed=0,
        num_attention_heads=2,
        max_position_embeddings=256,
        attention_probs_dropout_prob=0.0,
        hidden_dropout_prob=0.0,
    )  # head_dim 16
    apply_sparse_attention_(model, SparseAttentionConfig(**settings))
    model.save_pretrained(tmp_path / "bert")
    return tmp_path / "bert"


def test_attn_implementation_from_the_hub_matches_hf_sparse(attn, tmp_path):
    name, extra = attn
    path = _bert_with_window(tmp_path, window=6, global_positions=(0,), layer_windows={"1": 3})
    ids, mask = _ids(2, 70)
    ours = AutoModelForSequenceClassification.from_pretrained(path, attn_implementation="hf_sparse").eval()
    hub = AutoModelForSequenceClassification.from_pretrained(path, attn_implementation=name, **extra).eval()
    sdpa = AutoModelForSequenceClassification.from_pretrained(path, attn_implementation="sdpa").eval()
    real = mask.bool()
    with torch.no_grad():
        want, got, full = (
            m(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1][real]
            for m in (ours, hub, sdpa)
        )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - full).abs().max() > 1e-2  # the window is applied, not full attention
    # training: gradients through the package's attention backward equal hf_sparse's
    hub.train()
    ours.train()
    hub(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1])).loss.backward()
    ours(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1])).loss.backward()
    for (name, a), (_, b) in zip(hub.named_parameters(), ours.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_decoder_generation_and_transformers_sliding_window(attn, tmp_path):
    name, extra = attn
    llama = tiny_causal_lm("llama")
    apply_sparse_attention_(llama, SparseAttentionConfig(window=12))
    llama.save_pretrained(tmp_path / "llama")
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "llama", attn_implementation="hf_sparse").eval()
    hub = AutoModelForCausalLM.from_pretrained(tmp_path / "llama", attn_implementation=name, **extra).eval()
    ids = torch.randint(5, 128, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hub(ids).logits, ours(ids).logits, rtol=1e-5, atol=1e-5)
        gen = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
        want = ours.generate(ids, **gen)
        assert torch.equal(hub.generate(ids, **gen), want)  # decoding with the KV cache
        assert torch.equal(hub.generate(ids, cache_implementation="static", **gen), want)  # slots not yet written

    # a model with transformers' own sliding window (Mistral): the kernel follows config.sliding_window
    tiny_causal_lm("mistral", sliding_window=10).save_pretrained(tmp_path / "mistral")
    sdpa = AutoModelForCausalLM.from_pretrained(tmp_path / "mistral", attn_implementation="sdpa").eval()
    hub_m = AutoModelForCausalLM.from_pretrained(tmp_path / "mistral", attn_implementation=name, **extra).eval()
    with torch.no_grad():
        torch.testing.assert_close(hub_m(ids).logits, sdpa(ids).logits, rtol=1e-4, atol=1e-4)


def test_windowed_attention_refuses_what_it_cannot_run(attn, tmp_path):
    name, extra = attn
    path = _bert_with_window(tmp_path, pattern="bigbird", block=8)
    hub = AutoModelForSequenceClassification.from_pretrained(path, attn_implementation=name, **extra).eval()
    with pytest.raises(ValueError, match="'bigbird'"), torch.no_grad():
        hub(input_ids=torch.randint(5, 128, (1, 20)))
    plain = tiny_bert_classifier(seed=0, num_attention_heads=2)
    plain.save_pretrained(tmp_path / "plain")
    no_window = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "plain", attn_implementation=name, **extra
    ).eval()
    with pytest.raises(ValueError, match="no window"), torch.no_grad():
        no_window(input_ids=torch.randint(5, 128, (1, 20)))
    dropout = AutoModelForSequenceClassification.from_pretrained(
        _bert_with_window(tmp_path / "d", window=4),
        attn_implementation=name,
        attention_probs_dropout_prob=0.1,
        **extra,
    ).train()
    with pytest.raises(ValueError, match="dropout"):
        dropout(input_ids=torch.randint(5, 128, (1, 20)))


@pytest.mark.real
def test_real_minilm_through_the_hub_kernel(attn, tmp_path):
    """The packaged MiniLM with a 32-token window: the Hub kernel gives hf_sparse's outputs on real sentences."""
    from transformers import AutoModel, AutoTokenizer

    from hf_sparse.data.models import minilm_l6_path

    name, extra = attn
    source = minilm_l6_path()
    model = AutoModel.from_pretrained(source)
    apply_sparse_attention_(model, SparseAttentionConfig(window=32, global_positions=(0,)))
    model.save_pretrained(tmp_path / "minilm")
    tok = AutoTokenizer.from_pretrained(source)
    text = ["a gripping, beautifully shot film " * 12, "dull and far too long"]
    batch = tok(text, padding=True, return_tensors="pt")
    assert batch["input_ids"].shape[1] > 64
    ours = AutoModel.from_pretrained(tmp_path / "minilm", attn_implementation="hf_sparse").eval()
    hub = AutoModel.from_pretrained(tmp_path / "minilm", attn_implementation=name, **extra).eval()
    with torch.no_grad():
        want = ours(**batch).last_hidden_state
        got = hub(**batch).last_hidden_state
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], want[real], rtol=1e-4, atol=1e-4)


def test_register_hub_attention_errors(package, hub_server, kernel_cache):
    push_kernel_package(package, REPO, token="t")
    with pytest.raises(ValueError, match="has no function 'flash_attn_func'"):
        register_hub_attention(REPO, "flash_attn_func", trust_remote_code=True)
    with pytest.raises(ValueError, match="trust"):
        register_hub_attention(REPO)


class _Layer(torch.nn.Module):
    def __init__(self, config, causal, layer_idx=0):
        super().__init__()
        self.config, self.is_causal, self.layer_idx = config, causal, layer_idx


@pytest.mark.parametrize("causal", [False, True])
def test_windowed_attention_reads_padding_from_a_dense_mask(package, causal):
    """SDPA-style (B, 1, Sq, Skv) masks: the padding is read from them and the result is the 2-D-mask result; a mask
    with more structure (two packed sequences) is refused."""
    from transformers import BertConfig

    k = _local(package)
    config = BertConfig(hf_sparse_attention={"pattern": "window", "window": 5, "global_positions": [0]})
    layer = _Layer(config, causal)
    g = torch.Generator().manual_seed(0)
    q, key, v = (torch.randn(2, 2, 40, 16, generator=g) for _ in range(3))
    padding = torch.ones(2, 40, dtype=torch.bool)
    padding[1, :6] = False  # left padding
    base = torch.ones(40, 40, dtype=torch.bool)
    base = base.tril() if causal else base
    dense = base[None, None] & padding[:, None, None, :]
    want, _ = k.windowed_attention(layer, q, key, v, padding, scaling=0.25)
    got, _ = k.windowed_attention(layer, q, key, v, dense, scaling=0.25)
    real = padding  # padded query rows are never used
    torch.testing.assert_close(got[real], want[real], rtol=1e-6, atol=1e-6)
    additive = torch.zeros(dense.shape).masked_fill_(~dense, torch.finfo(torch.float32).min)
    torch.testing.assert_close(k.windowed_attention(layer, q, key, v, additive, scaling=0.25)[0][real], want[real])
    packed = dense.clone()
    packed[:, :, 20:, :20] = False  # a second sequence starts at 20
    with pytest.raises(ValueError, match="packed sequences"):
        k.windowed_attention(layer, q, key, v, packed)
    with pytest.raises(ValueError, match="mask"):
        k.windowed_attention(layer, q, key, v, dense[:, :, :, :30])
    # one mask for the whole batch (broadcast), no padding
    torch.testing.assert_close(
        k.windowed_attention(layer, q, key, v, base[None, None], scaling=0.25)[0],
        k.windowed_attention(layer, q, key, v, None, scaling=0.25)[0],
    )


def test_windowed_attention_places_queries_with_right_padding_and_static_caches(package):
    """Causal layers: right-padded query rows do not move the queries; with a static cache (key slots after the
    tokens so far not written yet) the queries sit at the end of the written tokens, not at the end of the cache."""

    k = _local(package)
    layer = _Layer(LlamaConfig(hf_sparse_attention={"pattern": "window", "window": 3}), causal=True)
    g = torch.Generator().manual_seed(1)
    q, key, v = (torch.randn(2, 2, 12, 16, generator=g) for _ in range(3))
    padding = torch.ones(2, 12, dtype=torch.bool)
    padding[1, 9:] = False  # right padding
    dense = torch.ones(12, 12, dtype=torch.bool).tril()[None, None] & padding[:, None, None, :]
    want, _ = k.windowed_attention(layer, q, key, v, padding)
    got, _ = k.windowed_attention(layer, q, key, v, dense)
    torch.testing.assert_close(got[padding], want[padding], rtol=1e-6, atol=1e-6)
    # decoding one token at position 5 of a 16-slot static cache: slots 6.. are not written
    cache_k, cache_v = torch.randn(1, 2, 16, 16, generator=g), torch.randn(1, 2, 16, 16, generator=g)
    q1 = torch.randn(1, 2, 1, 16, generator=g)
    slots = torch.zeros(1, 1, 1, 16, dtype=torch.bool)
    slots[..., :6] = True
    got, _ = k.windowed_attention(layer, q1, cache_k, cache_v, slots)
    want, _ = k.windowed_attention(layer, q1, cache_k[:, :, :6], cache_v[:, :, :6], None)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    two_d, _ = k.windowed_attention(layer, q1, cache_k, cache_v, torch.ones(1, 6, dtype=torch.bool))  # flash style
    torch.testing.assert_close(two_d, want, rtol=1e-6, atol=1e-6)
