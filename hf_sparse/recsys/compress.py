"""``hf-sparse recsys``: a next-item recommender (MovieLens 100K, or the user's own interactions file), dense and
with each compressed item table, side by side.

A :class:`RecsysRecipe` names the data, the model, the dense training, and one run per compressed-table method
(:class:`~hf_sparse.embeddings.TableCompression`: row-wise int8/4/2, hashing, QR, TT, row pruning, low rank, each
optionally frequency-aware). :func:`run_recsys` trains the dense baseline, then each run: a copy of the trained
model whose item table is compressed from the trained one (``init: fit``) and fine-tuned, or a fresh model with a
compressed table trained from scratch (``init: random``). Every model is saved (``save_pretrained``), reloaded
with ``from_pretrained`` and checked to rank identically; ``report.json`` and ``report.md`` hold HR@10 and
NDCG@10 on the test users, ranked over all items, with the item table's memory beside the dense one. Each saved
model folder also holds the item id mapping (:data:`~hf_sparse.recsys.data.ITEM_IDS_FILE`: the data's own id of
each model item id) and a model card (``README.md``) naming the data and its counts.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import torch
import yaml

from ..config import BaseConfig, check_name, check_seed, register_config
from ..embeddings import EmbeddingCompressionConfig, TableCompression
from ..errors import ConfigError, RecipeError, quote
from ..jobs.plan import RunPlan, Stage
from ..jobs.report import machine_label, vs_best_dense
from ..jobs.sections import check_latency_baselines
from ..machine import machine_info
from ..resilience import atomic_folder, atomic_write_text, confined_path, remove_stale_partials

__all__ = [
    "RecsysRecipe",
    "RecsysDataSection",
    "RecsysModelSection",
    "RecsysTrainSection",
    "run_recsys",
    "load_recsys_recipe",
]

logger = logging.getLogger(__name__)

#: What ``hf-sparse recsys`` writes in its output folder besides the runs (a run's name must not be one of them).
RECSYS_OUTPUTS = ("dense", "dense-continued", "trainer", "recipe.yaml", "report.json", "report.md")


#: The roles a recsys recipe's ``data.columns`` maps.
DATA_ROLES = ("user", "item", "timestamp")


@register_config("recsys_data")
@dataclasses.dataclass(frozen=True)
class RecsysDataSection(BaseConfig):
    """The interaction log (:func:`~hf_sparse.recsys.data.load_interactions`).

    Args:
        dataset: ``movielens-100k`` (the packaged MovieLens 100K ratings), or your own data: a CSV / TSV / JSON /
            JSONL / parquet file or a folder written by ``save_to_disk`` (a relative path is read relative to the
            recipe file's folder), or a Hub dataset id present in the local cache. One row per interaction: a user, an
            item (any string or integer ids) and, optionally, a timestamp (without one, the file's row order is the
            time order).
        files: ``{train: FILE}`` instead of ``dataset`` (the whole history is one table: the job splits each user's
            history by time itself, so no other split is taken).
        columns: role (``user``, ``item``, ``timestamp``) -> your column's name, for columns without a conventional
            name (user/user_id/userId, item/item_id/movie_id/itemId, timestamp/time/ts).
        min_interactions: users with fewer interactions are dropped (leave-one-out needs 3: one to train on, one to
            validate, one to test).
        min_item_count: items seen fewer times are dropped before the users are counted (1: keep every item).

    Rows repeating an earlier row's (user, item, timestamp) are dropped as double-logged events; the same item at
    another time is kept (a repeat purchase is a real next item). Without a timestamp column every row is its own
    event, so none is dropped as a repeat. The report says how many rows each rule dropped.
    """

    dataset: str = "movielens-100k"
    files: dict[str, str] | None = None
    columns: dict[str, str] = dataclasses.field(default_factory=dict)
    min_interactions: int = 3
    min_item_count: int = 1

    def validate(self) -> None:
        from .data import MOVIELENS_100K

        if not self.dataset.strip():
            raise ConfigError(
                f"RecsysDataSection.dataset must name the data ({MOVIELENS_100K}, a file, a folder or a cached Hub "
                "dataset id), got ''."
            )
        if self.files is not None:
            if self.dataset != MOVIELENS_100K:
                raise ConfigError(
                    f"RecsysDataSection.files and RecsysDataSection.dataset ({quote(self.dataset)}) both name the "
                    "data: give one of them."
                )
            other = sorted(k for k in self.files if k != "train")
            if other or "train" not in self.files:
                where = f"RecsysDataSection.files.{other[0]}" if other else "RecsysDataSection.files"
                raise ConfigError(
                    f"{where}: the recommender reads one table, files: {{train: FILE}} (got keys "
                    f"{sorted(self.files)}): it holds out each user's last two interactions for validation and test "
                    "itself, so the whole history is one file."
                )
            if not self.files["train"].strip():
                raise ConfigError("RecsysDataSection.files.train must name a file, got ''.")
        unknown = sorted(set(self.columns) - set(DATA_ROLES))
        if unknown:
            raise ConfigError(
                f"RecsysDataSection.columns has unknown roles {unknown}; the roles are {list(DATA_ROLES)} (role: your "
                "column's name)."
            )
        if self.columns and self.uses_movielens:
            raise ConfigError(
                f"RecsysDataSection.columns apply to your own data; {MOVIELENS_100K} has fixed columns. Set "
                "RecsysDataSection.dataset to your file."
            )
        if self.min_interactions < 3:
            raise ConfigError(
                f"RecsysDataSection.min_interactions must be >= 3 (one interaction to train on, one to validate, one "
                f"to test), got {self.min_interactions}."
            )
        if self.min_item_count < 1:
            raise ConfigError(
                f"RecsysDataSection.min_item_count must be >= 1 (1: keep every item), got {self.min_item_count}."
            )

    @property
    def uses_movielens(self) -> bool:
        """The packaged MovieLens 100K (no file given)."""
        from .data import MOVIELENS_100K

        return self.files is None and self.dataset == MOVIELENS_100K

    def source(self) -> str | dict[str, str]:
        """What :func:`~hf_sparse.recsys.data.load_interactions` reads."""
        return dict(self.files) if self.files is not None else self.dataset

    def load(self):
        """The interactions (:class:`~hf_sparse.recsys.data.Interactions`).

        Raises:
            DataError: the data cannot be read or too little of it is left (the message names file and column).
        """
        from .data import load_interactions

        return load_interactions(
            self.source(),
            columns=self.columns or None,
            min_interactions=self.min_interactions,
            min_item_count=self.min_item_count,
        )


@register_config("recsys_model")
@dataclasses.dataclass(frozen=True)
class RecsysModelSection(BaseConfig):
    """The SASRec model (:func:`~hf_sparse.recsys.movielens_config` fields)."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    intermediate_size: int = 256
    max_len: int = 50
    dropout: float = 0.2

    def validate(self) -> None:
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"RecsysModelSection.{key} must be >= 1, got {getattr(self, key)}.")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"RecsysModelSection.hidden_size {self.hidden_size} must be divisible by "
                f"RecsysModelSection.num_attention_heads {self.num_attention_heads}."
            )
        if self.max_len < 2:
            raise ConfigError(f"RecsysModelSection.max_len must be >= 2, got {self.max_len}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"RecsysModelSection.dropout must be in [0, 1), got {self.dropout}.")


@register_config("recsys_train")
@dataclasses.dataclass(frozen=True)
class RecsysTrainSection(BaseConfig):
    """Training of one model (the stock ``Trainer``; constant learning rate)."""

    epochs: float = 30.0
    learning_rate: float = 2e-3
    batch_size: int = 128

    def validate(self) -> None:
        for key in ("epochs", "learning_rate"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"RecsysTrainSection.{key} must be > 0, got {getattr(self, key)}.")
        if self.batch_size < 1:
            raise ConfigError(f"RecsysTrainSection.batch_size must be >= 1, got {self.batch_size}.")


@register_config("recsys_recipe")
@dataclasses.dataclass(frozen=True)
class RecsysRecipe(BaseConfig):
    """A recommender compression job on MovieLens 100K or your own interactions.

    Args:
        task: ``recsys`` (what tells this recipe from a ``hf-sparse compress`` one).
        name: a label for the report.
        seed: initialisation, dropout and data order of every run.
        data: the interaction log (default: MovieLens 100K).
        users: train and evaluate on the first ``users`` users only (in order of first appearance in the data;
            null: all of them; for quick checks).
        model: the SASRec model.
        dense: training of the dense baseline (and of every ``init: random`` run, from scratch).
        finetune: training of every ``init: fit`` run, starting from the trained dense model. With such runs, the
            dense model is also trained for the same extra epochs (``dense-continued``), the fair control.
        runs: run name -> how the item table is compressed.
        verify: reload every saved model with ``from_pretrained`` and check identical rankings.
        latency_rounds: interleaved rounds timing each run's model against every dense configuration of the
            trained dense model on this machine (next-item scores over all items for :data:`LATENCY_USERS` test
            users, one forward pass); 0: none.
        latency_baselines: the dense configurations timed (``checkpoint.latency_baselines`` of a classification
            recipe: ``fp32`` must be among them; null: every one this machine has).
    """

    task: Literal["recsys"] = "recsys"
    name: str = "movielens-sasrec"
    seed: int = 42
    data: RecsysDataSection = dataclasses.field(default_factory=RecsysDataSection)
    users: int | None = None
    model: RecsysModelSection = dataclasses.field(default_factory=RecsysModelSection)
    dense: RecsysTrainSection = dataclasses.field(default_factory=RecsysTrainSection)
    finetune: RecsysTrainSection = dataclasses.field(
        default_factory=lambda: RecsysTrainSection(epochs=10.0, learning_rate=1e-3)
    )
    runs: dict[str, TableCompression] = dataclasses.field(default_factory=dict)
    verify: bool = True
    latency_rounds: int = 20
    latency_baselines: tuple[str, ...] | None = None

    def validate(self) -> None:
        check_seed(self.seed, "seed")
        if self.users is not None and self.users < 2:
            raise ConfigError(f"users must be >= 2 (or null for all), got {self.users}.")
        check_name(self.name, "name")
        for label in self.runs:
            # Each run is saved as ``<output>/<label>``, beside the dense ones and the job's own files.
            check_name(label, "runs", taken=RECSYS_OUTPUTS)
        if self.latency_rounds < 0:
            raise ConfigError(f"latency_rounds must be >= 0 (0: none), got {self.latency_rounds}.")
        check_latency_baselines(self.latency_baselines, "latency_baselines")


def load_recsys_recipe(path: str | Path) -> RecsysRecipe:
    """Read and validate a recsys recipe (YAML).

    Raises:
        RecipeError: the file is not YAML, or a key or value is wrong (the message names it).
    """
    # The one recipe loader: the same YAML dialect, bounds and key-to-line error anchoring as every recipe format.
    from ..recipe_yaml import read_recipe_yaml, validate_recipe_document

    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"No recipe file {quote(str(path))}.")
    data, root = read_recipe_yaml(path)
    if data is None:
        data = {}
    from ..recipe_yaml import recipe_task

    if isinstance(data, dict) and data.get("task") is not None and recipe_task(data) != "recsys":
        raise RecipeError(
            f"{path}: task is {quote(data.get('task'))}, but `hf-sparse recsys` reads `task: recsys` recipes; run it "
            f"with `hf-sparse compress {path}`, which picks the job from its task."
        )
    if isinstance(data, dict):
        data.pop("version", None)
    from ..recipe_yaml import resolve_paths  # relative paths: against the recipe file's folder, as every recipe's

    recipe = validate_recipe_document(RecsysRecipe, data, root, path, "task: recsys, model:, runs: ...")
    return resolve_paths(recipe, path.resolve().parent)


