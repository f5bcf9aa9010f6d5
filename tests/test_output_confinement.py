"""No job writes outside its output folder, whatever a recipe, a report or a folder on disk says.

Three lines of defence, each tested on its own:

1. Names that become paths are refused when the recipe is read (every format, through the command line here; the
   full matrix of hostile names is ``test_hostile_recipes.py``).
2. Every writer of the jobs names its files through :func:`~hf_sparse.resilience.confined_path`: called with an
   escaping name that got past the validator (forced into a frozen config), or through a symbolic link that points
   out, the writer refuses before writing.
3. Cheap real jobs (training patched out) leave every file outside their output folder as it was.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

from hf_sparse import compress as compress_module
from hf_sparse.cli import main
from hf_sparse.errors import CheckpointWriteError, HfSparseError
from hf_sparse.recipes import StageDistillationSection
from hf_sparse.resilience import confined_path

PACKAGE = Path(__file__).resolve().parents[1] / "hf_sparse"
#: The modules of the jobs: every path they write under the output folder is built by confined_path.
JOB_WRITERS = [
    "compress.py",
    "sweep.py",
    "lm/run.py",
    "recsys/compress.py",
    *(p.relative_to(PACKAGE).as_posix() for p in sorted((PACKAGE / "jobs").glob("*.py"))),
]

ESCAPES = ["..", "../victim", "../../victim/x", "/abs/path", "a/../../victim", "", "a\0b", "~/x", "."]


def _snapshot(root: Path, skip: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every file and folder under ``root`` except ``skip``: mode and contents (what a write outside would change)."""
    state = {}
    for path in sorted(root.rglob("*")):
        if path == skip or skip in path.parents:
            continue
        st = path.lstat()
        state[str(path.relative_to(root))] = (st.st_mode, path.read_bytes() if path.is_file() else None)
    return state


@pytest.fixture
def sandbox(tmp_path):
    """``tmp_path`` with a sibling folder of the output holding files a hostile name would aim at."""
    victim = tmp_path / "victim"
    (victim / "x").mkdir(parents=True)
    (victim / "keep.txt").write_text("precious\n")
    (victim / "x" / "config.json").write_text("{}\n")
    return tmp_path


# -- 2. the helper, and the writers with names that got past the validator ------------------------------------------
@pytest.mark.parametrize("name", ESCAPES)
def test_confined_path_refuses_every_escape(name, tmp_path):
    with pytest.raises(CheckpointWriteError, match="Refusing to write"):
        confined_path(tmp_path / "out", name)


def test_confined_path_allows_names_inside_and_follows_symlinks_to_decide(tmp_path):
    out = tmp_path / "out"
    (out / "inside").mkdir(parents=True)
    assert confined_path(out, "pruned-80") == (out / "pruned-80").resolve()
    assert confined_path(out, "trainer", "dense") == (out / "trainer" / "dense").resolve()
    assert confined_path(out, "a/b.png") == (out / "a" / "b.png").resolve()
    (out / "link-in").symlink_to(out / "inside")
    assert confined_path(out, "link-in", "f") == (out / "inside" / "f").resolve()
    (out / "link-out").symlink_to(tmp_path)
    with pytest.raises(CheckpointWriteError, match="outside the output folder"):
        confined_path(out, "link-out", "f")
    (out / "file-link").symlink_to(tmp_path / "elsewhere.txt")
    with pytest.raises(CheckpointWriteError, match="symbolic link"):
        confined_path(out, "file-link")


def test_job_writers_build_output_paths_only_through_confined_path():
    """A regression guard: ``output_dir / name`` or ``work / name`` in a job module would bypass the check."""
    offenders = []
    for rel in JOB_WRITERS:
        tree = ast.parse((PACKAGE / rel).read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.BinOp)
                and isinstance(node.op, ast.Div)
                and (
                    (isinstance(node.left, ast.Name) and node.left.id in ("output_dir", "work"))
                    or (isinstance(node.left, ast.Attribute) and node.left.attr in ("output_dir", "work"))
                )
            ):
                offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, offenders


