import pytest
import yaml

from hf_sparse import Recipe, RecipeError, load_recipe
from hf_sparse.cli import main
from hf_sparse.recipes import DEFAULT_RECIPE, dump_recipe, packaged_recipes


def test_packaged_recipes_validate():
    recipes = packaged_recipes()
    assert DEFAULT_RECIPE in recipes
    for name, path in recipes.items():
        if "task: recsys" in path.read_text():  # `hf-sparse recsys` recipes: their own loader
            from hf_sparse.recsys.compress import RecsysRecipe, load_recsys_recipe

            recsys = load_recsys_recipe(path)
            assert RecsysRecipe.from_dict(recsys.to_dict()) == recsys
            with pytest.raises(RecipeError, match="hf-sparse recsys"):
                load_recipe(name)
            continue
        if "task: lm" in path.read_text():  # `hf-sparse lm` recipes: their own loader
            from hf_sparse.lm import LmRecipe, load_lm_recipe

            lm = load_lm_recipe(path)
            assert LmRecipe.from_dict(lm.to_dict()) == lm
            with pytest.raises(RecipeError, match="hf-sparse lm"):
                load_recipe(name)
            continue
        if "task: causal-lm" in path.read_text():  # one-shot pruning of a decoder: its own loader
            from hf_sparse.jobs.tasks import task_for

            causal = task_for("causal-lm").load_recipe(path)
            assert type(causal).from_dict(causal.to_dict()) == causal
            with pytest.raises(RecipeError, match="causal-lm"):
                load_recipe(name)
            continue
        recipe = load_recipe(name)
        assert isinstance(recipe, Recipe)
        assert Recipe.from_dict(yaml.safe_load(dump_recipe(recipe))) == recipe  # YAML round trip


def test_default_recipe_is_the_real_minilm_on_rotten_tomatoes():
    recipe = load_recipe()
    assert recipe.model.name == "minilm-l6" and recipe.data.dataset == "rotten_tomatoes"
    # several method mixes compared, the fastest within one point of dense recommended
    assert [c.name for c in recipe.candidates] == ["student-3layer", "student-3layer-structured-50"]
    assert recipe.selection.max_drop == pytest.approx(0.01) and recipe.selection.objective == "latency"
    assert recipe.checkpoint.numerics == "fastest" and recipe.checkpoint.latency_rounds > 0
    assert recipe.checkpoint.runtimes  # each also timed as bf16 / with torch's dynamic int8
    assert recipe.dense.learning_rate == pytest.approx(5e-5)  # written 5e-5 in YAML: read as a float
    flat = load_recipe("minilm-magnitude-pruning")  # the earlier default: magnitude pruning to 50% and 80%
    assert [c.sparsity for c in flat.pruning_runs()] == [0.5, 0.8]


def test_unknown_recipe_key_fails_with_its_name_and_place(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("pruning:\n  sparsity: 0.5\n  shedule: cubic\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    msg = str(err.value)
    assert str(path) in msg and "pruning.shedule" in msg and "schedule" in msg
    assert isinstance(err.value, ValueError)


def test_wrong_type_in_recipe(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("dense:\n  batch_size: many\n")
    with pytest.raises(RecipeError, match="dense.batch_size must be of type int"):
        load_recipe(path)


def test_missing_recipe_and_bad_yaml(tmp_path):
    with pytest.raises(RecipeError, match="no packaged recipe"):
        load_recipe(tmp_path / "nope.yaml")
    path = tmp_path / "broken.yaml"
    path.write_text("pruning: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(path)


def test_cli_reports_a_bad_recipe_key_and_exits_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("sparsitiez: [0.5]\n")
    assert main(["validate", str(path)]) == 2
    assert "'sparsitiez'" in capsys.readouterr().err
    assert main(["compress", str(path), "--output", str(tmp_path / "out")]) == 2


def test_cli_validate_prints_the_resolved_recipe(capsys):
    assert main(["validate"]) == 0
    assert Recipe.from_dict(yaml.safe_load(capsys.readouterr().out)) == load_recipe()


def test_cli_info_lists_versions_and_recipes(capsys):
    import json

    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert DEFAULT_RECIPE in info["packaged_recipes"] and info["torch"] and info["cores"] >= 1
    assert isinstance(info["cpu_kernels"]["loaded"], bool) and info["cpu_kernels"]["reason"]
    hub = info["hub_kernels"]
    assert hub["variant"].startswith("torch") and isinstance(hub["transformers_loads_them"], bool)
