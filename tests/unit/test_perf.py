"""The step interval: wall time per step between logged rows, with what the loop excludes left out."""

import time

from integration.perf import IntervalClock


def test_interval_is_wall_time_per_step_since_the_last_read():
    clock = IntervalClock()
    for _ in range(2):
        time.sleep(0.05)
        clock.stepped()
    per_step = clock.read()
    assert 0.05 <= per_step < 0.05 + 0.04  # two steps of 0.05 s, averaged
    time.sleep(0.02)
    clock.stepped()
    assert 0.02 <= clock.read() < 0.05  # the read started the next interval


def test_excluded_time_is_left_out_and_counted_time_is_not():
    clock = IntervalClock()
    time.sleep(0.03)  # counted: work between steps, like logging
    with clock.excluded():
        time.sleep(0.2)  # left out: evaluation, checkpoint saving
    clock.stepped()
    assert 0.03 <= clock.read() < 0.03 + 0.1


def test_restart_drops_what_came_before():
    clock = IntervalClock()
    time.sleep(0.1)
    clock.stepped()
    clock.restart()
    time.sleep(0.01)
    clock.stepped()
    assert 0.01 <= clock.read() < 0.04  # without the restart: (0.1 + 0.01) / 2 steps
    assert clock.read() < 0.01  # no step since: the time so far, not divided by zero
