"""What a tuning trial and a search round cost on this CPU, measured by earlier runs, and the first round a
time budget can afford.

With a wall-clock budget alone the trial budget is effectively unbounded, so MetaSchedule's first round gave
every task a full 64-trial round in task order: on 2 AMD EPYC znver3 cores 64 trials of an encoder task took
~2 minutes, and `--tune-time 4m` reached 2 of 17 tasks (the other 15 ran TVM's untuned, single-threaded
default: 44.6x onnxruntime's latency). Here the first round is sized from the time, so every task gets a
measured, parallel, vectorized schedule early, and the rest of the time goes where the gradient scheduler
sees the latency.

Costs are kept per CPU beside its shared tuning database (`trial_costs.json`): seconds per measured trial
(build and run, the builder pool's start-up included) and seconds per round spent in the search itself
(evolutionary sampling and the cost model). Until a run on this CPU measured them, conservative defaults
from znver3 stand in.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

FILE = "trial_costs.json"
DEFAULT_TRIAL_S = 2.0  # znver3, 2 cores: a 64-trial round of an encoder task in ~2 minutes
DEFAULT_ROUND_S = 8.0  # the search's own cost per task round on 2 cores (FACTS.md)
MIN_FIRST_ROUND = 4  # fewer trials than this rarely contain a parallel, vectorized schedule
FIRST_ROUND_SHARE = 0.5  # of the time budget: the rest is for the gradient scheduler's rounds
BLEND = 0.5  # a new measurement's weight against the stored one


@dataclass(frozen=True)
class Costs:
    trial_s: float = DEFAULT_TRIAL_S
    round_s: float = DEFAULT_ROUND_S
    measured: bool = False  # False: the defaults, nothing measured on this CPU yet

    def first_round_seconds(self, tasks: int, trials: int) -> float:
        return tasks * (self.round_s + trials * self.trial_s)


def load(folder: Path | None) -> Costs:
    try:
        data = json.loads((folder / FILE).read_text()) if folder else None
        return Costs(trial_s=float(data["trial_s"]), round_s=float(data["round_s"]), measured=True)
    except (OSError, ValueError, KeyError, TypeError):
        return Costs()


def save(folder: Path, trial_s: float, round_s: float) -> Costs:
    """Blend this run's costs into the stored ones (written atomically: runs may finish together)."""
    old = load(folder)
    if old.measured:
        trial_s = BLEND * trial_s + (1 - BLEND) * old.trial_s
        round_s = BLEND * round_s + (1 - BLEND) * old.round_s
    costs = Costs(trial_s=round(trial_s, 4), round_s=round(round_s, 4), measured=True)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{FILE}.{os.getpid()}"
    tmp.write_text(json.dumps({k: v for k, v in asdict(costs).items() if k != "measured"}))
    tmp.replace(folder / FILE)
    return costs


def first_round(seconds: float, tasks: int, costs: Costs, full_round: int) -> tuple[int, str | None]:
    """Trials per task in the first round so that every task's round fits in FIRST_ROUND_SHARE of `seconds`
    (at least MIN_FIRST_ROUND, at most a full round), and, where even MIN_FIRST_ROUND cannot fit in the whole
    budget, what to say before tuning starts, with the time it would need."""
    if tasks <= 0:
        return full_round, None
    affordable = (FIRST_ROUND_SHARE * seconds / tasks - costs.round_s) / costs.trial_s
    size = max(MIN_FIRST_ROUND, min(full_round, math.floor(affordable)))
    need = costs.first_round_seconds(tasks, MIN_FIRST_ROUND)
    if need <= seconds:
        return size, None
    basis = "measured on this CPU" if costs.measured else "estimated; nothing measured on this CPU yet"
    return size, (f"a tuning time of {seconds:g} s cannot give each of the {tasks} tasks a first round of "
                  f"{MIN_FIRST_ROUND} trials: that needs about {math.ceil(need / 60)} min ({costs.trial_s:.2g} s "
                  f"per trial and {costs.round_s:.2g} s of search per round, {basis}); the tasks left without "
                  f"a trial keep TVM's untuned default schedule")
