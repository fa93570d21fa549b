"""validate: everything that can be wrong with a program is found here, before any compiling."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from kiln.artifact.specs import Profile, TensorSpec, check_index_ranges
from kiln.config import settings
from kiln.errors import DatasetError, KilnError, ModelError, ProgramError
from kiln.optimize.candidates import of_stage
from kiln.optimize.feeds import feeds
from kiln.optimize.inspect import (
    describe_unsupported,
    dynamic_dims,
    index_guards,
    input_specs,
    load_model,
    output_axes,
    output_specs,
    unsupported_ops,
)
from kiln.optimize.isolation import preload, run_isolated
from kiln.optimize.models import CheckedProgram
from kiln.optimize.prepare import fix_input_shapes, infer_shapes
from kiln.optimize.profile import bounded, concrete, fix_declared, resolve
from kiln.optimize.protocol import check as check_protocol
from kiln.optimize.trace_axes import trace
from kiln.program.datasets import Samples, sample_shapes, synthetic
from kiln.program.generated import write_program
from kiln.program.loader import LoadedProgram, load_program
from kiln.program.metrics import Metric
from kiln.program.naming import clean_name
from kiln.program.sources import localize

_log = logging.getLogger("kiln.optimize")


def check_feed_size(inputs: list[TensorSpec], feeds: int, where: str) -> None:
    """Refuse shapes whose feeds would not fit, before anything is allocated (a dimension of 2**40 is a typo
    that would otherwise end in MemoryError, or in the machine swapping)."""
    limit = settings().max_input_mb * (1 << 20)
    sizes = {s.name: math.prod(s.shape) * np.dtype(s.dtype).itemsize for s in inputs}
    total = sum(sizes.values()) * feeds
    if total > limit:
        largest = max(inputs, key=lambda s: sizes[s.name])
        raise ModelError(f"the declared input shapes need {total / 2**30:.3g} GiB for {feeds} feed(s), over the "
                         f"{limit / 2**30:.3g} GiB limit; the largest input is {largest.name!r} {largest.shape} "
                         f"{largest.dtype} ({sizes[largest.name] / 2**30:.3g} GiB)", where=where,
                         hint="declare smaller shapes (--shape / shapes = {...}), or raise KILN_MAX_INPUT_MB")


def check_labels(metrics: list[Metric], outputs: list[TensorSpec], samples: Samples) -> None:
    """Top-k labels must be class indices of the scored output: 42 or -1 for 10 classes would silently count
    as wrong for every candidate alike, so the gate could never tell them apart."""
    if samples.labels is None:
        return
    for m in metrics:
        if m.kind != "topk":
            continue
        spec = next((o for o in outputs if o.name == m.output), outputs[0])
        classes = spec.shape[-1] if spec.shape else -1
        labels = np.asarray(samples.labels).reshape(-1)
        if labels.dtype.kind == "f" and not np.all(labels == np.round(labels)):
            i = int(np.argwhere(labels != np.round(labels))[0][0])
            raise DatasetError(f"metric {m.name!r} needs integer class labels; label {i} is {labels[i]}",
                               where=samples.source, hint="store the class index of each sample as its label")
        if classes > 0:
            bad = (labels < 0) | (labels >= classes)
            if bad.any():
                i = int(np.argwhere(bad)[0][0])
                raise DatasetError(f"{int(bad.sum())} label(s) lie outside the {classes} classes [0, {classes}) of "
                                   f"output {spec.name!r} that metric {m.name!r} scores; the first is {labels[i]} "
                                   f"(sample {i})", where=samples.source,
                                   hint="fix the labels, or point the metric at the right output (output=...)")


def load_samples(prog: LoadedProgram, inputs, guards, profile: Profile | None = None) -> Samples:
    """The program's evaluation samples (its dataset, or synthetic ones from the declared shapes and ranges)."""
    if prog.program.dataset is None:
        return synthetic(inputs, guards, count=prog.program.synthetic_samples, profile=profile)
    return prog.program.dataset.load(prog.root, inputs, bool(prog.program.allow_nonfinite))


