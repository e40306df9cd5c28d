"""Every error leaves the server here: one google.rpc.ErrorInfo with a stable reason.

Caller-caused problems were raised as AuthorityError by validation or the ledger; database
trouble becomes UNAVAILABLE (retry with the same id is safe); anything else is a bug of ours,
logged and answered INTERNAL without details.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from .errors import AuthorityError, InvalidField

log = logging.getLogger(__name__)
DOMAIN = "agentbudget.io"

# Connection-level failures: the request may or may not have committed, and a retry with the
# same id is safe either way.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.QueryCanceledError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
)


def to_status(error: AuthorityError) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    details = [_pack(info)]
    if isinstance(error, InvalidField):
        violation = error_details_pb2.BadRequest.FieldViolation(field=error.field, description=error.message)
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    status = status_pb2.Status(code=code_pb2.Code.Value(error.code), message=error.message, details=details)
    return rpc_status.to_status(status)


def _pack(message: error_details_pb2.ErrorInfo | error_details_pb2.BadRequest) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(message)
    return out


# SQLSTATE classes of a lost or refused connection, an operator's intervention, or no resources.
UNAVAILABLE_SQLSTATE_PREFIXES = ("08", "57P", "53", "40001", "40P01")


def _unavailable(exc: BaseException) -> bool:
    if isinstance(exc, UNAVAILABLE_ERRORS):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc.sqlstate or "").startswith(UNAVAILABLE_SQLSTATE_PREFIXES)
    return isinstance(exc, asyncpg.exceptions.InternalClientError)  # a connection broken mid-call


def classify(exc: BaseException) -> AuthorityError:
    if isinstance(exc, AuthorityError):
        return exc
    if _unavailable(exc):
        log.warning("database unavailable: %s: %s", type(exc).__name__, exc)
        err = AuthorityError("the ledger database is unavailable; retry with the same id")
        err.code, err.reason = "UNAVAILABLE", "DATABASE_UNAVAILABLE"
        return err
    log.exception("internal error", exc_info=exc)
    err = AuthorityError("internal error")
    err.code, err.reason = "INTERNAL", "INTERNAL"
    return err
