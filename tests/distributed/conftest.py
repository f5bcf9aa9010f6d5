"""Launching the 2-process CPU runs of the distributed tests (see hf_sparse.distributed.launch for why the
Trainer runs start with ``accelerate launch --multi_gpu`` on a CPU-only machine)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch.distributed as dist

from hf_sparse.distributed.launch import cpu_launch_command

HERE = Path(__file__).resolve().parent


def _env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


@pytest.fixture(scope="session")
def two_process():
    """``launch(launcher, script, *args)``: run ``script`` (in this folder) as 2 CPU processes on gloo, with
    ``launcher`` "accelerate" or "torchrun"; fails the test with the output's tail when a process fails."""
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available in this torch build")

    def launch(launcher: str, script: str, *args: str, timeout: int = 240) -> None:
        cmd = cpu_launch_command(HERE / script, *args, launcher=launcher)
        try:
            proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=HERE)
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            pytest.fail(f"{' '.join(cmd)} did not finish in {timeout} s:\n{out[-4000:]}")
        if proc.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} exited with {proc.returncode}:\n{(proc.stdout + proc.stderr)[-6000:]}")

    return launch


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory, request):
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield path
    shutil.rmtree(path, ignore_errors=True)
