"""`tvm`: the model compiled by TVM for the target and tuned with MetaSchedule (kiln.optimize.compile).

Built by its own stage, not a quick transform: tuning takes minutes to hours and is cached by content."""

from kiln.optimize.candidates.base import Candidate, register

register(Candidate(name="tvm", backend="tvm", stage="compile",
                   description="TVM: Relax import, MetaSchedule tuning within the trial budget, one model.so"))