def _model(recipe: RecsysRecipe, num_items: int):
    from .train import sasrec_for_movielens

    m = recipe.model
    return sasrec_for_movielens(
        seed=recipe.seed,
        num_items=num_items,
        hidden_size=m.hidden_size,
        num_hidden_layers=m.num_hidden_layers,
        num_attention_heads=m.num_attention_heads,
        intermediate_size=m.intermediate_size,
        max_position_embeddings=m.max_len,
        hidden_dropout_prob=m.dropout,
        attention_probs_dropout_prob=m.dropout,
    )


def _train(model, splits, section: RecsysTrainSection, recipe: RecsysRecipe, work: Path) -> float:
    from .train import train_recommender

    t0 = time.perf_counter()
    train_recommender(
        model,
        splits,
        work,
        epochs=section.epochs,
        learning_rate=section.learning_rate,
        batch_size=section.batch_size,
        seed=recipe.seed,
        max_len=recipe.model.max_len,
        disable_tqdm=False,  # a progress bar per run: the whole job takes minutes
    )
    return time.perf_counter() - t0


def _metrics(model, splits, max_len: int) -> dict[str, float]:
    from .metrics import evaluate_ranking

    model.eval()
    out = {}
    for split in ("valid", "test"):
        m = evaluate_ranking(model, splits, split=split, k=10, max_len=max_len)
        out[f"{split}_hr@10"], out[f"{split}_ndcg@10"] = m["hr@10"], m["ndcg@10"]
    return out


