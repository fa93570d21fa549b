"""User-facing errors: each says what is wrong, where, and how to fix it.

The CLI prints these without a traceback and exits non-zero; anything else escaping is a kiln bug.
"""

from __future__ import annotations


class KilnError(Exception):
    """A problem with the user's input or environment, explained for a person."""

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        parts = [f"{self.where}: {self.message}" if self.where else self.message]
        if self.hint:
            parts.append(f"hint: {self.hint}")
        return "\n".join(parts)

    def __reduce__(self):  # keep the fields across Prefect's pickling of task failures
        return (_rebuild, (type(self), self.message, self.where, self.hint, getattr(self, "extra", None)))


def _rebuild(cls, message, where, hint, extra):
    err = cls.__new__(cls)
    KilnError.__init__(err, message, where=where, hint=hint)
    if extra is not None:
        err.extra = extra
    return err


class ProgramError(KilnError):
    """The model program (program.py, its files, its archive) is invalid."""


class ModelError(KilnError):
    """The ONNX model is unreadable, invalid, or uses what the compiler cannot handle."""


class DatasetError(KilnError):
    """A dataset does not match the model's inputs."""


class InputError(KilnError):
    """A request or feed given to a compiled model is invalid (shape, dtype, index range)."""


class TargetError(KilnError):
    """A target name kiln does not know, or an artifact built for a CPU this one is not (its code would die with
    SIGILL here)."""


class DeviceError(KilnError):
    """A device (kiln.device) cannot be reached through its tracker, or cannot serve what was asked."""


class GateError(KilnError):
    """No candidate met every metric range; `table` explains what each scored."""

    exit_code = 1

    def __init__(self, message: str, table: str, *, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.extra = table

    @property
    def table(self) -> str:
        return getattr(self, "extra", "")


class ArtifactError(KilnError):
    """An artifact is missing, incomplete, or its files do not match their recorded hashes."""



class ServiceError(KilnError):
    """A service kiln ships to (object storage, the Docker engine, a registry) refused or could not be reached.

    `transient` says whether the same call could succeed later (connection refused, 5xx), so retries are spent
    only where they can help; a wrong key or a missing bucket fails at once.
    """

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None, transient: bool = False):
        super().__init__(message, where=where, hint=hint)
        self.extra = transient

    @property
    def transient(self) -> bool:
        return bool(getattr(self, "extra", False))


class StorageError(ServiceError):
    """S3/MinIO."""


class ImageError(ServiceError):
    """The Docker engine or the registry."""
