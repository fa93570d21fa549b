"""`tvm` and `tvm-fast-math`: the model compiled by TVM for the target and tuned with MetaSchedule
(kiln.optimize.compile).

Built by their own stage, not quick transforms: tuning takes minutes to hours and is cached by content. Both
tune into the same database of the prepared model, so the kernels they share (every matmul) are tuned once.
`tvm-fast-math` approximates exp/erf/tanh/softmax (kiln.compiler.passes "fast-math"); the metric gate judges
the error like any other candidate's, and it is skipped on models without those operators."""

from kiln.optimize.candidates.base import Candidate, register

register(Candidate(name="tvm", backend="tvm", stage="compile",
                   description="TVM: Relax import, MetaSchedule tuning within the trial budget, one model.so"))
register(Candidate(name="tvm-fast-math", backend="tvm", stage="compile", graph_passes=("fast-math",),
                   description="TVM with fast approximations of exp, erf, tanh and softmax (GELU, attention), "
                               "judged by the metric ranges"))
