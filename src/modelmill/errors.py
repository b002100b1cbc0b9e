"""The one exception tree of modelmill.

Every error modelmill raises on purpose derives from :class:`ModelmillError`
and carries its context as attributes, so that a CLI or an HTTP handler can
render it without parsing the message::

    ModelmillError
    ├── ConfigError               a setting is malformed (key, value, accepted forms)
    ├── InputError                user input is malformed (field, value, problem)
    │   └── SchemaError           an event or request does not match its schema
    ├── NotFoundError             a named thing does not exist (kind, name)
    ├── ConflictError             the write would contradict existing state
    ├── StoreError                persistence failed
    │   ├── BackendUnavailable    a server did not answer (backend, url, reason)
    │   ├── ArtifactIntegrityError  an artifact's sha256 does not match its record
    │   └── UnsafePathError       an artifact path escapes the store
    ├── GateRejected              a candidate model failed the validation gate
    ├── RolloutError              a rollout transition is not allowed
    ├── Unauthenticated           an API call carries no valid token (HTTP 401)
    └── PermissionDenied          the token's role does not allow the call (HTTP 403)

Messages say what was wrong, what value arrived and what to do.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ArtifactIntegrityError",
    "BackendUnavailable",
    "ConfigError",
    "ConflictError",
    "GateRejected",
    "InputError",
    "ModelmillError",
    "NotFoundError",
    "PermissionDenied",
    "RolloutError",
    "SchemaError",
    "StoreError",
    "Unauthenticated",
    "UnsafePathError",
]


class ModelmillError(Exception):
    """Base of every modelmill error; ``context`` holds the structured details."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = context

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form, used by the CLI's ``--json`` output and HTTP error bodies."""
        out: dict[str, Any] = {"error": self.message, "type": type(self).__name__}
        out.update({k: v for k, v in self.context.items() if _jsonable(v)})
        return out


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool | list | tuple | dict)


class ConfigError(ModelmillError):
    """A setting is malformed: names the key, the value it got and the accepted forms."""

    def __init__(self, key: str, value: Any, accepted: str) -> None:
        super().__init__(
            f"setting {key!r} has value {value!r}, which is not accepted; use {accepted}",
            key=key,
            value=str(value),
            accepted=accepted,
        )
        self.key = key
        self.value = value
        self.accepted = accepted


class InputError(ModelmillError):
    """User input is malformed: names the field, the value and the problem."""

    def __init__(self, field: str, problem: str, value: Any = None) -> None:
        shown = "" if value is None else f" (got {_short(value)})"
        super().__init__(f"{field}: {problem}{shown}", field=field, problem=problem, value=_short(value))
        self.field = field
        self.problem = problem
        self.value = value


class SchemaError(InputError):
    """An event or request does not match its declared schema."""


class NotFoundError(ModelmillError):
    """A named object does not exist."""

    def __init__(self, kind: str, name: str, hint: str = "") -> None:
        msg = f"{kind} {name!r} not found" + (f"; {hint}" if hint else "")
        super().__init__(msg, kind=kind, name=name)
        self.kind = kind
        self.name = name


class ConflictError(ModelmillError):
    """The requested write contradicts state that already exists."""


class StoreError(ModelmillError):
    """Persistence failed."""


class BackendUnavailable(StoreError):
    """A backend server did not answer; ``url`` has any password masked."""

    def __init__(self, backend: str, url: str, reason: str) -> None:
        super().__init__(f"{backend} at {url} is unreachable: {reason}", backend=backend, url=url, reason=reason)
        self.backend = backend
        self.url = url
        self.reason = reason


class ArtifactIntegrityError(StoreError):
    """An artifact's bytes do not match the sha256 recorded when it was written."""

    def __init__(self, path: str, expected: str, actual: str) -> None:
        super().__init__(
            f"artifact {path!r} is corrupt or was tampered with: sha256 is {actual[:12]}…, "
            f"recorded {expected[:12]}…; restore it from a backup or register the model again",
            path=path,
            expected=expected,
            actual=actual,
        )
        self.path = path
        self.expected = expected
        self.actual = actual


class UnsafePathError(StoreError):
    """An artifact path would escape the artifact store ('..' or an absolute path)."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"artifact path {path!r} escapes the artifact store; use a relative path without '..'",
            path=path,
        )
        self.path = path


class GateRejected(ModelmillError):
    """A candidate model failed the validation gate."""


class RolloutError(ModelmillError):
    """A rollout transition is not allowed in the rollout's current state."""


class Unauthenticated(ModelmillError):
    """An API call carries no token, or one that is unknown or revoked (HTTP 401)."""


class PermissionDenied(ModelmillError):
    """The caller's token is valid but its role does not allow this call (HTTP 403)."""


def _short(value: Any, limit: int = 80) -> Any:
    if value is None or isinstance(value, int | float | bool):
        return value
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 1] + "…"
