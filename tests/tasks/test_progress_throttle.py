"""Progress artifact updates are throttled: each one is an API call and server work."""

from __future__ import annotations

from tasks.train import Throttle


def test_throttle_lets_one_update_a_second_and_always_the_last() -> None:
    now = [0.0]
    throttle = Throttle(1.0, clock=lambda: now[0])
    seen = []
    for step in range(10):  # ten epochs of a quarter second each
        now[0] = step * 0.25
        seen.append(throttle.ready(final=step == 9))
    assert seen == [True, False, False, False, True, False, False, False, True, True]
