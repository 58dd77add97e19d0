"""User-facing error type, and how a multi-process job reports one and stops."""

from __future__ import annotations

import sys
import time
from typing import NoReturn

# Long enough for the speaking rank to print and exit even when it reached the error seconds after
# the others (slow imports on a loaded machine); short enough that a launcher which does not stop
# the other ranks itself still finishes promptly.
QUIET_RANK_GRACE_S = 15.0


class ConfigError(ValueError):
    """A setting the user can fix. The message names the key, the value, the problem and the fix."""


def report_and_exit(message: str, code: int, speaker: bool, grace_s: float = QUIET_RANK_GRACE_S) -> NoReturn:
    """Print `message` once per node and exit with `code`, on every rank that found the error.

    The deepspeed runner and torchrun stop every rank as soon as one exits non-zero. If the quiet
    ranks exited at once they could get the speaker killed before it printed, and the user would see
    only an exit code. So they wait first: normally the launcher stops them while they wait, after
    the speaker's message is out; if the speaker never got that far, they print the message themselves.
    """
    if not speaker:
        time.sleep(grace_s)
    print(message, file=sys.stderr, flush=True)
    sys.exit(code)