def _top10(model, splits, max_len: int) -> torch.Tensor:
    """Each test user's top-10 item ids (what a reloaded model must reproduce)."""
    from .data import left_pad

    histories = [h[-max_len:] for h in splits.history("test")]
    ids = left_pad(histories)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=(ids != 0).long(), logits_to_keep=1).logits[:, -1]
    return logits.topk(10, dim=-1).indices


def _save(model, folder: Path, item_ids: dict | None) -> None:
    """``save_pretrained`` plus the item id mapping (the data's own id of each model item id), in one atomic folder."""
    from .data import ITEM_IDS_FILE

    with atomic_folder(folder) as tmp:
        model.save_pretrained(tmp)
        if item_ids is not None:
            (tmp / ITEM_IDS_FILE).write_text(json.dumps(item_ids, indent=1) + "\n", encoding="utf-8")


def _verify(model, folder: Path, splits, max_len: int) -> dict[str, Any]:
    from transformers import AutoModel

    before = _top10(model, splits, max_len)
    reloaded = AutoModel.from_pretrained(folder)
    after = _top10(reloaded, splits, max_len)
    return {"identical_top10": bool(torch.equal(before, after)), "users": int(before.shape[0])}


#: Test users whose next-item scores one latency call computes (a batch of requests).
LATENCY_USERS = 64