def test_a_cache_dir_forced_past_the_validator_is_refused(tmp_path):
    section = StageDistillationSection(cache_dir="teacher/cache")
    assert Path(section.to_config(tmp_path).cache_dir) == (tmp_path / "teacher" / "cache").resolve()
    object.__setattr__(section, "cache_dir", "../../victim")
    with pytest.raises(CheckpointWriteError):
        section.to_config(tmp_path / "out")


def test_the_model_card_writer_does_not_follow_a_symlink_out(sandbox):
    from hf_sparse.integrations.hub import write_model_card
    from hf_sparse.testing import tiny_bert_classifier

    folder = sandbox / "out" / "pruned-50"
    tiny_bert_classifier(seed=0).save_pretrained(folder)
    (folder / "README.md").symlink_to(sandbox / "victim" / "keep.txt")
    before = _snapshot(sandbox, sandbox / "out")
    with pytest.raises(CheckpointWriteError, match="outside the output folder"):
        write_model_card(folder, results={})
    assert _snapshot(sandbox, sandbox / "out") == before


def test_report_plots_of_hostile_run_names_stay_in_the_plots_folder(sandbox):
    from hf_sparse.integrations.report_plots import write_report_plots

    runs = [
        {"name": name, "sparsity": 0.5, "test_accuracy": 0.8, "layers": {"a": 0.5, "b": 0.4}}
        for name in ["../../victim/keep.txt", "/abs/path", "..", "", "a\0b", "x/../../../y"]
    ]
    before = _snapshot(sandbox, sandbox / "out")
    written = write_report_plots({"runs": runs, "dense": {"test_accuracy": 0.9}}, sandbox / "out" / "plots")
    assert len(written) == len(runs) + 1
    assert all((sandbox / "out" / "plots" / f).is_file() for f in written.values())
    assert _snapshot(sandbox, sandbox / "out") == before


RECSYS = """
task: recsys
name: ci-confined
users: 8
verify: false
model: {max_len: 8, hidden_size: 8, num_attention_heads: 1, intermediate_size: 8}
dense: {epochs: 1}
finetune: {epochs: 1}
runs:
  int8: {method: qrow, bits: 8}
"""


@pytest.fixture
def no_recsys_training(monkeypatch):
    import hf_sparse.recsys.compress as recsys

    monkeypatch.setattr(recsys, "_train", lambda *args, **kwargs: 0.0)
    return recsys


def test_a_recsys_run_name_forced_past_the_validator_is_refused_before_any_write_outside(sandbox, no_recsys_training):
    recsys = no_recsys_training
    path = sandbox / "r.yaml"
    path.write_text(RECSYS)
    recipe = recsys.load_recsys_recipe(path)
    object.__setattr__(recipe, "runs", {"../victim/x": recipe.runs["int8"]})
    before = _snapshot(sandbox, sandbox / "out")
    with pytest.raises(CheckpointWriteError, match="outside the output folder"):
        recsys.run_recsys(recipe, sandbox / "out")
    assert _snapshot(sandbox, sandbox / "out") == before


# -- 3. cheap real jobs ----------------------------------------------------------------------------------------------
def test_a_cheap_recsys_job_writes_only_inside_its_output_folder(sandbox, no_recsys_training):
    path = sandbox / "r.yaml"
    path.write_text(RECSYS)
    before = _snapshot(sandbox, sandbox / "out")
    assert main(["recsys", str(path), "--output", str(sandbox / "out")]) == 0
    assert _snapshot(sandbox, sandbox / "out") == before
    out = sandbox / "out"
    assert {p.name for p in out.iterdir()} >= {"dense", "dense-continued", "int8", "report.json", "recipe.yaml"}
    assert not [p for p in out.rglob(".*")]  # no temporary left


class _Stop(HfSparseError):
    pass


def _stop(*args, **kwargs):
    raise _Stop("stopped after the job's first writes (the test needs no data)")


