"""The optimizer's stages as plain functions, in the order the optimize flow runs them:

    validate -> prepare -> reference -> build (baseline and transforms) / compile (TVM) -> evaluate
    -> gate (select) -> publish (protocol codegen, report)

Each takes and returns the small models of kiln.optimize.models; tasks/ wraps each in a Prefect task.
Candidates are registered data in kiln.optimize.candidates; OptimizeRequest is what a run is asked to do.
This package imports nothing of Prefect and nothing here runs at import time.
"""
