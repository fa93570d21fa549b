"""`OptimizeRequest`: what one optimization is asked to do, checked once for every front door.

The CLI, the web form, webhooks, the Prefect UI and the reoptimize flow all build one; it is the optimize
flow's only parameter, so a typo in a candidate, a target, a shape or a destination fails before any work,
with the same message wherever it came from.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kiln.errors import KilnError
from kiln.optimize.defaults import LATENCY_REPEATS, MIN_GAIN, TARGETS
from kiln.program.naming import parse_dims, parse_shapes


class RequestError(KilnError, ValueError):
    """A request field is wrong (a ValueError too, so pydantic reports it as a validation error)."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr|)\s*$", re.IGNORECASE)


def parse_duration(text: str) -> float | None:
    """Seconds from "90", "90s", "20m", "1.5h"; "" is None."""
    if not text.strip():
        return None
    m = _DURATION.match(text)
    if not m:
        raise RequestError(f"cannot read {text!r} as a duration", hint="write e.g. 90s, 20m or 2h")
    return float(m.group(1)) * {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}[m.group(2).lower()]


MAX_TRIALS = 100_000


class RegistryVersion(BaseModel):
    """A model version in a registry, to be tagged with what kiln made of it."""

    model_config = ConfigDict(extra="forbid")

    registry: str = "mlflow"
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)

    @field_validator("registry")
    @classmethod
    def _taggable(cls, value: str) -> str:
        from kiln import registries

        if value not in registries.taggable():
            raise RequestError(f"registry {value!r} takes no tags on its versions",
                               hint=f"report_to.registry must be one of {registries.taggable()}")
        return value


class OptimizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    program: str = Field(description="a program folder, a .zip/.tar.gz of one, or a bare .onnx file: a path on "
                                     "the worker, a file:// URI, an s3:// URI (KILN_S3_* settings on the worker), "
                                     "or a model registry's URI: MLflow's models:/, runs:/ or mlflow-artifacts:/ "
                                     "(KILN_MLFLOW_TRACKING_URI on the worker)")
    shapes: dict[str, list[int]] | None = Field(
        None, description='concrete shapes for dynamic input dimensions, e.g. {"input": [1, 3, 224, 224]}')
    dims: dict[str, tuple[int, int]] | None = Field(
        None, description='ranges of dynamic dimensions by the model\'s names for them (or "input:axis"), e.g. '
                          '{"sequence_length": [1, 128], "batch_size": [1, 8]}; undeclared ones take the range the '
                          'data shows, a batch dimension 1')
    default_dims: bool = Field(False, description="a dynamic dimension that neither dims nor the data gives a "
                                                  "range takes 1..512 (a batch dimension: 1) instead of stopping the "
                                                  "run (what registry webhooks ask)")
    trials: int = Field(64, ge=0, le=MAX_TRIALS,
                        description="total MetaSchedule trial budget for the TVM candidate (0: apply the database; "
                                    f"default 64, or {MAX_TRIALS} when only tune_time is given)")
    max_trials_per_task: int | None = Field(None, ge=1, description="cap per tuning task (default: none; every task "
                                                                    "gets one round of 64, then the scheduler "
                                                                    "spends trials where the latency is)")
    tune_time: float | None = Field(None, gt=0, description="wall-clock tuning budget beside `trials`, in seconds or "
                                                           "as 90s / 20m / 2h: no new trial starts once it is spent")
    targets: list[str] = Field(default_factory=lambda: list(TARGETS),
                               description="the CPU the artifact will run on: host (this CPU), a psABI level "
                                           "(x86-64-v3), an LLVM x86-64 CPU (znver3), a TVM x86 tag "
                                           "(aws/cpu/c5.large), a cloud instance family (c6i) or cuda; `kiln "
                                           "targets` lists them (`target`, one name, is read as before: llvm = "
                                           "host)")
    candidates: list[str] | None = Field(None, description="candidates to build; the onnxruntime baseline is "
                                                           "always measured (default: kiln's default set)")
    select: str | None = Field(None, description="publish this candidate when it is inside every range, fastest "
                                                 "or not (its measured speed is reported): pins a backend")
    device: str | None = Field(None, description="KEY@HOST:PORT: measure on the devices registered under KEY with the "
                                                 "TVM RPC tracker at HOST:PORT (`kiln device`): the target becomes "
                                                 "the device's CPU, TVM's trials and every timing round run there")
    device_timeout: float = Field(60.0, gt=0, description="seconds to wait for a free device under the key before "
                                                          "stopping with an error")
    threads: int | None = Field(None, ge=1, description="threads for every backend while measuring (default: all "
                                                        "cores)")
    store: str | None = Field(None, description="artifact store folder (default: KILN_STORE or ~/.kiln/store)")
    latency_repeats: int = Field(LATENCY_REPEATS, ge=1, description="timed calls per candidate")
    upload: str | None = Field(None, description="s3://BUCKET/PREFIX to upload the artifact to (KILN_S3_* settings "
                                                 "or the kiln-s3 block on the worker)")
    image: str | None = Field(None, description="REGISTRY/NAME[:TAG] to build the model's runtime image as and push "
                                                "to (DOCKER_HOST on the worker)")
    incumbent: str | None = Field(None, description="the artifact now in service (set by reoptimize): tuning "
                                                    "continues from its database and it must be beaten by min_gain")
    min_gain: float = Field(MIN_GAIN, ge=0.0, le=0.9, description="how much faster (a fraction), beyond the noise of "
                                                              "the measurement, a candidate must be than the "
                                                              "baseline and the incumbent to replace them")
    compare_with_current: bool = Field(True, description="gate against the newest version of the same name in the "
                                                         "store, so a re-run that finds nothing faster publishes "
                                                         "nothing new (false: publish regardless)")
    name: str | None = Field(None, description="the model's name in the store (default: the program's `name`, "
                                               "else its folder or file name; a model.onnx: its folder's name)")
    data: str | None = Field(None, description="for a bare .onnx: samples to calibrate and evaluate on, a .npz with "
                                               "one array per input name (first axis: samples) or a folder of "
                                               "NAME.npy, on the worker")
    report_to: RegistryVersion | None = Field(None, description="a registry's model version to tag with the outcome "
                                                               "(kiln.status, kiln.selected, kiln.speedup, "
                                                               "kiln.artifact, kiln.image); the MLflow webhook "
                                                               "sets it (KILN_MLFLOW_TRACKING_URI on the worker)")
    ranges: list[str] | None = Field(None, description="for a bare .onnx: acceptable accuracy as NAME>=VALUE or "
                                                       "NAME<=VALUE (cosine, agreement, max_abs_diff, max_rel_diff, "
                                                       "top1, mae, rmse); replaces the default agreement ranges")

    @field_validator("ranges", mode="before")
    @classmethod
    def _ranges(cls, value: Any) -> Any:
        """Each range must be readable (one per line or comma-separated in the web form)."""
        if isinstance(value, str):
            value = [v for line in value.splitlines() for v in line.split(",")]
        if not value:
            return None
        from kiln.program.metrics import parse_ranges

        texts = [v.strip() for v in value if isinstance(v, str) and v.strip()]
        try:
            parse_ranges(texts)
        except KilnError as exc:
            raise RequestError(exc.message, where=exc.where, hint=exc.hint) from None
        return texts or None

    @model_validator(mode="before")
    @classmethod
    def _one_target_of_old_requests(cls, data: Any) -> Any:
        """`target` (one name; llvm: this CPU) of earlier requests and recorded manifests is `targets`."""
        if isinstance(data, dict) and "target" in data:
            old = data["target"]
            data = {k: v for k, v in data.items() if k != "target"}
            if data.get("targets") in (None, [], "") and old not in (None, ""):
                data["targets"] = [old]
        return data

    @model_validator(mode="before")
    @classmethod
    def _time_budget_alone(cls, data: Any) -> Any:
        """A tuning time given without a trial count: the time is the budget."""
        if isinstance(data, dict) and data.get("trials") is None:
            data = {k: v for k, v in data.items() if k != "trials"}
            if data.get("tune_time") not in (None, ""):
                data["trials"] = MAX_TRIALS
        return data

    @field_validator("tune_time", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("data", "name")
    @classmethod
    def _blank(cls, value: str | None) -> str | None:
        return value.strip() if value and value.strip() else None

    @field_validator("shapes", mode="before")
    @classmethod
    def _shapes(cls, value: Any) -> Any:
        """NAME=DxDxD strings (the CLI's --shape, the form's lines) or a mapping of positive dimensions."""
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return parse_shapes(list(value)) or None
        if isinstance(value, dict):
            for key, dims in value.items():
                if not isinstance(dims, list | tuple) or not dims or not all(
                        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
                    raise RequestError(f"shape of {key!r} must be a list of positive integers, not {dims!r}")
        return value or None

    @field_validator("dims", mode="before")
    @classmethod
    def _dims(cls, value: Any) -> Any:
        """NAME=LOW..HIGH strings (the CLI's --dim, the form's lines) or a mapping of ranges."""
        if value is None or value == {} or value == []:
            return None
        try:
            return parse_dims(list(value) if isinstance(value, list | tuple) else value) or None
        except KilnError as exc:
            raise RequestError(exc.message, hint=exc.hint) from None

    @field_validator("targets", mode="before")
    @classmethod
    def _targets(cls, value: Any) -> Any:
        """Each name known (normalized: llvm is host, c6i.2xlarge is c6i), each once: several make a fleet (one
        artifact holding one selected build per target)."""
        if value in (None, "", []):
            return list(TARGETS)
        from kiln.targets import parse_all

        names = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
        try:
            parsed = parse_all([n for n in names if n])
        except KilnError as exc:
            raise RequestError(exc.message, hint=exc.hint) from None
        return [t.name for t in parsed] or list(TARGETS)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from kiln.device.address import DeviceAddress

        return str(_as_request_error(DeviceAddress.parse, value))

    @model_validator(mode="after")
    def _device_is_the_target(self) -> OptimizeRequest:
        if self.device and "targets" in self.model_fields_set and self.targets != list(TARGETS):
            raise RequestError(f"--target {','.join(self.targets)} with --device {self.device}: the target is the "
                               "device's own CPU", hint="drop --target (or --device, to compile for a CPU kiln "
                                                        "cannot measure on)")
        return self

    @model_validator(mode="after")
    def _select_is_built(self) -> OptimizeRequest:
        if self.select and self.select not in self.chosen:
            raise RequestError(f"select: {self.select!r} is not among the candidates this run builds "
                               f"({', '.join(self.chosen)})", hint="add it to --candidates")
        return self

    @property
    def target(self) -> str:
        """The run's first target name (kiln.targets)."""
        return self.targets[0]

    @field_validator("candidates")
    @classmethod
    def _candidates(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        from kiln.optimize.candidates import check

        try:
            check(value)
        except KilnError as exc:
            raise RequestError(exc.message, hint=exc.hint) from None
        return list(dict.fromkeys(value)) or None

    @field_validator("upload")
    @classmethod
    def _upload(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from kiln.artifact.remote import parse_uri

        _as_request_error(parse_uri, value.strip())
        return value.strip()

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from kiln.ship.engine import check_repository

        return _as_request_error(check_repository, value.strip())

    @property
    def chosen(self) -> list[str]:
        """The candidates to build: the baseline first, then the chosen or default set."""
        from kiln.optimize.candidates import DEFAULT, check

        return check(list(self.candidates or DEFAULT))

    def parameters(self) -> dict[str, Any]:
        """The flow's parameters for a deployment run (what the Prefect API takes)."""
        return {"request": self.model_dump(mode="json", exclude_defaults=True)}

    @classmethod
    def of(cls, **fields: Any) -> OptimizeRequest:
        """Build one from front-door input; the first mistake is a KilnError saying what, where and how to fix."""
        try:
            return cls(**fields)
        except ValidationError as exc:
            first = exc.errors()[0]
            cause = (first.get("ctx") or {}).get("error")
            if isinstance(cause, KilnError):
                raise _plain(cause) from None
            field = ".".join(str(p) for p in first.get("loc", ())) or "request"
            raise KilnError(f"{field}: {first['msg']}", hint="see `kiln optimize --help`") from None


def _as_request_error(check, value: str):
    try:
        return check(value)
    except KilnError as exc:
        raise RequestError(exc.message, where=exc.where, hint=exc.hint) from None


def _plain(err: KilnError) -> KilnError:
    """A RequestError as a plain KilnError (it must not look like a ValueError to callers)."""
    return KilnError(err.message, where=err.where, hint=err.hint)
