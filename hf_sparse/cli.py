"""The ``hf-sparse`` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from . import __version__
from .errors import ConfigError, HfSparseError, quote

__all__ = ["main"]


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _interrupted_message(args: argparse.Namespace) -> str:
    """What an interrupted ``hf-sparse compress`` tells the user: the last good checkpoint and how to continue."""
    from .compress import RUN_FILE
    from .resilience import last_complete_checkpoint

    out = Path(args.output)
    checkpoints = [c for c in map(last_complete_checkpoint, (out / "trainer").glob("*")) if c is not None]
    saved = sorted(p.parent.name for p in out.glob(f"*/{RUN_FILE}"))
    lines = ["hf-sparse compress: interrupted; no half-written checkpoint was left under a final name."]
    if checkpoints:
        last = max(checkpoints, key=lambda c: c.stat().st_mtime)
        lines.append(f"  last good checkpoint: {last}")
    else:
        lines.append("  no training checkpoint was complete yet (checkpoint.save_steps sets how often one is written)")
    if saved:
        lines.append(f"  runs already saved: {', '.join(saved)}")
    again = ["hf-sparse", "compress", *([args.recipe] if args.recipe else []), "--output", str(out), "--resume"]
    lines.append(f"  continue with: {' '.join(again)}")
    return "\n".join(lines)


def _recipe_task(source: str | None) -> str | None:
    """The ``task:`` key of a recipe file or packaged recipe (None for the classification recipes), read with the
    recipes' one bounded loader."""
    from .errors import RecipeError
    from .recipe_yaml import read_recipe_yaml, recipe_task
    from .recipes import packaged_recipes

    if source is None:
        return None
    path = Path(source) if Path(source).is_file() else packaged_recipes().get(source)
    if path is None:
        return None  # load_recipe explains
    try:
        data, _ = read_recipe_yaml(path)
    except RecipeError:
        return None  # load_recipe explains
    return recipe_task(data)


def _user_recipe(args: argparse.Namespace) -> str | None:
    """With ``--model`` / ``--data`` / ``--task`` / ``--column`` / ``--label-names``: the recipe to run (the given
    one, or the task's starter recipe, with those values) written to ``<output>/recipe.yaml``, which the job later
    replaces with the recipe resolved in full. None when none of them is given (the recipe runs as it is)."""
    import yaml

    from .jobs.starter import compose_recipe, parse_columns
    from .recipe_yaml import read_recipe_yaml
    from .resilience import atomic_write_text

    if not any((args.model, args.data, args.task, args.column, args.label_names)):
        return None
    document = None
    if args.recipe is not None:
        document, _ = read_recipe_yaml(_recipe_file(args.recipe))
        if not isinstance(document, dict):
            raise ConfigError(f"{quote(args.recipe)} is not a recipe mapping; check it with `hf-sparse validate`.")
    labels = [n.strip() for n in args.label_names.split(",")] if args.label_names else None
    doc = compose_recipe(
        document,
        task=args.task,
        model=args.model,
        data=args.data,
        columns=parse_columns(args.column),
        label_names=labels,
    )
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "recipe.yaml"
    atomic_write_text(path, yaml.safe_dump(doc, sort_keys=False))
    print(f"hf-sparse compress: running the recipe written to {path}", flush=True)
    return str(path)


