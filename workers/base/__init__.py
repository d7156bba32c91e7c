"""The base room: what every process of ours does for itself, used by the rooms above.

``process`` (a forked ``Child`` watched through a pidfd, resetting inherited
signals, the parent-death signal, ``run_at_exit``), ``forks`` (state a
forked child must not share with its parent), ``logs`` (the opt-in log
hand-over) and ``tally`` (trouble that comes in floods, logged while it
lasts).  It imports nothing from the other rooms.
"""
