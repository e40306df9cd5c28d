"""The refusals of the authentication layer, as domain errors: status.to_status maps them like every other."""

from __future__ import annotations

from ..errors import AuthorityError


class CredentialsMissing(AuthorityError):
    code = "UNAUTHENTICATED"
    reason = "CREDENTIALS_MISSING"

    def __init__(self) -> None:
        super().__init__("no credentials: send the metadata 'authorization: Bearer <token>'")


class CredentialsInvalid(AuthorityError):
    """Malformed, unknown, expired, revoked or for another audience: the caller is told no more,
    so that a probe learns nothing about which keys or tokens exist."""

    code = "UNAUTHENTICATED"
    reason = "CREDENTIALS_INVALID"

    def __init__(self, message: str = "the credentials are not valid") -> None:
        super().__init__(message)


class NotAllowed(AuthorityError):
    code = "PERMISSION_DENIED"
    reason = "NOT_ALLOWED"

    def __init__(self, principal: str, role: str, method: str, why: str = "") -> None:
        # Never whether a budget exists: the message names only what the caller sent.
        text = f"{principal} ({role}) may not call {method} on these budgets"
        super().__init__(f"{text}: {why}" if why else text, principal=principal, role=role, method=method)


class RateLimited(AuthorityError):
    code = "RESOURCE_EXHAUSTED"
    reason = "RATE_LIMITED"

    def __init__(self, retry_after_seconds: float) -> None:
        ms = max(1, int(retry_after_seconds * 1000 + 0.999))
        super().__init__(f"too many calls; retry after {ms} ms", retry_after_ms=str(ms))


class AuthenticationUnavailable(AuthorityError):
    """The Kubernetes API server could not review a token: nothing is known about the caller yet,
    and the call may be retried."""

    code = "UNAVAILABLE"
    reason = "AUTHENTICATION_UNAVAILABLE"