def _cmd_compress(args: argparse.Namespace) -> int:
    import signal

    from .compress import run_compress
    from .recipes import DEFAULT_RECIPE, load_recipe

    composed = _user_recipe(args)
    if composed is not None:
        args.recipe = composed
    task = _recipe_task(args.recipe)
    if task == "recsys":  # one command for every packaged recipe
        return _cmd_recsys(args)
    if task == "lm":
        return _cmd_lm(args)
    if task == "causal-lm":
        return _cmd_causal_lm(args)
    recipe = load_recipe(args.recipe)
    # A scheduler's SIGTERM stops the job like Ctrl-C: cleanly, naming the last good checkpoint.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        report = run_compress(recipe, args.output, recipe_source=args.recipe or DEFAULT_RECIPE, resume=args.resume)
    except KeyboardInterrupt:
        if int(os.environ.get("RANK", "0")) == 0:
            print("\n" + _interrupted_message(args), file=sys.stderr, flush=True)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.push_to_hub and int(os.environ.get("RANK", "0")) == 0:
        from .integrations.hub import push_to_hub

        runs = report["runs"]
        for run in runs:
            repo = args.push_to_hub if len(runs) == 1 else f"{args.push_to_hub}-{run['checkpoint']}"
            folder = Path(args.output) / run["checkpoint"]
            run["hub_url"] = push_to_hub(folder, repo, token=args.hub_token, private=True if args.private else None)
    print(f"\nhf-sparse compress: report written to {args.output}/report.md")
    for line in _summary_lines(report, args.output):
        print(f"  {line}")
    if report.get("selection"):
        from .jobs.selection import recommendation_lines

        plot = (report.get("plots") or {}).get("pareto")
        print("\n" + "\n".join(recommendation_lines(report["selection"], report, args.output)))
        if plot:
            print(f"Trade-off curve: {args.output}/{plot}; per accuracy budget: {args.output}/report.md")
    return 0


def _summary_lines(report: dict, output: str) -> list[str]:
    """The end of ``hf-sparse compress``'s output: each model's metrics against the dense baseline's, where it is
    saved. Every metric the task reports is shown; the compared one (``report["metric"]``) with its difference."""
    from .jobs.report import is_fraction_metric, report_metric

    metric = report_metric(report)
    key, names = metric["key"], metric["all"]
    points = is_fraction_metric(key)  # accuracy and F1 differ in points, a perplexity in percent

    def values(entry: dict) -> str:
        return ", ".join(f"test {name} {entry[k]:.4f}" for k, name in names.items() if k in entry)

    lines = [f"dense: {values(report['dense'])}"]
    for run in report["runs"]:
        if points:
            delta = f"{100 * run['delta_vs_dense']:+.2f} points"
        else:
            delta = f"{100 * (run[key] / report['dense'][key] - 1):+.1f}%"
        lat = run.get("latency") or {}
        speed = f", {lat['ratio_vs_best_dense']:.2f}x the best dense" if lat.get("ratio_vs_best_dense") else ""
        lines.append(
            f"{run['name']}: sparsity {100 * run.get('sparsity', 0.0):.1f}%, {values(run)} ({delta}){speed}, saved "
            f"to {output}/{run['checkpoint']}" + (f", pushed to {run['hub_url']}" if run.get("hub_url") else "")
        )
        rt = run.get("runtime")
        if isinstance(rt, dict) and rt.get(key) is not None:
            gap = rt[key] - report["dense"][key]
            rt_delta = f"{100 * gap:+.2f} points" if points else f"{100 * (rt[key] / report['dense'][key] - 1):+.1f}%"
            lat = rt.get("latency") or {}
            rt_speed = f", {lat['ratio_vs_best_dense']:.2f}x the best dense" if lat.get("ratio_vs_best_dense") else ""
            lines.append(f"  in {rt['runtime']}: {values(rt)} ({rt_delta}){rt_speed}")
    return lines


def _recipe_file(source: str) -> Path:
    """The YAML file of ``source``: a path, or the name of a packaged recipe."""
    from .recipes import packaged_recipes

    path = Path(source)
    if path.is_file():
        return path
    packaged = packaged_recipes()
    if source not in packaged:
        raise HfSparseError(f"{quote(source)} is neither a file nor a packaged recipe ({sorted(packaged)}).")
    return packaged[source]


