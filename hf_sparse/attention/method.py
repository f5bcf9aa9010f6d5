"""The registration of sparse attention as a method. See :mod:`hf_sparse.method` for the hooks."""

from __future__ import annotations

from ..errors import ConfigError
from ..method import Method, register_method
from .apply import apply_sparse_attention_
from .config import SparseAttentionConfig

__all__ = ["ATTENTION", "attention_tag", "attention_description"]


def attention_tag(cfg: SparseAttentionConfig) -> str:
    """A short name of the pattern for run names: ``window64``, ``dilated32x2``, ``bigbird`` (+ ``-global``)."""
    if cfg.pattern == "window":
        base = f"window{cfg.window}"
    elif cfg.pattern == "dilated":
        base = f"dilated{cfg.window}x{cfg.dilation}"
    else:
        base = cfg.pattern
    return base + ("-global" if cfg.global_positions or cfg.global_token_ids else "")


def attention_description(cfg: SparseAttentionConfig) -> str:
    """The pattern in words."""
    if cfg.pattern == "window":
        what = f"sliding-window attention (±{cfg.window} tokens)"
    elif cfg.pattern == "dilated":
        what = f"dilated-window attention (every {cfg.dilation}th token within ±{cfg.window * cfg.dilation})"
    elif cfg.pattern == "bigbird":
        what = f"BigBird block-sparse attention ({cfg.block}-token blocks)"
    else:
        what = "full attention"
    if cfg.global_positions:
        what += f" with global positions {list(cfg.global_positions)}"
    if cfg.global_token_ids:
        what += f" and global token ids {list(cfg.global_token_ids)}"
    return what


def _preflight(model, cfg: SparseAttentionConfig, where: str, info: dict) -> None:
    layers = getattr(model.config, "num_hidden_layers", None)
    beyond = [i for i in cfg.layers if layers is not None and i >= layers]
    if beyond:
        raise ConfigError(
            f"{where}attention.layers {beyond} are beyond the model's {layers} layers (0-based indices)."
        )
    apply_sparse_attention_(model, cfg)


ATTENTION = register_method(
    Method(
        name="attention",
        config_class=SparseAttentionConfig,
        apply=apply_sparse_attention_,
        order=10,
        preflight=_preflight,
        start=lambda model, cfg, ctx: apply_sparse_attention_(model, cfg),
        tag=lambda cfg: (4, attention_tag(cfg)),
        describe=attention_description,
        record=lambda cfg, ctx: {
            "attention": {"config": cfg.to_dict(header=False), "description": attention_description(cfg)}
        },
    )
)
