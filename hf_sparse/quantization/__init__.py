"""Quantisation: fake quantisation with straight-through gradients, observers, learned step sizes,
quantisation-aware training (prepare, then convert), post-training quantisation with calibration, per-layer mixed
precision from a measured sensitivity scan, and integer layers that save and load.

Typical use::

    config = QuantizationConfig(weight=QuantScheme(bits=4, granularity="group", group_size=64))
    trainer = Trainer(model=model, ..., callbacks=[QATCallback(config)])   # prepare_qat_ happens at init
    trainer.train()
    convert_(model)                  # QATLinear -> QuantLinear (int4 codes + scales)
    model.save_pretrained("out")     # from_pretrained("out") after `import hf_sparse` gives the same predictions

    quantize_(model, QuantizationConfig(activation="static"), calibration_batches)   # PTQ
"""

from .._import_hooks import lazy_attributes
from ..formats.schemes import QuantScheme, dequantize, fake_quantize, qparams_from_range, qrange, quantize
from ..nn.observers import Observer
from .config import DEFAULT_ACTIVATION, QuantizationConfig

__all__ = [
    "QuantizationConfig",
    "QuantScheme",
    "DEFAULT_ACTIVATION",
    "Observer",
    "fake_quantize",
    "quantize",
    "dequantize",
    "qparams_from_range",
    "qrange",
    "prepare_qat_",
    "convert_",
    "quantize_",
    "calibrate_",
    "set_weight_bits",
    "choose_bits",
    "quantization_report",
]

_LAZY = {
    "prepare_qat_": ".apply",
    "convert_": ".apply",
    "quantize_": ".apply",
    "calibrate_": ".apply",
    "set_weight_bits": ".apply",
    "quantization_report": ".apply",
    "choose_bits": ".sensitivity",
}


# The model transforms import the nn modules and the ops: loaded on first use, so that reading a recipe's
# quantisation section (the config and the schemes) stays cheap.
__getattr__ = lazy_attributes(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
