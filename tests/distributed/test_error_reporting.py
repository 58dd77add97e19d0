"""A config error found on every rank reaches the user through the real launchers, whichever rank
finds it first."""

import os
import subprocess
import time

import pytest

from tests.distributed.launch import ROOT, command

SCRIPT = ROOT / "tests" / "distributed" / "scripts" / "late_speaker.py"


def launch(
    launcher: str, speaker_delay_s: float, grace_s: float
) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    proc = subprocess.run(
        [*command(launcher, 2, SCRIPT), str(speaker_delay_s), str(grace_s)],
        cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc, time.monotonic() - started


# The deepspeed runner passes the failing rank's code on; torchrun reports any failure as 1.
@pytest.mark.parametrize(("launcher", "returncode"), [("deepspeed", 2), ("torchrun", 1)])
def test_late_speaker_is_heard_once(launcher, returncode):
    """Rank 1 fails 3 s before rank 0; before the grace wait the launcher killed rank 0 unheard."""
    proc, elapsed = launch(launcher, speaker_delay_s=3, grace_s=60)
    output = proc.stdout + proc.stderr
    assert proc.returncode == returncode, output[-3000:]
    assert output.count("config error: found by local rank") == 1, output[-3000:]
    assert "found by local rank 0" in output
    # The launcher stopped the waiting rank once the speaker exited: nobody sat out the 60 s grace.
    assert elapsed < 50, elapsed


def test_quiet_rank_speaks_when_the_speaker_never_does():
    """If the speaker is stuck past the grace period, a quiet rank's own message still gets out."""
    proc, _ = launch("deepspeed", speaker_delay_s=60, grace_s=2)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-3000:]
    assert "config error: found by local rank 1" in output, output[-3000:]