def _load_task_recipe(task, source: str, command: str):
    """``task.load_recipe`` of the recipe ``source`` given to ``hf-sparse <command>``; a recipe of another job (a
    ``hf-sparse compress`` classification recipe, which has no ``task:``) is named as such with the command that runs
    it, instead of an unknown key of this job's recipe."""
    from .errors import RecipeError

    path = _recipe_file(source)
    try:
        return task.load_recipe(path)
    except RecipeError:
        if _recipe_task(source) is None and _is_classification_recipe(path):
            raise RecipeError(
                f"{quote(source)} is a text-classification recipe (it has no `task: {task.name}`), not one of "
                f"`hf-sparse {command}`; run it with `hf-sparse compress {source}`, which picks the job from the "
                "recipe's task."
            ) from None
        raise


def _is_classification_recipe(path: Path) -> bool:
    from .errors import HfSparseError
    from .recipes import load_recipe

    try:
        load_recipe(str(path))
    except HfSparseError:
        return False
    return True


def _cmd_recsys(args: argparse.Namespace) -> int:
    from .jobs.tasks import task_for

    source = args.recipe
    task = task_for("recsys")
    report = task.run(_load_task_recipe(task, source, "recsys"), args.output, recipe_source=source)
    print(f"\nhf-sparse recsys: report written to {args.output}/report.md")
    for run in report["runs"]:
        ratio = f", item table {100 * run['memory_ratio']:.1f}% of dense" if "memory_ratio" in run else ""
        print(f"  {run['name']}: test HR@10 {run['test_hr@10']:.4f}, NDCG@10 {run['test_ndcg@10']:.4f}{ratio}")
    return 0


def _cmd_lm(args: argparse.Namespace) -> int:
    from .jobs.tasks import task_for

    source = args.recipe
    task = task_for("lm")
    report = task.run(_load_task_recipe(task, source, "lm"), args.output, recipe_source=source)
    print(f"\nhf-sparse lm: report written to {args.output}/report.md")
    ppl = report["perplexity"]
    for length in report["eval"]["lengths"]:
        key = str(length)
        dense = ppl["dense"][key]["perplexity"]
        cells = [f"dense {dense:.3f}"] + [
            f"{name} {ppl[name][key]['perplexity']:.3f} ({100 * (ppl[name][key]['perplexity'] / dense - 1):+.1f}%)"
            for name in ("windowed_before", "windowed_after", "dense_finetuned")
            if name in ppl
        ]
        print(f"  perplexity at {length} tokens ({ppl['dense'][key]['tokens']} evaluated): " + ", ".join(cells))
    if report["correctness"]:
        c = report["correctness"]
        verdict = "passed" if c["passed"] else "FAILED"
        print(f"  full-window check: {verdict} (largest logit difference to sdpa {c['max_abs_logit_diff']:.1e})")
    round_trip = report["checkpoint"].get("round_trip")
    if round_trip:
        print(f"  reloaded {report['checkpoint']['folder']}: identical logits {round_trip['identical_logits']}")
    if report["latency"]:
        lat = report["latency"]
        print(
            f"  latency at {lat['length']} tokens: ours {lat['ours_s']:.2f} s, sdpa {lat['sdpa_full_s']:.2f} s "
            f"({lat['speedup']:.2f}x)"
        )
    return 0


def _cmd_causal_lm(args: argparse.Namespace) -> int:
    from .jobs.tasks import task_for

    source = args.recipe
    task = task_for("causal-lm")
    report = task.run(task.load_recipe(_recipe_file(source)), args.output, recipe_source=source)
    print(f"\nhf-sparse compress: report written to {args.output}/report.md")
    for line in report.get("summary", ()):
        print(f"  {line}")
    return 0


def _cmd_init(args: argparse.Namespace) -> int:
    from .jobs.starter import starter_recipe_text

    text = starter_recipe_text(args.task, model=args.model, data=args.data)
    if args.output in (None, "-"):
        print(text, end="")
        return 0
    path = Path(args.output)
    if path.exists() and not args.force:
        raise ConfigError(f"{quote(str(path))} exists; choose another file or add --force to replace it.")
    path.write_text(text, encoding="utf-8")
    print(f"hf-sparse init: wrote a {args.task} starter recipe to {path}; check it with `hf-sparse validate {path}`")
    return 0


