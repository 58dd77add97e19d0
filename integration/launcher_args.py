"""What launchers add to a script's arguments and environment."""

from __future__ import annotations

# torch's names for a process's rank, local rank, world size and processes on its node (the last:
# torchrun's LOCAL_WORLD_SIZE, the deepspeed runner's launch.py LOCAL_SIZE). torchrun and the
# runner's own per-node launcher set them for each process they start.
TORCH_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", ("LOCAL_WORLD_SIZE", "LOCAL_SIZE"))


def variable_names(launcher_variables: tuple) -> tuple[str, ...]:
    """Every name in one launcher's entry, the alternatives for the node's process count included."""
    *names, local_sizes = launcher_variables
    return (*names, *local_sizes)


def strip_launcher_args(argv: list[str]) -> None:
    """Remove `--local_rank=N` / `--local_rank N` (deepspeed runner; LOCAL_RANK is in the
    environment too) in place, so Hydra sees only overrides."""
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--local_rank=") or arg.startswith("--local-rank="):
            del argv[i]
        elif arg in ("--local_rank", "--local-rank"):
            del argv[i : i + 2]
        else:
            i += 1
