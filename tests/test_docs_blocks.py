"""Every ``python`` block of ``README.md`` and ``docs/*.md`` runs in CI, so none can rot.

Each block carries a CI marker (the convention is in ``tests/test_readme_quickstart.py``'s docstring): it runs,
is run by a named test, or is skipped with its reason. The blocks this file runs go through one Python process
(imports are paid once), each in a fresh namespace, in a fresh folder holding ``my-model/`` and ``reviews.csv``,
after its hidden set-up code; a failure is reported at the block's line, with the traceback pointing into the
Markdown file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_readme_quickstart import ROOT, Block, doc_files, parse_blocks, write_user_files

pytestmark = pytest.mark.real  # my-model/ carries the packaged MiniLM's tokenizer; some blocks load MiniLM


def all_blocks() -> list[Block]:
    return [b for path in doc_files() for b in parse_blocks(path)]


def python_blocks() -> list[Block]:
    return [b for b in all_blocks() if b.language == "python"]


RUN_HERE = [b for b in python_blocks() if b.action == "run" and b.run_by is None]


def test_every_python_block_is_marked():
    missing = [b.where for b in python_blocks() if b.action is None]
    assert not missing, (
        "python blocks without a CI marker (add `<!-- ci: run -->` on the line before the fence, or "
        f"`<!-- ci: skip (why it cannot run in CI) -->`): {missing}"
    )


def test_skips_say_why_and_runs_by_others_exist():
    for block in all_blocks():
        if block.action == "skip":
            assert len(block.note) >= 10, f"{block.where}: a skipped block needs its reason: ci: skip (reason)"
            assert not block.setup, f"{block.where}: a skipped block has no set-up code"
        if block.run_by is not None:  # the named test exists and reads the file the block is in
            test = ROOT / block.run_by
            assert test.is_file(), f"{block.where}: {block.run_by} does not exist"
            assert block.path.name in test.read_text(), f"{block.where}: {block.run_by} does not read it"


def test_only_python_and_bash_blocks_are_marked_to_run():
    odd = [b.where for b in all_blocks() if b.action == "run" and b.language not in ("python", "bash")]
    assert not odd, f"only python and bash blocks can run: {odd}"


@pytest.fixture(scope="module")
def block_results(request, tmp_path_factory) -> dict[str, dict]:
    # only the blocks whose tests were selected (`-k`), in the order of the files
    chosen = {
        item.callspec.params["block"].where
        for item in request.session.items
        if getattr(item, "callspec", None) is not None and isinstance(item.callspec.params.get("block"), Block)
    }
    folder = tmp_path_factory.mktemp("doc-blocks")
    write_user_files(folder / "user")
    fields = ("where", "line", "code", "setup", "setup_line")
    spec = [{"path": str(b.path), **{f: getattr(b, f) for f in fields}} for b in RUN_HERE if b.where in chosen]
    (folder / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "tests"), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, __file__, str(folder)], env=env, capture_output=True, text=True, timeout=1200
    )
    results_file = folder / "results.json"
    assert results_file.is_file(), f"the block runner failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads(results_file.read_text())


@pytest.mark.parametrize("block", RUN_HERE, ids=[b.where for b in RUN_HERE])
def test_the_block_runs_as_written(block: Block, block_results):
    result = block_results[block.where]
    assert result["ok"], f"{block.where} failed:\n{block.code}\n{result['error']}\n{result['stdout'][-2000:]}"


# -- the runner (in a process of its own) -------------------------------------------------------------------------
def _run_blocks(folder: Path) -> None:
    import contextlib
    import io
    import shutil
    import time
    import traceback

    import torch

    spec = json.loads((folder / "spec.json").read_text())
    results: dict[str, dict] = {}
    for i, entry in enumerate(spec):
        work = folder / "blocks" / f"{i:03d}"
        shutil.copytree(folder / "user", work)
        namespace = {"__name__": "__main__"}
        out = io.StringIO()
        started = time.perf_counter()
        error = ""
        os.chdir(work)
        torch.manual_seed(0)
        try:
            with contextlib.redirect_stdout(out):
                if entry["setup"]:
                    setup = "\n" * (entry["setup_line"] - 1) + entry["setup"]
                    exec(compile(setup, entry["path"], "exec"), namespace)
                code = "\n" * entry["line"] + entry["code"]
                exec(compile(code, entry["path"], "exec"), namespace)
        except BaseException:  # noqa: B036  (a block calling sys.exit is a failure too)
            error = traceback.format_exc()
        finally:
            os.chdir(folder)
        seconds = time.perf_counter() - started
        results[entry["where"]] = {"ok": not error, "error": error, "stdout": out.getvalue(), "seconds": seconds}
        print(f"{seconds:6.1f} s  {'ok  ' if not error else 'FAIL'}  {entry['where']}", file=sys.stderr, flush=True)
    (folder / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    _run_blocks(Path(sys.argv[1]))
