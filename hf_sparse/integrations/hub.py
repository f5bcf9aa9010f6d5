"""Publishing sparse checkpoints: the model card (with its per-layer density plot) and the push to the Hub.

The card is rendered with huggingface_hub's ``ModelCard`` / ``ModelCardData`` from the Jinja template in
``model_cards/``. Its numbers come from two places in the checkpoint folder: the sparse layers' formats, shapes and
bytes are read from ``config.json`` and the safetensors headers (:func:`~hf_sparse.integrations.inspect.
inspect_checkpoint`), and what was *measured* — accuracy of the model against its dense baseline, latency against
the dense model on a named machine, disk size of the dense checkpoint — from ``hf_sparse_results.json``, which
``hf-sparse compress`` writes next to the weights. Nothing that was not measured is printed as if it were.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import FormatError, HfSparseError, quote
from ..resilience import atomic_write_text, confined_path

__all__ = ["RESULTS_FILE", "PLOT_FILE", "HubError", "write_model_card", "push_to_hub"]

#: Measured results stored beside the weights by ``hf-sparse compress`` and read by the model card.
RESULTS_FILE = "hf_sparse_results.json"
#: The per-layer density plot the card shows.
PLOT_FILE = "density.png"
_TEMPLATE = "sparse-model.md"


class HubError(HfSparseError, RuntimeError):
    """A push to the Hub failed: nothing was uploaded (the message says what was written locally first, the model
    card); pushing again retries."""


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def _auto_class(config: dict) -> str:
    arch = (config.get("architectures") or [""])[0]
    for suffix, auto in (
        ("ForSequenceClassification", "AutoModelForSequenceClassification"),
        ("ForTokenClassification", "AutoModelForTokenClassification"),
        ("ForQuestionAnswering", "AutoModelForQuestionAnswering"),
        ("ForMaskedLM", "AutoModelForMaskedLM"),
        ("ForCausalLM", "AutoModelForCausalLM"),
    ):
        if arch.endswith(suffix):
            return auto
    return "AutoModel"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def write_model_card(folder: str | Path, *, repo_id: str | None = None, results: dict | None = None):
    """Write ``README.md`` (the model card) and ``density.png`` into a saved checkpoint folder.

    Args:
        folder: A folder written by ``save_pretrained`` (sparse, or dense with zeros).
        repo_id: The Hub id the card's usage example loads (default: the folder path).
        results: Measured results (default: the folder's ``hf_sparse_results.json``, if any). Keys used:
            ``base_model``, ``title``, ``summary``, ``method``, ``dataset``, ``pipeline_tag``, ``recipe_file``,
            ``accuracy`` {metric, split, examples, seed, dense, compressed} (the task's compared metric: accuracy,
            entity F1, masked-LM perplexity), ``metric_ids`` (the Hub metric ids of the card's metadata; default the
            compared metric's name), ``nonzero_params``,
            ``dense_nonzero_params``, ``dense_checkpoint_bytes``, ``latency`` {batch, seq, threads, rounds, ours_s,
            dense_s, speedup, machine, torch; where every dense configuration was timed also best_dense, best_dense_s,
            ratio_vs_best_dense, dense_baselines_s}, ``layers`` {name: sparsity} (for dense-stored checkpoints).

    Returns:
        The ``huggingface_hub.ModelCard`` that was written.

    Raises:
        FormatError: the folder has no ``config.json`` or unreadable weights.
    """
    from huggingface_hub import ModelCard, ModelCardData

    from .._resources import data_dir
    from .inspect import inspect_checkpoint
    from .plot import density_plot_png

    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FormatError(f"{folder}: no config.json; is this a folder written by save_pretrained?")
    config = json.loads(config_file.read_text())
    if results is None:
        results_file = folder / RESULTS_FILE
        results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    sparse = (config.get("quantization_config") or {}).get("quant_method") == "hf_sparse"

    layers: list[dict[str, Any]] = []
    densities: dict[str, float] = {}
    formats: dict[str, str] = {}
    disk_bytes = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    if sparse:
        report = inspect_checkpoint(folder)
        for layer in report["layers"]:
            densities[layer["name"]] = layer["stored_fraction"]
            formats[layer["name"]] = layer["format"]
            layers.append(
                {
                    "name": layer["name"],
                    "format": layer["format"],
                    "shape": "×".join(map(str, layer["shape"])),
                    "stored": _pct(layer["stored_fraction"]),
                    "bytes": f"{layer['bytes']:,}",
                }
            )
    # Layers pruned but kept dense (the format choice found no faster sparse format) are plotted too.
    for name, sparsity in (results.get("layers") or {}).items():
        if name not in densities:
            densities[name] = 1.0 - float(sparsity)
            formats[name] = "dense"
    if densities:
        density_plot_png(densities, confined_path(folder, PLOT_FILE), formats=formats)

    base_model = results.get("base_model")
    accuracy = results.get("accuracy")
    card_data = ModelCardData(
        base_model=base_model,
        library_name="transformers",
        pipeline_tag=results.get("pipeline_tag"),
        datasets=[results["dataset"]] if results.get("dataset") else None,
        metrics=list(results.get("metric_ids") or ([accuracy["metric"]] if accuracy else [])) or None,
        tags=["hf_sparse", "sparse", "pruning", *(["sparse-checkpoint"] if sparse else [])],
    )
    latency = results.get("latency")
    if latency:
        latency = {
            **latency,
            "ours_ms": f"{1e3 * latency['ours_s']:.1f}",
            "dense_ms": f"{1e3 * latency['dense_s']:.1f}",
            "speedup": f"{latency['speedup']:.2f}",
        }
        if latency.get("best_dense") and latency.get("best_dense_s"):  # jobs that timed every dense configuration
            latency["best_dense_ms"] = f"{1e3 * latency['best_dense_s']:.1f}"
            latency["ratio_vs_best_dense"] = f"{latency['ratio_vs_best_dense']:.2f}"
            others = sorted(set(latency.get("dense_baselines_s") or {}) - {latency["best_dense"]})
            latency["also_timed"] = ", ".join(others)
    if accuracy:
        accuracy = {**accuracy, "dense": f"{accuracy['dense']:.4f}", "compressed": f"{accuracy['compressed']:.4f}"}
    dense_disk = results.get("dense_checkpoint_bytes")
    card = ModelCard.from_template(
        card_data,
        template_path=str(data_dir("model_cards") / _TEMPLATE),
        title=results.get("title") or f"Sparse {config.get('model_type', 'model')}",
        summary=results.get("summary")
        or (f"A pruned version of `{base_model}`." if base_model else "A pruned model saved with hf_sparse."),
        method=results.get("method") or "Pruned and converted with hf_sparse.",
        dataset=results.get("dataset") or "the evaluation data",
        layers=layers,
        structured=bool((config.get("quantization_config") or {}).get("structure")),
        n_sparse=sum(1 for f in formats.values() if f != "dense"),
        n_layers=len(densities),
        format_counts=", ".join(f"{n} {f}" for f, n in Counter(formats.values()).most_common()),
        disk_bytes=_human_bytes(disk_bytes),
        dense_disk_bytes=_human_bytes(dense_disk) if dense_disk else "not measured",
        disk_ratio=_pct(disk_bytes / dense_disk) if dense_disk else "an unmeasured fraction",
        accuracy=accuracy,
        latency=latency,
        nonzero=f"{results['nonzero_params']:,}" if "nonzero_params" in results else "–",
        dense_nonzero=f"{results['dense_nonzero_params']:,}" if "dense_nonzero_params" in results else "–",
        auto_class=_auto_class(config),
        repo_id=repo_id or str(folder),
        recipe_file=results.get("recipe_file"),
    )
    atomic_write_text(confined_path(folder, "README.md"), str(card))
    return card


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    endpoint: str | None = None,
    refresh_card: bool = True,
) -> str:
    """Upload a saved sparse checkpoint folder to the Hub (or any Hub-compatible endpoint), with its model card.

    The card (``README.md``) and ``density.png`` are (re)written into the folder first, with ``repo_id`` in the
    usage example, unless ``refresh_card=False``. The repository is created if needed; the whole folder is uploaded
    in one commit, so a failed push leaves the repository at its previous revision. A failure deletes nothing locally
    and its message names what was written before the upload (the card); pushing again retries (files the server
    already holds are not sent twice).

    Args:
        folder: A folder written by ``save_pretrained`` (typically by ``hf-sparse compress``).
        repo_id: ``"user/name"`` of the model repository.
        token, private, revision, commit_message: As in ``huggingface_hub.HfApi.upload_folder``.
        endpoint: Hub URL (default: ``HF_ENDPOINT`` or the public Hub).
        refresh_card: Rewrite the model card from the folder's contents before uploading.

    Returns:
        The URL of the commit.

    Raises:
        FormatError: ``folder`` is not a saved model folder. HubError: the server refused or failed the push; the
            message carries the server's answer.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise FormatError(f"{folder}: not a saved model folder (needs config.json and .safetensors weights).")
    card_files = ("README.md", PLOT_FILE)
    before = {name: _stamp(folder / name) for name in card_files}
    if refresh_card:
        write_model_card(folder, repo_id=repo_id)
    written = [name for name in card_files if _stamp(folder / name) not in (None, before[name])]
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            revision=revision,
            commit_message=commit_message or "Upload sparse checkpoint with hf_sparse",
            ignore_patterns=[".cache/**", "*.tmp"],
        )
    except Exception as exc:  # HfHubHTTPError, connection errors, timeouts: all mean the same to the user
        local = (
            f"Written locally before the upload: {', '.join(str(folder / name) for name in written)} (the model card "
            "for this repository); nothing else in the folder was changed."
            if written
            else "Nothing in the local folder was changed."
        )
        again = ["hf-sparse", "push", str(folder), repo_id]
        again += [*(["--revision", revision] if revision else []), *(["--private"] if private else [])]
        raise HubError(
            f"Pushing {folder} to {quote(repo_id)} at {api.endpoint} failed: {type(exc).__name__}: "
            f"{quote(str(exc), 300)}. Nothing was uploaded: the repository keeps its previous revision (or "
            f"does not exist yet). {local} Retry, once the Hub can be reached and you are logged in (`hf auth "
            f"login` or HF_TOKEN), with: {' '.join(again)}"
        ) from exc
    return str(getattr(info, "commit_url", info))


def _stamp(path: Path) -> tuple[int, int] | None:
    """A file's modification time and size (None when it does not exist): whether a write changed it."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size
