"""Every rank finds the same error, but local rank 0 (the one that speaks) gets there late.

    python late_speaker.py SPEAKER_DELAY_S GRACE_S

This is the order a loaded machine produces: the quiet ranks reach the error first.
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from integration.errors import report_and_exit  # noqa: E402
from integration.launcher_args import strip_launcher_args  # noqa: E402

strip_launcher_args(sys.argv)
delay_s, grace_s = map(float, sys.argv[1:3])
speaker = int(os.environ["LOCAL_RANK"]) == 0
if speaker:
    time.sleep(delay_s)
report_and_exit(f"config error: found by local rank {os.environ['LOCAL_RANK']}", 2, speaker, grace_s)
