"""The optimizer's defaults, in one place: the CLI, the request, the flows and the stages read them here."""

from __future__ import annotations

TARGETS = ("host",)  # this CPU (kiln.targets: levels, LLVM CPUs, tags, instance families, cuda)
MIN_GAIN = 0.02  # a new candidate must be at least this much faster (a fraction of latency) to ship
# timed calls per candidate in the selection rounds (or 5 s of calls, whichever is fewer), and in the confirmation's;
# the request's latency_repeats replaces it for both
LATENCY_REPEATS = 200
LATENCY_SECONDS = 5.0
# the winner, the baseline and the incumbent are timed again in fresh rounds, over this many inputs spread across
# the evaluation and held-out splits (all of them when there are fewer; samples of several shapes: the
# kiln.optimize.traffic.TIMED_INPUTS stratified by size): the speed-up the artifact claims is this one
CONFIRM_INPUTS = 8
CONFIRM_SECONDS = 5.0
# a share of the evaluation samples that neither the accuracy-aware fallback nor the gate sees: the winner's
# accuracy is reported (and must stay inside the ranges) on these; none when the split is too small to share
HELD_OUT_FRACTION = 0.2
MIN_SELECTION_FEEDS = 4  # the selection split keeps at least this many feeds

# a candidate far slower than the baseline (KILN_HOPELESS_SLOWDOWN) on the first PROBE_INPUTS evaluation inputs
# is stopped there, when judging it on every sample would take more than PROBE_WORTH_S: running untuned TVM
# over every sample for accuracy buys nothing
PROBE_INPUTS = 3
PROBE_WORTH_S = 5.0

# a build for a CPU above this host is judged on qemu-user's emulated CPU (kiln.optimize.emulation): its time limit
# is the candidate's times this (TCG runs vector code tens of times slower, and Python starts under it too)
EMULATION_SLOWDOWN = 20
