"""Exceptions per stable error reason, parsed from the google.rpc.Status the authority sends."""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class BudgetError(Exception):
    """An error answered by the authority; ``reason`` is the stable ErrorInfo reason."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str, metadata: Mapping[str, str]) -> None:
        super().__init__(f"{reason}: {message}" if reason else message)
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = dict(metadata)

    @property
    def field(self) -> str | None:
        return self.metadata.get("field")


class InvalidRequestError(BudgetError):
    """INVALID_ARGUMENT: a field is malformed (``field`` names it); currency mismatch; overflow."""


class BudgetExceededError(BudgetError):
    """The hold does not fit the budget; ``remaining`` tells what would."""

    @property
    def remaining(self) -> str:
        return self.metadata.get("remaining", "")


class BudgetPausedError(BudgetError):
    pass


class BudgetNotFoundError(BudgetError):
    pass


class ReservationNotFoundError(BudgetError):
    pass


class IdempotencyKeyReusedError(BudgetError):
    pass


class ReservationEndedError(BudgetError):
    """The hold already ended otherwise; ``state`` is how."""

    @property
    def state(self) -> str:
        return self.metadata.get("state", "")


class TransferExceedsAvailableError(BudgetError):
    pass


class BudgetConflictError(BudgetError):
    pass


class UnavailableError(BudgetError):
    """The authority or its database is unreachable; retrying with the same id is safe."""


class UnauthenticatedError(BudgetError):
    """No credentials, or credentials the authority does not accept (expired, wrong audience...)."""


class PermissionDeniedError(BudgetError):
    """The caller's role or scope does not allow this call."""


class RateLimitedError(BudgetError):
    """Too many calls from this caller; retry after ``retry_after_ms``."""

    @property
    def retry_after_ms(self) -> int:
        return int(self.metadata.get("retry_after_ms", "0") or 0)


REASONS: dict[str, type[BudgetError]] = {
    "INVALID_FIELD": InvalidRequestError,
    "CURRENCY_MISMATCH": InvalidRequestError,
    "AMOUNT_OVERFLOW": InvalidRequestError,
    "UNKNOWN_MODEL": InvalidRequestError,
    "UNKNOWN_SANDBOX_CLASS": InvalidRequestError,
    "UNKNOWN_API": InvalidRequestError,
    "UNKNOWN_TASK_CLASS": InvalidRequestError,
    "BUDGET_EXCEEDED": BudgetExceededError,
    "BUDGET_PAUSED": BudgetPausedError,
    "BUDGET_NOT_FOUND": BudgetNotFoundError,
    "RESERVATION_NOT_FOUND": ReservationNotFoundError,
    "IDEMPOTENCY_KEY_REUSED": IdempotencyKeyReusedError,
    "RESERVATION_ENDED": ReservationEndedError,
    "TRANSFER_EXCEEDS_AVAILABLE": TransferExceedsAvailableError,
    "BUDGET_CONFLICT": BudgetConflictError,
    "DATABASE_UNAVAILABLE": UnavailableError,
    "SHUTTING_DOWN": UnavailableError,
    "CREDENTIALS_MISSING": UnauthenticatedError,
    "CREDENTIALS_INVALID": UnauthenticatedError,
    "NOT_ALLOWED": PermissionDeniedError,
    "RATE_LIMITED": RateLimitedError,
    "AUTHENTICATION_UNAVAILABLE": UnavailableError,
}


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def from_rpc_error(error: grpc.aio.AioRpcError) -> BudgetError:
    info = error_info(error)
    reason = info.reason if info else ""
    metadata: Mapping[str, str] = info.metadata if info else {}
    cls = REASONS.get(reason)
    if cls is None:
        cls = UnavailableError if error.code() == grpc.StatusCode.UNAVAILABLE else BudgetError
    return cls(error.code(), reason, error.details() or "", metadata)