class NextItemScores(torch.nn.Module):
    """What the recommender serves, as a module of tensors only (what the dense baselines export and quantise):
    the scores of every real item (padding column left out) as the next one after each history.

    Shapes:
        input_ids, attention_mask: (users, length). output: (users, num_items).
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # The padding column holds the dtype's minimum: it would swamp every relative error of a baseline check.
        return self.model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1).logits[:, -1, 1:]


def _table_bytes(model) -> int:
    table = model.item_embeddings
    if hasattr(table, "weight_format"):
        return int(table.weight_format().nbytes)
    return int(table.weight.numel() * table.weight.element_size())


class RecsysTask:
    """The recommender task of the stage loop (:func:`~hf_sparse.jobs.runner.run_plan`): SASRec on leave-one-out
    splits, HR@10 / NDCG@10 by full ranking, the item table's id frequencies for hot rows."""

    metric = "test_hr@10"

    def __init__(self, recipe: RecsysRecipe, splits, dense, freq: torch.Tensor, item_ids: dict | None = None):
        self.recipe, self.splits, self.dense_model, self.freq = recipe, splits, dense, freq
        self.item_ids = item_ids  # the ITEM_IDS_FILE record saved with every model (None: none saved)
        self.default_train = recipe.finetune
        self.seed = recipe.seed
        self._dense_baselines = None  # built on the first latency measurement, reused by every run

    def latency_inputs(self) -> dict[str, torch.Tensor]:
        """The latency case: the first :data:`LATENCY_USERS` test users' histories (most recent ``max_len``
        items), left-padded."""
        from .data import left_pad

        histories = [h[-self.recipe.model.max_len :] for h in self.splits.history("test")[:LATENCY_USERS]]
        ids = left_pad(histories)
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}

    def latency(self, model, rounds: int) -> dict:
        """``model``'s next-item scores against every dense configuration of the trained dense model on this
        machine (:func:`hf_sparse.jobs.training.latency`; the baselines are built once per job)."""
        from ..jobs.training import dense_baselines, latency

        inputs = self.latency_inputs()
        if self._dense_baselines is None:
            dense = NextItemScores(self.dense_model)
            self._dense_baselines = dense_baselines(dense, inputs, self.recipe.latency_baselines)
        record = latency(NextItemScores(model), None, inputs, rounds, baselines=self._dense_baselines)
        return {**record, "users": record["batch"], "items": self.splits.num_items}

    def start_model(self, start_from: str):
        return copy.deepcopy(self.dense_model) if start_from == "dense" else _model(self.recipe, self.splits.num_items)

    def finetune(
        self, model, section, work_dir: Path, callbacks=(), init_callbacks=(), *, resume: bool = False
    ) -> int:
        if callbacks or init_callbacks:
            raise ConfigError(
                "The recommender job trains without Trainer callbacks; its runs compress the item table."
            )
        _train(model, self.splits, section, self.recipe, work_dir)
        return 0

    def predict(self, model) -> tuple[dict[str, float], None]:
        return _metrics(model, self.splits, self.recipe.model.max_len), None

    def evaluate(self, model) -> float:
        return self.predict(model)[0][self.metric]

    def parameter_counts(self, model) -> dict[str, int]:
        return {}  # the report's size is the item table's bytes, measured as saved (see entry)

    def save(self, model, folder: Path, recipe_text: str) -> None:
        _save(model, folder, self.item_ids)

    def verify(self, model, folder: Path, outputs, work: Path) -> dict[str, Any]:
        return _verify(model, folder, self.splits, self.recipe.model.max_len)

    def token_frequencies(self, model) -> dict[str, torch.Tensor]:
        return {"item_embeddings": self.freq}

    def calibration_batches(self, samples: int, seed: int):
        raise ConfigError("The recommender job has no calibration batches: its methods compress the item table.")

    def teacher(self, name):
        raise ConfigError("The recommender job has no teacher: distillation is not one of its methods.")

    def entry(self, run: dict, ctx) -> dict:
        """The run's report entry in the recommender report's shape."""
        embeddings = run.get("embeddings")
        rows = run.get("stages") or []
        out = {
            "name": run["name"],
            "method": None if embeddings is None else embeddings["config"]["tables"]["item_embeddings"],
            "table": None if embeddings is None else embeddings["tables"]["item_embeddings"],
            "train_s": run["train_s"],
            "table_bytes": _table_bytes(ctx.model),
            **{k: v for k, v in run.items() if k.startswith(("valid_", "test_"))},
            "before_finetune": ({k: rows[0][k] for k in ("test_hr@10", "test_ndcg@10")} if len(rows) > 1 else None),
        }
        for key in ("round_trip", "latency"):
            if key in run:
                out[key] = run[key]
        return out


