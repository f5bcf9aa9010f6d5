"""Load a model that a job recommends in one of the machine's dense configurations.

With ``checkpoint.runtimes: true`` a compress job also times each compressed model in the machine's fastest dense
configurations (bf16, torch's dynamic int8, OpenVINO with int8 weights). When one of those is the model the report
recommends, the job saves its float32 weights with its tokenizer and ``hf_sparse_runtime.json`` (which configuration)
in ``<output>/<run>-<configuration>/``. :func:`load_runtime` gives that model back ready to run, built the way it was
measured::

    model = hf_sparse.load_runtime("hf_sparse_output/student-3layer-openvino-int8-weights")
    logits = model(**tokenizer(texts, return_tensors="pt", padding=True)).logits
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError, HfSparseError, MissingPackageError, quote
from .jobs.selection import AUTO_CLASS

__all__ = ["RUNTIME_FILE", "RUNTIMES", "RuntimeLoadError", "OpenVINOModel", "load_runtime"]

#: Written into a saved runtime pick: ``run``, ``runtime`` (one of :data:`RUNTIMES`), ``task`` and ``how``.
RUNTIME_FILE = "hf_sparse_runtime.json"

#: The configurations a job can recommend a model in.
RUNTIMES = ("bf16", "torch-dynamic-int8", "openvino-int8-weights")


class RuntimeLoadError(HfSparseError, ValueError):
    """A runtime folder cannot be loaded: no or malformed ``hf_sparse_runtime.json``, an unknown configuration or
    task, or a configuration this machine cannot build."""


class OpenVINOModel:
    """An OpenVINO compiled model called like the transformers model it was converted from: keyword tensors in
    (``input_ids``, ``attention_mask``, ... as the tokenizer returns them), an output with ``.logits`` out.

    ``input_names`` are the inputs the conversion saw; each must be given. One inference request is reused, so an
    instance serves one caller at a time."""

    def __init__(self, compiled, prepare, config, input_names: tuple[str, ...]):
        self._call = compiled
        self._prepare = prepare
        self.config = config
        self.input_names = input_names

    def __call__(self, **inputs: Any):
        from transformers.modeling_outputs import ModelOutput

        tensors = {k: v for k, v in inputs.items() if torch.is_tensor(v)}
        try:
            feeds = self._prepare(tensors)
        except KeyError as exc:
            raise RuntimeLoadError(
                f"the OpenVINO model needs the input {quote(exc.args[0] if exc.args else exc)}; pass the tokenizer's "
                f"whole output (got {quote(sorted(tensors))})."
            ) from None
        out = torch.from_numpy(_copy(self._call(feeds)))
        return ModelOutput(logits=out)

    def eval(self) -> OpenVINOModel:
        return self


def _copy(array):
    import numpy as np

    return np.array(array, copy=True)  # the request's output buffer is reused by the next call


def load_runtime(folder: str | Path) -> Any:
    """The model saved in ``folder`` (a job's ``<output>/<run>-<configuration>/``), in the configuration it was
    recommended in:

    - ``bf16``: the transformers model in bfloat16;
    - ``torch-dynamic-int8``: the transformers model with torch's dynamic int8 ``Linear`` layers;
    - ``openvino-int8-weights``: an :class:`OpenVINOModel`, converted by OpenVINO with every MatMul weight int8 (one
      scale per output channel) and compiled for this CPU with torch's thread count, exactly as the job measured it,
      and checked against the float32 model on one example. Needs ``pip install 'hf-sparse[bench]'``.

    Raises:
        RuntimeLoadError: ``folder`` has no readable ``hf_sparse_runtime.json``, names an unknown configuration or
            task, or this machine cannot build the configuration (e.g. OpenVINO cannot convert the model).
        MissingPackageError: OpenVINO is needed and not installed.
    """
    import transformers

    folder = Path(folder)
    meta = _read_meta(folder)
    runtime, task = meta["runtime"], meta.get("task", "text-classification")
    where = quote(str(folder / RUNTIME_FILE))
    if runtime not in RUNTIMES:
        raise RuntimeLoadError(f"{where}: unknown configuration {quote(runtime)}; known: {', '.join(RUNTIMES)}.")
    if task not in AUTO_CLASS:
        raise RuntimeLoadError(f"{where}: unknown task {quote(task)}; known: {', '.join(AUTO_CLASS)}.")
    if runtime == "openvino-int8-weights" and task != "text-classification":
        raise RuntimeLoadError(
            f"{where}: OpenVINO is only measured and loaded for text classification, not {quote(task)}."
        )
    auto = getattr(transformers, AUTO_CLASS[task])
    if runtime == "bf16":
        return auto.from_pretrained(folder, dtype=torch.bfloat16).eval()
    model = auto.from_pretrained(folder).eval()
    if runtime == "torch-dynamic-int8":
        from .benchmarking import dynamic_int8

        int8 = dynamic_int8(model)
        if int8 is None:
            raise RuntimeLoadError(f"torch's dynamic int8 is not available in this torch build ({torch.__version__}).")
        return int8.eval()
    return _openvino(folder, model)


def _read_meta(folder: Path) -> dict:
    path = folder / RUNTIME_FILE
    if not path.is_file():
        raise RuntimeLoadError(
            f"{quote(str(path))} not found: load_runtime reads a folder a compress job saved as its recommended model "
            "in a machine configuration (<output>/<run>-<configuration>/); load other checkpoints with "
            "from_pretrained."
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RuntimeLoadError(f"{quote(str(path))} is not readable JSON: {quote(str(exc))}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("runtime"), str):
        raise RuntimeLoadError(f"{quote(str(path))} must be a JSON object with a string 'runtime', got {quote(meta)}.")
    if "task" in meta and not isinstance(meta["task"], str):
        raise RuntimeLoadError(f"{quote(str(path))}: 'task' must be a string, got {quote(meta['task'])}.")
    return meta


def _openvino(folder: Path, model) -> OpenVINOModel:
    from transformers import AutoTokenizer

    from .benchmarking import dense_model_baselines

    try:
        import openvino  # noqa: F401
    except ImportError:
        raise MissingPackageError(
            "OpenVINO (configuration openvino-int8-weights)", "pip install 'hf-sparse[bench]'"
        ) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{quote(str(folder))}: cannot read the saved tokenizer: {quote(str(exc))}") from None
    accepted = inspect.signature(model.forward).parameters
    encoded = tokenizer(["an example sentence to convert the model with"], return_tensors="pt")
    example = {k: v for k, v in encoded.items() if k in accepted}  # e.g. no token_type_ids for DistilBERT
    built = dense_model_baselines(model, example, include=("fp32", "openvino-int8-weights"))
    baseline = built.baselines.get("openvino-int8-weights")
    if baseline is None:
        why = built.skipped.get("openvino-int8-weights", "not built")
        raise RuntimeLoadError(
            f"{quote(str(folder))}: OpenVINO with int8 weights could not be built here: {quote(why, 400)}"
        )
    return OpenVINOModel(baseline.fns[0], baseline.prepare, model.config, tuple(example))
