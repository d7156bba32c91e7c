"""Tally: trouble logged at once, summarised while it lasts, totalled when it stops (a fake clock)."""

from __future__ import annotations

import pytest

from workers.base.tally import Tally


class Lines:
    """A logger's ``warning``: keeps each line, formatted."""

    def __init__(self):
        self.lines: list[str] = []

    def warning(self, fmt, *args):
        self.lines.append(fmt % args)


# (what happens: ("add", at) or ("tick", at); the lines there must be then, in order, by their opening words)
SCRIPTS = [
    pytest.param([("add", 0.0)], ["x: why"], id="the first is logged at once, with its reason"),
    pytest.param([("add", 0.0), ("tick", 5.0)], ["x: why"],
                 id="one alone ends without a total"),
    pytest.param([("add", 0.0), ("add", 1.0), ("add", 2.0), ("tick", 4.9)], ["x: why"],
                 id="more within the interval wait for the summary"),
    pytest.param([("add", 0.0), ("add", 1.0), ("add", 4.0), ("tick", 5.0)], ["x: why", "x: 2 more in the last 5.0 s"],
                 id="a summary at most every interval while it lasts"),
    pytest.param([("add", 0.0), ("add", 1.0), ("add", 4.0), ("tick", 5.0), ("add", 6.0), ("tick", 9.0),
                  ("tick", 11.0)], ["x: why", "x: 2 more", "x: over; 4 in all in 6.0 s (the last 1"],
                 id="the total once none came for an interval"),
    pytest.param([("add", 0.0), ("add", 1.0), ("tick", 6.5), ("add", 7.0)], ["x: why", "x: over; 2 in all", "x: why"],
                 id="after the total a new episode starts with a first line"),
]


@pytest.mark.parametrize("script, expected", SCRIPTS)
def test_a_tally_logs_the_first_at_once_then_summaries_then_the_total(script, expected):
    log = Lines()
    tally = Tally(log, "x", every=5.0)
    for what, at in script:
        tally.add("why", now=at) if what == "add" else tally.tick(at)
    assert len(log.lines) == len(expected), log.lines
    for line, start in zip(log.lines, expected):
        assert line.startswith(start), (line, start)


def test_close_totals_an_episode_still_going_and_the_total_counts_what_each_add_said():
    log = Lines()
    tally = Tally(log, "x", every=5.0)
    tally.add("first", n=3, now=0.0)
    tally.add("latest", n=4, now=1.0)
    tally.close()
    assert log.lines[-1].startswith("x: over; 7 in all in 1.0 s (the last 4 since the previous line); latest: latest")
    tally.close()  # nothing more to say
    assert len(log.lines) == 2