def _check_tables_fit(recipe: RecsysRecipe, num_items: int) -> None:
    """Every run's compressed item table can be made for this catalogue: a size chosen by ``compression`` depends
    on the table's rows, and a small catalogue can leave some methods no room (QR needs about ``2 sqrt(rows)``
    rows). Checked on a random table of the real shape before any training, so a run that cannot be built fails
    in seconds rather than after the dense model and the runs before it have trained.

    Raises:
        ConfigError: a run's table does not fit, naming the run, the table's shape and what to change.
    """
    from ..embeddings.apply import build_table

    rows, cols = num_items + 1, recipe.model.hidden_size
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(0)) * 0.02
    freq = torch.arange(rows, 0, -1, dtype=torch.float64)
    for name, spec in recipe.runs.items():
        try:
            build_table(weight, spec.replace(fit_steps=0) if spec.init == "fit" else spec, freq)
        except ConfigError as exc:
            raise ConfigError(
                f"runs.{name}: {exc} This data's item table is {rows} x {cols} ({num_items} items and the padding "
                "row): raise the run's compression (or hot_rows / hot_bits down), set the method's size directly "
                "(buckets, collisions, tt_rank, keep_rows, rank), or leave the run out."
            ) from None


def _plans(recipe: RecsysRecipe) -> list[RunPlan]:
    """One run per entry of ``recipe.runs`` (after ``dense-continued``, the control of the fitted ones): the item
    table compressed as it says, then trained (fitted runs: from the trained dense model, with ``finetune``; random
    ones: from scratch, with ``dense``). A fitted run without QAT is also measured before its training."""
    plans = []
    if any(spec.init == "fit" for spec in recipe.runs.values()):
        plans.append(RunPlan("dense-continued", (Stage("finetune", recipe.finetune, {}),)))
    for name, spec in recipe.runs.items():
        sections = {"embeddings": EmbeddingCompressionConfig(tables={"item_embeddings": spec})}
        if spec.init != "fit":
            plans.append(RunPlan(name, (Stage("train", recipe.dense, sections),), start_from="fresh"))
        elif spec.qat:
            plans.append(RunPlan(name, (Stage("finetune", recipe.finetune, sections),)))
        else:
            stages = (Stage("compress", None, sections), Stage("finetune", recipe.finetune, {}))
            plans.append(RunPlan(name, stages, staged=True))
    return plans


