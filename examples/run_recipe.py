"""Run a compression recipe (a YAML file, or a packaged recipe by name) from Python, on your model and data.

What it does: reads and validates the recipe (`hf_sparse.load_recipe`), replaces its model, data and columns with
yours where given (the recipe is a frozen config: `recipe.replace(...)` makes a validated copy), runs the job
(`hf_sparse.compress.run_compress`: the same as `hf-sparse compress`) into --output, and prints each model's test
accuracy, speed and size against the dense model, and the model the job recommends. The default recipe is the one
`make compress` runs: the dense model fine-tuned, then a 3-layer student and a 3-layer student with half its heads
and FFN neurons, distilled from it, stored in the fastest arithmetic of this machine, timed against its best dense
configuration (docs/recipes.md, "Candidates").

    python examples/run_recipe.py --model my-model --data reviews.csv --column text=review --column label=rating
    python examples/run_recipe.py --recipe my-recipe.yaml --output out
    python examples/run_recipe.py                        # the default job: all-MiniLM-L6-v2 on Rotten Tomatoes

Time on the real model (the default recipe on all-MiniLM-L6-v2 and Rotten Tomatoes): 9 minutes on 2 CPU cores
(AMD EPYC Zen 4, docs/results.md, "Results of the default job"). --max-steps, --limit and --latency-rounds make a
quick try (every training stops after that many steps, each split is a seeded subset, fewer timing rounds).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import hf_sparse
from hf_sparse.compress import run_compress
from hf_sparse.jobs.selection import recommendation_lines


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="minilm-rotten-tomatoes", help="a recipe file or a packaged recipe's name")
    p.add_argument("--model", default=None, help="replace the recipe's model (folder, packaged alias, Hub id)")
    p.add_argument("--data", default=None, help="replace the recipe's data (a file, folder or cached Hub id)")
    p.add_argument("--column", action="append", default=[], metavar="ROLE=COLUMN", help="e.g. text=review")
    p.add_argument("--output", default="recipe-output", help="the job's output folder")
    p.add_argument("--max-steps", type=int, default=None, help="stop every training after this many steps")
    p.add_argument("--limit", type=int, default=None, help="use this many examples per split (a seeded subset)")
    p.add_argument("--latency-rounds", type=int, default=None, help="timing rounds per model (default: the recipe's)")
    return p.parse_args(argv)


def with_overrides(recipe: hf_sparse.Recipe, args: argparse.Namespace) -> hf_sparse.Recipe:
    """The recipe with the command line's model, data and quick-try settings (each `replace` validates)."""
    if args.model is not None:
        recipe = recipe.replace(model=recipe.model.replace(name=str(args.model)))
    data = recipe.data
    if args.data is not None:
        source = str(Path(args.data).resolve()) if Path(args.data).exists() else args.data
        data = data.replace(dataset=source, files=None)
    if args.column:
        data = data.replace(columns={**data.columns, **dict(c.split("=", 1) for c in args.column)})
    if args.limit is not None:
        data = data.replace(train_limit=args.limit, validation_limit=args.limit, test_limit=args.limit)
    recipe = recipe.replace(data=data)
    if args.max_steps is not None:

        def capped(train):
            return None if train is None else train.replace(max_steps=args.max_steps)

        def capped_stages(stages):
            return tuple(stage.replace(train=capped(stage.train)) for stage in stages)

        recipe = recipe.replace(
            dense=capped(recipe.dense),
            pruned=capped(recipe.pruned),
            stages=capped_stages(recipe.stages),
            candidates=tuple(c.replace(stages=capped_stages(c.stages)) for c in recipe.candidates),
        )
    if args.latency_rounds is not None:
        recipe = recipe.replace(checkpoint=recipe.checkpoint.replace(latency_rounds=args.latency_rounds))
    return recipe


def main(argv=None) -> dict:
    args = parse_args(argv)
    recipe = with_overrides(hf_sparse.load_recipe(args.recipe), args)
    print(f"running {recipe.name} on {recipe.model.name} into {args.output}")
    report = run_compress(recipe, args.output, recipe_source=args.recipe)

    key, name = report["metric"]["key"], report["metric"]["name"]  # e.g. test_accuracy, accuracy
    print(f"dense: {name} {report['dense'][key]:.4f}")
    for run in report["runs"]:
        latency = run.get("latency") or {}
        speed = f", {latency['ratio_vs_best_dense']:.2f}x the best dense" if "ratio_vs_best_dense" in latency else ""
        print(f"{run['checkpoint']}: {name} {run[key]:.4f}{speed}, saved in {args.output}/{run['checkpoint']}")
    if report.get("selection"):
        print("\n".join(recommendation_lines(report["selection"], report, args.output)))
    print(f"report: {args.output}/report.md; the recipe as run: {args.output}/recipe.yaml")
    summary = {"runs": [run["checkpoint"] for run in report["runs"]], "selection": bool(report.get("selection"))}
    print(json.dumps(summary))
    return report


if __name__ == "__main__":
    main()
