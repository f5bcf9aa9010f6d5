"""Command lines that start several CPU processes of one script (gloo), for tests and benchmarks.

``accelerate launch --cpu --num_processes N`` starts several CPU processes only through ``mpirun`` (MPI, with
``--mpirun_hostfile``); without it accelerate runs the script once, in a single process. Accelerate's other
multi-process launcher, chosen with ``--multi_gpu``, is torchrun underneath and needs no GPU: with
``TrainingArguments(use_cpu=True)`` every process becomes a CPU rank of a gloo group (accelerate's ``MULTI_CPU``)
and the Trainer wraps the model in DDP. That is what :func:`cpu_launch_command` builds for ``"accelerate"``;
``"torchrun"`` gives ``python -m torch.distributed.run`` for scripts that set up the group themselves.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from ..errors import ConfigError

__all__ = ["free_port", "cpu_launch_command"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for the rendezvous of one launch)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_launch_command(
    script: str | Path,
    *args: str,
    num_processes: int = 2,
    threads: int = 1,
    launcher: str = "accelerate",
    port: int | None = None,
) -> list[str]:
    """The command that runs ``script args...`` as ``num_processes`` CPU processes on this machine.

    Args:
        launcher: ``"accelerate"`` (the script uses the Trainer with ``use_cpu=True``) or ``"torchrun"``.
        threads: OpenMP threads per process (``OMP_NUM_THREADS``).
        port: Rendezvous port (default: a free one).
    """
    if num_processes < 2:
        raise ConfigError(f"cpu_launch_command: num_processes must be >= 2, got {num_processes}.")
    port = port or free_port()
    if launcher == "accelerate":
        entry = Path(sys.executable).with_name("accelerate")
        base = [str(entry), "launch"] if entry.exists() else [sys.executable, "-m", "accelerate.commands.launch"]
        cmd = base + [
            "--multi_gpu",
            "--num_processes", str(num_processes),
            "--num_machines", "1",
            "--mixed_precision", "no",
            "--dynamo_backend", "no",
            "--num_cpu_threads_per_process", str(threads),
            "--main_process_port", str(port),
        ]  # fmt: skip
    elif launcher == "torchrun":
        cmd = [
            sys.executable, "-m", "torch.distributed.run",
            "--nproc_per_node", str(num_processes),
            "--master_addr", "127.0.0.1",
            "--master_port", str(port),
        ]  # fmt: skip
    else:
        raise ConfigError(f"cpu_launch_command: launcher must be 'accelerate' or 'torchrun', got {launcher!r}.")
    return cmd + [str(script), *map(str, args)]