@pytest.mark.parametrize("command", ["compress", "sweep"])
def test_compress_and_sweep_write_only_inside_their_output_folder(sandbox, monkeypatch, command):
    import hf_sparse.sweep as sweep_module

    monkeypatch.setattr(compress_module, "prepare_data", _stop)
    monkeypatch.setattr(sweep_module, "prepare_data", _stop)
    recipe = sandbox / "r.yaml"
    recipe.write_text("name: ci-confined\nsparsities: [0.5]\n")
    before = _snapshot(sandbox, sandbox / "out")
    assert main([command, str(recipe), "--output", str(sandbox / "out")]) == 2
    assert _snapshot(sandbox, sandbox / "out") == before


# -- 1. hostile names through every job's command --------------------------------------------------------------------
STAGED = """
name: {name}
stages:
  - name: {stage}
    train: null
    attention: {{pattern: window, window: 8}}
"""


def _hostile_recipes(name: str) -> dict[str, str]:
    q = json.dumps(name)  # a YAML double-quoted scalar
    return {
        "compress": f"name: {q}\nsparsities: [0.5]\n",
        "staged-name": STAGED.format(name=q, stage="s1"),
        "staged-stage": STAGED.format(name="ok", stage=q),
        "sweep": f"name: {q}\nsweep: {{criteria: [magnitude], granularities: [unstructured], sparsities: [0.5]}}\n",
        "lm": f"task: lm\nname: {q}\n",
        "recsys": f"task: recsys\nname: ok\nruns: {{{q}: {{method: qrow, bits: 8}}}}\n",
    }


COMMANDS = {"compress": "compress", "staged-name": "compress", "staged-stage": "compress", "sweep": "sweep"}


@pytest.mark.parametrize("name", ["../victim", "../../victim/x", os.path.abspath("/tmp/hf-sparse-victim"), ".."])
def test_no_job_accepts_a_name_that_leaves_the_output_folder(sandbox, monkeypatch, capsys, name):
    def training_started(*args, **kwargs):
        raise AssertionError("a hostile recipe reached the job")

    monkeypatch.setattr(compress_module, "prepare_data", training_started)
    before = _snapshot(sandbox, sandbox / "out")
    for kind, text in _hostile_recipes(name).items():
        recipe = sandbox / f"{kind}.yaml"
        recipe.write_text(text)
        command = COMMANDS.get(kind, kind)
        assert main([command, str(recipe), "--output", str(sandbox / "out")]) == 2, kind
        err = capsys.readouterr().err
        assert "is not a usable name" in err and "line" in err, (kind, err)
        assert main(["validate", str(recipe), "--no-model"]) == 2, kind
        capsys.readouterr()
        recipe.unlink()
        assert _snapshot(sandbox, sandbox / "out") == before, kind
    assert not (sandbox / "out").exists()


def test_a_staged_recipe_name_forced_past_the_validator_is_refused_before_any_training(sandbox, monkeypatch):
    from hf_sparse.recipes import Recipe

    monkeypatch.setattr(compress_module, "prepare_data", _stop)
    # preflight re-validates the recipe (and would refuse the name again): bypassed, to test the writer's own check
    monkeypatch.setattr(compress_module, "preflight", lambda recipe: recipe)
    recipe = Recipe.from_dict({"name": "ok", "stages": [{"name": "s1", "train": None, "attention": {"window": 8}}]})
    object.__setattr__(recipe, "name", "../victim")
    before = _snapshot(sandbox, sandbox / "out")
    with pytest.raises(CheckpointWriteError, match="outside the output folder"):
        compress_module.run_compress(recipe, sandbox / "out")
    assert _snapshot(sandbox, sandbox / "out") == before


def test_an_lm_recipe_name_forced_past_the_validator_is_refused_before_any_work(sandbox, monkeypatch):
    from hf_sparse.lm import LmRecipe, run_lm

    recipe = LmRecipe()
    object.__setattr__(recipe, "name", "../victim")
    monkeypatch.setattr("hf_sparse.lm.run._model_path", _stop)  # the first step of the job: never reached
    before = _snapshot(sandbox, sandbox / "out")
    with pytest.raises(CheckpointWriteError, match="outside the output folder"):
        run_lm(recipe, sandbox / "out")
    assert _snapshot(sandbox, sandbox / "out") == before