def _writes_its_own_sweep(source: str) -> bool:
    """Whether ``source`` is the user's own recipe file with a ``sweep:`` section (not a packaged recipe, not the
    defaults of a recipe without one)."""
    from .errors import RecipeError
    from .recipe_yaml import read_recipe_yaml

    path = Path(source)
    if not path.is_file():
        return False
    try:
        document, _ = read_recipe_yaml(path)
    except RecipeError:
        return False
    return isinstance(document, dict) and isinstance(document.get("sweep"), dict)


def _confirm_sweep(args: argparse.Namespace, source: str, plan: dict) -> bool:
    """Whether the sweep may start: small grids, ``--yes``, a ``sweep:`` section of the user's own recipe file, or a
    "y" typed at the prompt (a terminal only). A large grid run without a terminal and without ``--yes`` is refused
    with how to start it."""
    from .sweep import CONFIRM_ABOVE_CELLS

    cells = len(plan["cells"])
    if cells <= CONFIRM_ABOVE_CELLS or args.yes or _writes_its_own_sweep(source):
        return True
    if sys.stdin is not None and sys.stdin.isatty():
        answer = input(f"hf-sparse sweep: start these {cells} cells? [y/N] ").strip().lower()
        return answer in ("y", "yes")
    raise ConfigError(
        f"{quote(source)} is a grid of {cells} cells (more than {CONFIRM_ABOVE_CELLS}); add --yes to "
        "start it, or write a smaller sweep: section (criteria, granularities, sparsities) in your own recipe file."
    )


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .recipes import load_recipe
    from .sweep import run_sweep, sweep_plan

    source = args.recipe or "minilm-pruning-sweep"
    recipe = load_recipe(source)
    plan = sweep_plan(recipe)
    print(f"hf-sparse sweep: {source} into {args.output}:", flush=True)
    for line in plan["lines"]:
        print(f"  {line}", flush=True)
    if not _confirm_sweep(args, source, plan):
        print("hf-sparse sweep: not started.")
        return 1
    record = run_sweep(recipe, args.output, recipe_source=source)
    print(f"\nhf-sparse sweep: {len(record['cells'])} cells; table written to {args.output}/sweep.md")
    print(f"  dense: test accuracy {record['dense']['test_accuracy']:.4f}")
    for cell in record["cells"]:
        print(f"  {cell['name']}: {cell['test_accuracy']:.4f} ({100 * cell['delta_vs_dense']:+.2f} points)")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    import yaml

    from .jobs.tasks import task_for
    from .recipes import dump_recipe, load_recipe

    name = _recipe_task(args.recipe)
    task = task_for(name)
    if name is not None:
        recipe = task.load_recipe(_recipe_file(args.recipe))
        if not args.no_model:
            recipe = task.preflight(recipe)
        print(yaml.safe_dump(recipe.to_dict(), sort_keys=False), end="")
        return 0
    recipe = load_recipe(args.recipe)
    if not args.no_model:
        task.preflight(recipe)  # module names, layer indices and the teacher, against the model's config
    print(dump_recipe(recipe), end="")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    def progress(message: str) -> None:  # on stderr: stdout is the JSON
        print(f"hf-sparse info: {message}", file=sys.stderr, flush=True)

    progress(f"hf_sparse {__version__}; importing torch and transformers ...")
    from .integrations.kernel_hub import hub_kernels_status
    from .machine import machine_info
    from .ops import kernel_status, load_kernels
    from .ops._loader import build_dir, cuda_status, load_cuda
    from .recipes import packaged_recipes

    folder = build_dir()
    built = folder.is_dir() and any(folder.glob("*.so"))
    progress(
        f"loading the C++ kernels from {folder}"
        if built
        else f"building the C++ kernels into {folder} (once, about a minute) ..."
    )
    load_kernels()
    load_cuda()  # builds only where torch has CUDA, a GPU is visible and nvcc is found; else records why
    info = {
        "hf_sparse": __version__,
        **machine_info(),
        "cpu_kernels": kernel_status(),
        "cuda_kernels": cuda_status(),
        "hub_kernels": hub_kernels_status(),
        "packaged_recipes": sorted(packaged_recipes()),
    }
    print(json.dumps(info, indent=2))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .integrations.inspect import format_inspection, inspect_checkpoint

    report = inspect_checkpoint(args.path)
    print(json.dumps(report, indent=2) if args.json else format_inspection(report))
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from .integrations.hub import push_to_hub

    url = push_to_hub(
        args.path,
        args.repo_id,
        token=args.token,
        private=True if args.private else None,
        revision=args.revision,
        commit_message=args.commit_message,
        refresh_card=not args.keep_card,
    )
    print(f"hf-sparse push: {args.path} -> {args.repo_id}: {url}")
    return 0


