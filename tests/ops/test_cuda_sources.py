"""The CUDA sources (kernels/csrc/cuda/*.cu) compile for sm_80 and sm_90 and stay torch-free.

Most machines that run this suite have no GPU, so the .cu files are only ever compiled here: this catches a broken
kernel before it reaches a GPU machine. One nvcc call per file builds both architectures (fewer front-end passes
than two calls). The torch-free rule keeps the kernels buildable with nvcc alone, behind a separate .cpp binding.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CUDA_DIR = Path(__file__).resolve().parents[2] / "kernels" / "csrc" / "cuda"
SOURCES = sorted(CUDA_DIR.glob("*.cu"))
ARCHS = ("80", "90")
TIMEOUT_S = 300
TORCH_INCLUDE = re.compile(r'^\s*#\s*include\s*[<"](torch|ATen|c10|caffe2)/', re.MULTILINE)
LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.MULTILINE)


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.access(Path(home) / "bin" / "nvcc", os.X_OK):
            return str(Path(home) / "bin" / "nvcc")
    return None


def _with_local_headers(source: Path) -> list[Path]:
    """The source and every header it includes with quotes from its own folder, transitively."""
    seen, todo = [], [source]
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.append(path)
        todo.extend(path.parent / name for name in LOCAL_INCLUDE.findall(path.read_text()))
    return seen


def test_cuda_sources_exist():
    assert SOURCES, f"no .cu files under {CUDA_DIR}"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_cuda_source_is_torch_free(source):
    for path in _with_local_headers(source):
        match = TORCH_INCLUDE.search(path.read_text())
        assert match is None, f"{path.name} includes a torch header: {match.group(0).strip()}"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_cuda_source_compiles_for_sm80_and_sm90(source, tmp_path):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (not on PATH, nor in $CUDA_HOME/bin or /usr/local/cuda/bin)")
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    # --threads: the architectures compile in parallel (one per core).
    cmd = [nvcc, "-c", "-std=c++17", "--threads=0", *gencode, str(source), "-o", str(tmp_path / f"{source.stem}.o")]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"nvcc took over {TIMEOUT_S} s on {source.name}")
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    assert (tmp_path / f"{source.stem}.o").stat().st_size > 0