def validate(location: str, shapes: dict[str, list[int]] | None, candidates: list[str], name: str | None = None,
             log: logging.Logger | logging.LoggerAdapter = _log, data: str | None = None,
             ranges: list[str] | None = None, dims: dict[str, tuple[int, int]] | None = None,
             default_dims: bool = False) -> CheckedProgram:
    """Load the program and model and check them against each other; raise a KilnError on any mistake.

    The user's code (program.py, dataset loaders, metrics) runs in a child process with a time limit, so a
    program that hangs, exits or crashes is reported as such. Operators TVM cannot compile are not a mistake:
    the tvm candidate is skipped with them named."""
    program_file = localize(location)  # an s3:// program is fetched here, with retries and their logs
    if data or ranges:  # a bare model with the user's data and ranges: kiln writes its program.py
        program_file = str(write_program(Path(program_file).expanduser().resolve(),
                                         Path(localize(data)).expanduser().resolve() if data else None,
                                         ranges or [], name))
        log.info("wrote a program for %s with data %s and ranges %s: %s", location, data, ranges, program_file)
    supported = None
    if of_stage(candidates, "compile"):  # computed here, once per process: a child would import TVM every run
        from kiln.compiler import supported_ops

        supported = supported_ops()
        preload("tvm")  # every TVM candidate's evaluation and timing child would import it again
    checked, metrics = run_isolated(check_program, program_file, location, shapes, supported, name, dims,
                                    default_dims, what="the program", timeout=settings().program_timeout_s,
                                    timeout_hint="raise KILN_PROGRAM_TIMEOUT_S if loading its data really takes "
                                                 "this long")
    if checked.unsupported_ops:
        log.warning("%s; the tvm candidate is skipped", describe_unsupported(checked.unsupported_ops))
    log.info("program %s: model %s, inputs %s, %d samples from %s, metrics %s", checked.name,
             Path(checked.model_path).name, [(s.name, s.shape, s.dtype) for s in checked.inputs], checked.samples,
             checked.dataset, metrics)
    if checked.profile.dims:
        log.info("shape profile: %s", checked.profile.explain())
    if checked.guards:
        log.info("index inputs guarded: %s", [(g.input, g.low, g.high) for g in checked.guards])
    return checked


def dim_values(samples: Samples, profile: Profile) -> dict[str, list[int]]:
    """Each varying dimension's value in each sample's model call: the histogram TVM's buckets are chosen by."""
    shapes = sample_shapes(samples)
    out: dict[str, list[int]] = {}
    for dim in profile.varying:
        axis = dim.axes[0]
        out[dim.name] = [int(s[axis.tensor][axis.index]) for s in shapes if axis.tensor in s]
    return out


def check_targets(names: list[str], where: str) -> list[str]:
    """program.py's `targets`, each a name `kiln targets` knows (several: a fleet)."""
    from kiln.targets import parse_all

    try:
        parsed = [t.name for t in parse_all(names)]
    except KilnError as exc:
        raise ProgramError(f"targets: {exc.message}", where=where, hint=exc.hint) from None
    return parsed


def check_requirements(requirements: list[str], where: str) -> list[str]:
    """Each one a requirement pip understands (the image build downloads them; a typo should fail here, before
    hours of tuning, not at the end)."""
    from packaging.requirements import InvalidRequirement, Requirement

    for i, text in enumerate(requirements):
        try:
            Requirement(text)
        except InvalidRequirement as exc:
            raise ProgramError(f"requirements[{i}] {text!r} is not a pip requirement: {exc}", where=where,
                               hint='write it as pip would, e.g. "tokenizers==0.21.1"') from None
    return [r.strip() for r in requirements]