def run_recsys(recipe: RecsysRecipe, output_dir: str | Path, *, recipe_source: str | None = None) -> dict:
    """Run ``recipe`` and write ``report.json``, ``report.md``, ``recipe.yaml`` and one saved model per run to
    ``output_dir``. Each run goes through the stage loop of every job (:func:`~hf_sparse.jobs.runner.run_plan`).

    Returns:
        The report (what ``report.json`` holds).
    """
    from .. import apply as _apply  # noqa: F401  (registers the built-in methods the runs name)
    from ..jobs.report import write_report
    from ..jobs.runner import run_plan
    from ..jobs.training import checkpoint_bytes
    from .data import item_frequencies

    started = time.perf_counter()
    # The data and every run's table size are checked before anything is written or trained: a bad file or a run
    # that cannot be built fails in seconds, not after the dense model has trained.
    interactions = recipe.data.load()
    logger.info("hf-sparse recsys: %s", interactions.describe())
    splits = interactions.splits
    if recipe.users is not None:
        splits = splits.subset(recipe.users)
    max_len = recipe.model.max_len
    item_ids = interactions.item_id_record()
    _check_tables_fit(recipe, splits.num_items)

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # Saves a killed job left half-written (hidden temporaries of this job's own outputs) go first.
    remove_stale_partials(output_dir, [*RECSYS_OUTPUTS, *recipe.runs])
    work = confined_path(output_dir, "trainer")

    logger.info("hf-sparse recsys: training the dense baseline (%g epochs)", recipe.dense.epochs)
    dense = _model(recipe, splits.num_items)
    dense_s = _train(dense, splits, recipe.dense, recipe, confined_path(work, "dense"))
    dense_bytes = _table_bytes(dense)
    runs = [{"name": "dense", "train_s": dense_s, "table_bytes": dense_bytes, **_metrics(dense, splits, max_len)}]
    dense_folder = confined_path(output_dir, "dense")
    _save(dense, dense_folder, item_ids)
    logger.info("hf-sparse recsys: dense %s", runs[0])

    task = RecsysTask(recipe, splits, dense, item_frequencies(splits).double(), item_ids)
    baseline = {**runs[0], "checkpoint_bytes": checkpoint_bytes(dense_folder)}
    checkpoint = SimpleNamespace(
        format="dense", numerics="keep", verify=recipe.verify, latency_rounds=recipe.latency_rounds
    )
    recipe_text = yaml.safe_dump(recipe.to_dict(), sort_keys=False)
    for plan in _plans(recipe):
        logger.info("hf-sparse recsys: %s", plan.name)
        run = run_plan(
            task,
            plan,
            output_dir=output_dir,
            work=work,
            checkpoint=checkpoint,
            recipe_text=recipe_text,
            dense=baseline,
        )
        run["memory_ratio"] = run["table_bytes"] / dense_bytes
        run["hr_vs_dense"] = run["test_hr@10"] / runs[0]["test_hr@10"] - 1.0 if runs[0]["test_hr@10"] else None
        logger.info(
            "hf-sparse recsys: %s %s", plan.name, {k: v for k, v in run.items() if k not in ("method", "table")}
        )
        runs.append(run)
    report = {
        "recipe": recipe_source or recipe.name,
        "name": recipe.name,
        "data": _data_record(interactions, splits),
        "runs": runs,
        "machine": machine_info(),
        "total_s": time.perf_counter() - started,
    }
    for run in runs:
        atomic_write_text(confined_path(output_dir, run["name"], "README.md"), render_recsys_card(run, report))
    write_report(output_dir, report, render_recsys_markdown(report), recipe_text, indent=1)
    return report