def _cmd_build_kernels(args: argparse.Namespace) -> int:
    from .ops import kernel_status, load_kernels
    from .ops._loader import build_dir

    print(f"hf-sparse: building the C++ ops into {build_dir()} (about a minute the first time) ...", flush=True)
    ok = load_kernels()
    print(f"hf-sparse: {'ready' if ok else 'NOT built'}: {kernel_status()['reason']}")
    return 0 if ok else 1


def _cmd_package_kernels(args: argparse.Namespace) -> int:
    from .integrations.kernel_hub import build_kernel_package, push_kernel_package

    print(
        f"hf-sparse: building the kernel package into {args.output} (a minute or more the first time) ...", flush=True
    )
    result = build_kernel_package(args.output, version=args.version)
    for backend, why in result["skipped"].items():
        print(f"hf-sparse: no {backend} build: {why}")
    print(f"hf-sparse: built {', '.join(result['built'])} in {args.output}/build")
    if args.push_to_hub:
        url = push_kernel_package(
            args.output, args.push_to_hub, token=args.hub_token, private=True if args.private else None
        )
        print(f"hf-sparse: pushed to {args.push_to_hub} (branch v{args.version}): {url}")
        print(
            f'hf-sparse: load it with kernels.get_kernel("{args.push_to_hub}", version={args.version}, '
            "trust_remote_code=True)"
        )
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import importlib.util

    from ._resources import data_dir

    path = data_dir("benchmarks") / f"{args.suite.replace('-', '_')}.py"
    spec = importlib.util.spec_from_file_location(f"hf_sparse_bench_{args.suite}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def progress(i, total, case):
        ratios = ", ".join(f"{k} {v['median']:.2f}x" for k, v in case["speedup"].items())
        best = case.get("best_dense")
        head = f" vs the best dense ({best}) {case['ratio_vs_best_dense']:.2f}x;" if best else ""
        print(
            f"[{i}/{total}] {case['name']}: ours {1e3 * case['ours_s']:.3f} ms;{head} speedup vs {ratios}", flush=True
        )

    extra = {}
    if args.batch is not None:
        extra["batches"] = tuple(args.batch)
    if args.checkpoint:
        extra["checkpoints"] = tuple(args.checkpoint)
    if extra and args.suite != "minilm":
        raise ConfigError(f"hf-sparse bench: --batch and --checkpoint apply to the minilm suite, not {args.suite}.")
    if any(b < 1 for b in extra.get("batches", ())):
        raise ConfigError(f"hf-sparse bench: --batch sizes must be positive, got {list(extra['batches'])}.")
    for path in extra.get("checkpoints", ()):
        if not (Path(path) / "config.json").is_file():
            raise ConfigError(
                f"hf-sparse bench: --checkpoint {quote(path)} is not a saved model folder (no config.json)."
            )
    record = module.run(quick=args.quick, threads=args.threads, rounds=args.rounds, progress=progress, **extra)
    text = json.dumps(record, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
        print(f"hf-sparse bench: results written to {args.json}")
    else:
        print(text)
    return 0


#: What ``--task`` takes (the aliases of :data:`hf_sparse.jobs.starter.TASK_ALIASES` are for recipes' ``task:``).
_TASK_CHOICES = ("text-classification", "token-classification", "masked-lm", "causal-lm", "recsys")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-sparse", description="Compress Hugging Face models: prune, measure.")
    parser.add_argument("--version", action="version", version=f"hf-sparse {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compress", help="fine-tune the dense baseline and pruned models from a recipe, and compare")
    p.add_argument(
        "recipe",
        nargs="?",
        default=None,
        help="recipe YAML file or packaged recipe name (default: the embedded minilm-rotten-tomatoes)",
    )
    p.add_argument("--output", "-o", default="hf_sparse_output", help="output folder (default: %(default)s)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted job in --output: reuse its saved runs and resume unfinished training from "
        "its last complete checkpoint",
    )
    p.add_argument(
        "--push-to-hub",
        metavar="REPO",
        default=None,
        help="upload each saved model with its card to this Hub repository (REPO-<run> when the recipe has several)",
    )
    p.add_argument("--hub-token", default=None, help="Hub token for --push-to-hub (default: the stored one)")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repositories private")
    g = p.add_argument_group(
        "your own model and data (no recipe needed: the task's starter recipe is used, written to OUTPUT/recipe.yaml)"
    )
    g.add_argument(
        "--model", default=None, help="model to compress: a local folder, a packaged alias or a cached Hub id"
    )
    g.add_argument(
        "--data",
        default=None,
        help="data: a .csv/.tsv/.json/.jsonl/.parquet/.txt file, a save_to_disk folder or a cached Hub dataset id",
    )
    g.add_argument(
        "--task",
        default=None,
        choices=_TASK_CHOICES,
        help="the task (default: the recipe's, else text-classification)",
    )
    g.add_argument(
        "--column",
        action="append",
        default=None,
        metavar="ROLE=COLUMN",
        help="which column holds a role, e.g. --column text=review --column label=stars (roles: text, text_pair, "
        "label, tokens, tags, user, item, timestamp)",
    )
    g.add_argument(
        "--label-names", default=None, help="class names in id order, comma-separated (default: from the data)"
    )
    p.set_defaults(func=_cmd_compress)

    p = sub.add_parser("init", help="write a commented starter recipe for a task (your model and data filled in)")
    p.add_argument(
        "--task", default="text-classification", choices=_TASK_CHOICES, help="the task (default: %(default)s)"
    )
    p.add_argument("--model", default=None, help="model to compress (a local folder, packaged alias or cached Hub id)")
    p.add_argument("--data", default=None, help="the data (a file, a save_to_disk folder or a cached Hub dataset id)")
    p.add_argument("--output", "-o", default=None, help="file to write (default: print it)")
    p.add_argument("--force", action="store_true", help="replace --output if it exists")
    p.set_defaults(func=_cmd_init)

    p = sub.add_parser("sweep", help="accuracy of every criterion x granularity x sparsity of a recipe's sweep")
    p.add_argument(
        "recipe", nargs="?", default=None, help="recipe YAML file or packaged name (default: minilm-pruning-sweep)"
    )
    p.add_argument("--output", "-o", default="hf_sparse_sweep", help="output folder (default: %(default)s)")
    p.add_argument(
        "--yes",
        "-y",
        action="store_true",
        help="start a grid of more than 12 cells without asking (the plan, cells x steps, is printed first; a "
        "sweep: section in your own recipe file starts without it)",
    )
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser(
        "recsys",
        help="train a next-item recommender (MovieLens or your interactions file), dense and with each compressed "
        "item table of a recipe",
    )
    p.add_argument("recipe", help="recsys recipe YAML file or packaged name (e.g. movielens-sasrec)")
    p.add_argument("--output", "-o", default="hf_sparse_recsys", help="output folder (default: %(default)s)")
    p.set_defaults(func=_cmd_recsys)

    p = sub.add_parser(
        "lm", help="a causal LM with windowed attention: perplexity vs dense, short fine-tuning, reload, latency"
    )
    p.add_argument("recipe", help="`task: lm` recipe YAML file or packaged name (e.g. smollm2-windowed)")
    p.add_argument("--output", "-o", default="hf_sparse_lm", help="output folder (default: %(default)s)")
    p.set_defaults(func=_cmd_lm)

    p = sub.add_parser("validate", help="check a recipe and print it with every default resolved")
    p.add_argument("recipe", nargs="?", default=None, help="recipe YAML file or packaged recipe name")
    p.add_argument(
        "--no-model", action="store_true", help="check the recipe alone, not its names against the model's config"
    )
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("bench", help="benchmark our kernels against the best baselines, same process (JSON)")
    p.add_argument(
        "suite",
        choices=[
            "spmm",
            "minilm",
            "train-step",
            "structured",
            "distill",
            "quant",
            "attention",
            "long-context",
            "embedding",
            "gpu",
            "ddp-comm",
        ],
        help="which benchmark suite",
    )
    p.add_argument("--quick", action="store_true", help="a few key cases, under a minute")
    p.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds per case")
    p.add_argument("--json", default=None, help="write the results to this file instead of printing them")
    p.add_argument(
        "--batch",
        type=int,
        nargs="+",
        default=None,
        help="(minilm) batch sizes to time, e.g. --batch 1 32 (default 1)",
    )
    p.add_argument(
        "--checkpoint",
        action="append",
        default=None,
        help="(minilm) also time this saved compressed model's encoder against the dense baselines (repeatable)",
    )
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("inspect", help="per-layer format, shape, stored fraction and bytes of a sparse checkpoint")
    p.add_argument("path", help="a folder written by save_pretrained after hf_sparse.sparsify_")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("push", help="upload a saved checkpoint folder to the Hub with its model card and plot")
    p.add_argument("path", help="a folder written by save_pretrained (e.g. hf_sparse_output/pruned-80)")
    p.add_argument("repo_id", help="model repository, e.g. user/minilm-rt-sparse80 (created if missing)")
    p.add_argument("--token", default=None, help="Hub token (default: the one `hf auth login` stored, or HF_TOKEN)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", default=None, help="branch to commit to (default: main)")
    p.add_argument("--commit-message", default=None, help="commit message")
    p.add_argument(
        "--keep-card", action="store_true", help="upload README.md as it is instead of regenerating the model card"
    )
    p.set_defaults(func=_cmd_push)

    p = sub.add_parser("build-kernels", help="build the C++ ops now (otherwise they are built on first use)")
    p.set_defaults(func=_cmd_build_kernels)

    p = sub.add_parser(
        "package-kernels",
        help="build the kernels as a package for Hugging Face's `kernels` library (get_kernel), optionally push it",
    )
    p.add_argument("output", help="folder of the package (build/<variant>/ per torch/backend/platform, README.md)")
    p.add_argument("--version", type=int, default=1, help="the kernel's major version: branch v<version> (default 1)")
    p.add_argument("--push-to-hub", metavar="REPO", default=None, help="kernel repository to push to, e.g. user/name")
    p.add_argument("--hub-token", default=None, help="Hub token (default: the stored login or HF_TOKEN)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.set_defaults(func=_cmd_package_kernels)

    p = sub.add_parser("info", help="versions, machine and packaged recipes")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.func(args)
    except HfSparseError as exc:
        print(f"hf-sparse {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