def check_program(path: str, location: str, shapes: dict[str, list[int]] | None,
                  supported: frozenset[str] | None, name: str | None = None,
                  dims: dict[str, tuple[int, int]] | None = None,
                  default_dims: bool = False) -> tuple[CheckedProgram, list[str]]:
    """validate's work, in the child process: (the checked program, its metric names). `supported`: the op
    types the compiler imports, None when no candidate compiles."""
    prog = load_program(path, shapes, dims)
    where = str(prog.model_path)
    model = load_model(prog.model_path)
    inputs = input_specs(model, prog.shapes, where)
    if not inputs:
        raise ModelError("the model has no inputs", where=where)
    dynamic = dynamic_dims(model, inputs)
    inputs = fix_declared(inputs, dynamic, prog.dims, where)
    data = None if prog.program.dataset is None else \
        prog.program.dataset.load(prog.root, inputs, bool(prog.program.allow_nonfinite))
    profile = resolve(inputs, dynamic, prog.dims, data, where, default_dims)
    inputs = concrete(inputs, profile)
    named = output_axes(model)
    profile = Profile(dims=[d.model_copy(update={"outputs": named.get(d.name, [])}) for d in profile.dims]
                      ).with_padding(prog.program.padding)
    missing: dict[str, list[str]] = {}
    if supported is not None:  # not a refusal: the other candidates can still ship
        missing = unsupported_ops(model, supported)
    check_feed_size(bounded(inputs, profile), 1 if data is not None else prog.program.synthetic_samples, where)
    fixed = infer_shapes(fix_input_shapes(model, inputs, profile), where)
    guards = index_guards(fixed)
    samples = data if data is not None else load_samples(prog, inputs, guards, profile)
    check_index_ranges(samples.inputs, guards, where=f"dataset {samples.source}")
    metrics = prog.program.get_metrics()
    label_needers = [m.name for m in metrics if m.needs_labels]
    if label_needers and samples.labels is None:
        raise DatasetError(f"metrics {label_needers} need labels, but the dataset has none",
                           where=samples.source, hint="add labels to the dataset, or use reference-agreement "
                                                      "metrics (agreement, cosine, max_abs_diff)")
    outputs = output_specs(model)
    out_names = [o.name for o in outputs]
    values = dim_values(samples, profile)
    if profile.unrelated(outputs) and samples.count:  # output axes the graph does not relate to an input's
        steps = {name: math.gcd(*seen) for name, seen in values.items() if seen}
        profile = trace(Path(prog.model_path), profile, feeds(samples, inputs)[0], out_names, steps)
    for m in metrics:
        if m.output is not None and m.output not in out_names:
            raise ProgramError(f"metric {m.name!r} scores output {m.output!r}; the model's outputs are {out_names}",
                               where=str(prog.root / "program.py"))
    check_labels(metrics, outputs, samples)
    unknown = sorted(set(prog.program.padding) - {s.name for s in inputs})
    if unknown:
        raise ProgramError(f"padding names {unknown}, which the model does not take; its inputs are "
                           f"{[s.name for s in inputs]}", where=str(prog.root / "program.py"))
    if prog.program.proto:
        check_protocol(prog.root, prog.program.proto, prog.program.request, prog.program.response)
    p = prog.program
    requirements = check_requirements(list(p.requirements), str(prog.source))
    targets = check_targets(list(p.targets), str(prog.source))
    return CheckedProgram(
        location=str(location), source=str(prog.source), root=str(prog.root),
        name=clean_name(name) if name else prog.name, model_path=str(prog.model_path),
        model_sha256=prog.files.get(Path(prog.model_path).relative_to(prog.root).as_posix(), ""),
        program_sha256=prog.sha256, shapes=prog.shapes, dims=prog.dims, profile=profile, inputs=inputs,
        outputs=outputs, guards=guards,
        unsupported_ops=missing, allow_nonfinite=bool(p.allow_nonfinite), requirements=requirements,
        dim_values=values,
        calibration_method=p.calibration_method,
        max_fallback_rounds=int(p.max_fallback_rounds), fallback_seconds=float(p.fallback_seconds),
        fallback_margin=float(p.fallback_margin),
        transformer=p.transformer, targets=targets,
        proto=p.proto, request=p.request, response=p.response,
        dataset=samples.source, samples=samples.count, has_labels=samples.labels is not None), [m.name for m in metrics]