def _data_record(interactions, splits) -> dict[str, Any]:
    """The report's ``data``: the source, the counts the job used (after the ``users`` limit), and what was read
    and dropped."""
    from .data import ITEM_IDS_FILE

    return {
        "dataset": interactions.source,
        "columns": dict(interactions.columns),
        "users": splits.num_users,
        "items": splits.num_items,
        "interactions": sum(len(seq) + 2 for seq in splits.train),
        "min_interactions": interactions.min_interactions,
        "min_item_count": interactions.min_item_count,
        "read": dict(interactions.counts),
        "description": interactions.describe(),
        "item_ids_file": ITEM_IDS_FILE,
    }


def render_recsys_markdown(report: dict) -> str:
    """``report.md`` of :func:`run_recsys`."""
    dense = report["runs"][0]
    data = report["data"]
    lines = [
        f"# hf-sparse recsys: SASRec on {data['dataset']}",
        "",
        f"Recipe `{report['recipe']}`; {data['users']:,} users, {data['items']:,} items"
        + (f", {data['interactions']:,} interactions" if "interactions" in data else "")
        + ", leave-one-out by time; HR@10 and NDCG@10 of each user's last item ranked over all items (the items "
        "earlier in the user's history excluded).",
        "",
        # reports written before the data section (MovieLens only) have no description
        *(
            [
                f"Data: {data['description']} Each saved model's `{data['item_ids_file']}` maps its item ids back to "
                "the data's own.",
                "",
            ]
            if "description" in data
            else []
        ),
        "| run | method | item table | vs dense | test HR@10 | vs dense HR | test NDCG@10 | valid HR@10 | "
        "before fine-tuning: HR@10 / NDCG@10 | train |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        method = _method_text(r)
        # no relative change when the dense model's HR@10 is 0 (a tiny or untrained run): hr_vs_dense is null then
        rel = "–" if r["name"] == "dense" or r.get("hr_vs_dense") is None else f"{100 * r['hr_vs_dense']:+.1f}%"
        b = r.get("before_finetune")
        before = f"{b['test_hr@10']:.4f} / {b['test_ndcg@10']:.4f}" if b else "–"
        ratio = "–" if r["name"] == "dense" else f"{100 * r['memory_ratio']:.1f}% (÷{1 / r['memory_ratio']:.1f})"
        lines.append(
            f"| {r['name']} | {method} | {r['table_bytes'] / 1e3:.1f} kB | {ratio} | {r['test_hr@10']:.4f} | {rel} | "
            f"{r['test_ndcg@10']:.4f} | {r['valid_hr@10']:.4f} | {before} | {r['train_s']:.0f} s |"
        )
    hr = dense["test_hr@10"]
    se = (hr * (1 - hr) / max(data["users"], 1)) ** 0.5
    lines += [
        "",
        f"Standard error of a test HR@10 here: ±{se:.4f} ({100 * se / max(hr, 1e-12):.1f}% of the dense value; "
        f"binomial, {data['users']} users): differences below about twice that are noise.",
        "",
        f"Dense item table: {dense['table_bytes'] / 1e3:.1f} kB (float32). Every saved model reloaded with "
        "`from_pretrained` gives the same top-10 lists: "
        + (
            "yes."
            if all(r.get("round_trip", {}).get("identical_top10", True) for r in report["runs"])
            else "NO (see report.json)."
        ),
        "",
        *_latency_lines(report),
        f"Machine: {machine_label(report['machine'])}; whole job {report['total_s']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def _latency_lines(report: dict) -> list[str]:
    """The latency section: each run's model against every dense configuration of this machine."""
    from ..jobs.report import dense_comparison_lines

    timed = [(r["name"], r["latency"]) for r in report["runs"] if r.get("latency")]
    if not timed:
        return []
    lat = timed[0][1]
    lines = [
        "## Latency",
        "",
        f"One forward pass scoring all {lat['items']:,} items as the next one for {lat['users']} test users "
        f"(histories of up to {lat['seq']} items), {lat['threads']} torch threads: each run's model interleaved "
        f"with every dense configuration of the trained dense model on this machine ({lat['rounds']} rounds, "
        "medians; > 1: ours faster).",
        "",
        "| run | ours (ms) | vs dense fp32 | vs best dense of this machine |",
        "|---|---:|---:|---|",
    ]
    for name, lat in timed:
        fp32 = lat.get("ratio_vs_fp32")
        lines.append(
            f"| {name} | {1e3 * lat['ours_s']:.2f} | {'–' if fp32 is None else f'{fp32:.2f}x'} | "
            f"{vs_best_dense(lat)} |"
        )
    return [*lines, "", *dense_comparison_lines(timed, report["machine"])]


def _method_text(run: dict) -> str:
    """The run's item table method in words ("–" for a dense table)."""
    if not run.get("method"):
        return "–"
    m = run["method"]
    size = ", ".join(f"{k} {v}" for k, v in (run["table"] or {}).get("size", {}).items() if k != "seed")
    text = f"{m['method']} ({size})" + (f", {m['hot_rows']} hot rows" if m.get("hot_rows") else "")
    text += ", from scratch" if m.get("init") == "random" else ""
    return text + (", QAT" if m.get("qat") else "")


def render_recsys_card(run: dict, report: dict) -> str:
    """The model card (``README.md``) of one saved model of :func:`run_recsys`: the data it was trained on (source
    and counts), its item table, its HR@10 / NDCG@10 beside the dense baseline's, and how to map its item ids back
    to the data's own."""
    from .data import ITEM_IDS_FILE

    data, dense = report["data"], report["runs"][0]
    front = yaml.safe_dump(
        {"library_name": "transformers", "tags": ["hf_sparse", "recommendation", "sasrec", "next-item-prediction"]},
        sort_keys=False,
    )
    what = "the dense baseline" if run["name"] == "dense" else f"run `{run['name']}`"
    table = (
        f"{run['table_bytes'] / 1e3:.1f} kB, {_method_text(run)}; the dense table is "
        f"{dense['table_bytes'] / 1e3:.1f} kB"
        if run.get("method")
        else f"dense, {run['table_bytes'] / 1e3:.1f} kB (float32)"
    )
    rows = [
        f"| dense baseline | {dense['test_hr@10']:.4f} | {dense['test_ndcg@10']:.4f} | {dense['valid_hr@10']:.4f} |"
    ]
    if run["name"] != "dense":
        rows.append(f"| this model | {run['test_hr@10']:.4f} | {run['test_ndcg@10']:.4f} | {run['valid_hr@10']:.4f} |")
    lines = [
        "---",
        front.rstrip(),
        "---",
        "",
        f"# {report['name']}: SASRec next-item recommender, {what}",
        "",
        f"A SASRec-style next-item model (`hf_sparse.recsys.SASRecForNextItem`) trained by `hf-sparse recsys` "
        f"(recipe `{report['recipe']}`). Item table: {table}.",
        "",
        "## Data",
        "",
        data["description"],
        "",
        f"Trained and evaluated on {data['users']:,} users, {data['items']:,} items and {data['interactions']:,} "
        "interactions: each user's last interaction is the test target, the one before it the validation target, the "
        "rest the training history.",
        "",
        "## Results",
        "",
        "HR@10 and NDCG@10 of each user's held-out item ranked over all items (the items earlier in the user's "
        "history excluded), measured on the model as saved here:",
        "",
        "| model | test HR@10 | test NDCG@10 | valid HR@10 |",
        "|---|---|---|---|",
        *rows,
        "",
        "## How to use",
        "",
        f"The model's item ids are `1..{data['items']}` (0 is padding); `{ITEM_IDS_FILE}` holds the data's own id of "
        "each of them.",
        "",
        "```python",
        "import torch",
        "from transformers import AutoModel",
        "",
        "import hf_sparse  # registers the model with AutoModel",
        "from hf_sparse.recsys import load_item_ids",
        "",
        'model = AutoModel.from_pretrained("path/to/this/folder").eval()',
        'ids = load_item_ids("path/to/this/folder")  # ids[k]: your id of model item k (ids[0] is padding)',
        "index = {item: k for k, item in enumerate(ids) if item is not None}",
        'history = torch.tensor([[index[i] for i in ["item-a", "item-b"]]])  # oldest first, your own ids',
        "scores = model(input_ids=history, logits_to_keep=1).logits[0, -1]",
        "top10 = [ids[k] for k in scores.topk(10).indices.tolist()]",
        "```",
        "",
    ]
    return "\n".join(lines)
