"""Arguments launchers add that are not ours to parse."""

from __future__ import annotations


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
