"""Domain errors with their gRPC code and stable ErrorInfo reason; mapped to the wire in one place."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .money import MoneyError, format_nanos


class AuthorityError(Exception):
    code = "INTERNAL"
    reason = "INTERNAL"

    def __init__(self, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = metadata


class InvalidField(AuthorityError):
    """A request field is malformed; ``field`` names it (dotted path)."""

    code = "INVALID_ARGUMENT"

    def __init__(self, field: str, message: str, reason: str = "INVALID_FIELD") -> None:
        super().__init__(f"{field}: {message}", field=field)
        self.field = field
        self.reason = reason


class BudgetNotFound(AuthorityError):
    code = "NOT_FOUND"
    reason = "BUDGET_NOT_FOUND"

    def __init__(self, name: str) -> None:
        super().__init__(f"budget {name!r} not found", budget=name)


class ReservationNotFound(AuthorityError):
    code = "NOT_FOUND"
    reason = "RESERVATION_NOT_FOUND"

    def __init__(self, budget: str, reservation_id: str) -> None:
        super().__init__(
            f"reservation {reservation_id!r} not found in budget {budget!r}",
            budget=budget,
            reservation_id=reservation_id,
        )


class BudgetExceeded(AuthorityError):
    code = "RESOURCE_EXHAUSTED"
    reason = "BUDGET_EXCEEDED"

    def __init__(self, budget: str, amount: int, remaining: int, currency: str) -> None:
        super().__init__(
            f"budget {budget!r} cannot hold {format_nanos(amount)} {currency}: "
            f"{format_nanos(remaining)} {currency} remaining",
            budget=budget,
            remaining=format_nanos(remaining),
            remaining_nanos=str(remaining),
            currency=currency,
        )


class BudgetPaused(AuthorityError):
    code = "FAILED_PRECONDITION"
    reason = "BUDGET_PAUSED"

    def __init__(self, budget: str) -> None:
        super().__init__(f"budget {budget!r} is paused", budget=budget)


class IdempotencyKeyReused(AuthorityError):
    code = "ALREADY_EXISTS"
    reason = "IDEMPOTENCY_KEY_REUSED"

    def __init__(self, field: str, key: str) -> None:
        super().__init__(f"{field} {key!r} was already used with other parameters", field=field)


class ReservationEnded(AuthorityError):
    code = "FAILED_PRECONDITION"
    reason = "RESERVATION_ENDED"

    def __init__(self, reservation_id: str, state: str) -> None:
        super().__init__(f"reservation {reservation_id!r} has already ended: {state}", state=state)


class TransferExceedsAvailable(AuthorityError):
    code = "FAILED_PRECONDITION"
    reason = "TRANSFER_EXCEEDS_AVAILABLE"

    def __init__(self, budget: str, available: int, currency: str) -> None:
        super().__init__(
            f"budget {budget!r} can give at most {format_nanos(available)} {currency} "
            "(its limit may not fall below spent + held)",
            available=format_nanos(available),
            available_nanos=str(available),
        )


class BudgetConflict(AuthorityError):
    code = "FAILED_PRECONDITION"
    reason = "BUDGET_CONFLICT"


class DatabaseUnavailable(AuthorityError):
    code = "UNAVAILABLE"
    reason = "DATABASE_UNAVAILABLE"


@contextmanager
def sums_of(field: str) -> Iterator[None]:
    """A running sum that would leave the ledger's exact range is the caller's amount's fault."""
    try:
        yield
    except MoneyError as exc:
        raise InvalidField(field, str(exc), reason=exc.reason) from None


class ShuttingDown(AuthorityError):
    code = "UNAVAILABLE"
    reason = "SHUTTING_DOWN"
