"""``import hf_sparse`` is cheap and registers, as soon as transformers loads models, exactly what
``from_pretrained`` of a saved sparse checkpoint needs; the Trainer, peft, datasets and plotting load when first
used."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("transformers.trainer", "transformers.modeling_utils", "peft", "datasets", "matplotlib", "bitsandbytes")


def _run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_loads_no_trainer_peft_datasets_or_plotting():
    loaded = _run(
        "import sys, json, hf_sparse; "
        f"print(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}} | {{'torch': 'torch' in sys.modules}}))"
    )
    assert not any(loaded[m] for m in HEAVY), loaded


@pytest.mark.parametrize(
    "first",
    [
        "import hf_sparse; from transformers import AutoModel",
        "import transformers.modeling_utils; import hf_sparse",  # transformers first: registered at once
        "import hf_sparse; import peft",  # modeling_utils reached deep inside another import
        "import hf_sparse; from transformers import Trainer",
        "from hf_sparse.recsys.modeling import SASRecForNextItem",
        # a model class whose module imports transformers.modeling_layers (which imports the auto models) first
        "import hf_sparse; from transformers import T5ForConditionalGeneration",
        "import hf_sparse; from transformers import LlamaForCausalLM",
    ],
)
def test_registrations_happen_whichever_module_is_imported_first(first):
    found = _run(
        f"{first}\n"
        "import json\n"
        "from transformers import AttentionInterface, AutoModel\n"
        "from transformers.masking_utils import AttentionMaskInterface\n"
        "from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING\n"
        "from hf_sparse.recsys.config import SASRecConfig\n"
        "print(json.dumps({\n"
        "  'attention': 'hf_sparse' in AttentionInterface._global_mapping,\n"
        "  'mask': 'hf_sparse' in AttentionMaskInterface._global_mapping,\n"
        "  'quantizer': 'hf_sparse' in AUTO_QUANTIZER_MAPPING and 'hf_sparse' in AUTO_QUANTIZATION_CONFIG_MAPPING,\n"
        "  'auto_model': type(AutoModel.from_config(SASRecConfig(num_items=8))).__name__,\n"
        "}))\n"
    )
    assert found == {"attention": True, "mask": True, "quantizer": True, "auto_model": "SASRecForNextItem"}


def test_public_names_resolve_lazily_and_unknown_ones_raise():
    import hf_sparse

    for name in hf_sparse.__all__:
        assert getattr(hf_sparse, name) is not None, name
    assert set(hf_sparse.__all__) <= set(dir(hf_sparse))
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        hf_sparse.no_such_name  # noqa: B018


def test_when_imported_runs_a_hook_after_the_module_or_at_once():
    code = (
        "import json, sys\n"
        "from hf_sparse._import_hooks import when_imported\n"
        "seen = []\n"
        "when_imported('json', lambda m: seen.append(('now', m.__name__)))\n"
        "assert 'colorsys' not in sys.modules\n"
        "when_imported('colorsys', lambda m: seen.append(('later', m.__name__, hasattr(m, 'rgb_to_hsv'))))\n"
        "import colorsys\n"
        "import colorsys\n"  # once only
        "print(json.dumps(seen))\n"
    )
    assert _run(code) == [["now", "json"], ["later", "colorsys", True]]
