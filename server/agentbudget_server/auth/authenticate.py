"""Who is calling: the bearer token of the call's metadata, as an API key or a Kubernetes token."""

from __future__ import annotations

from collections.abc import Iterable

from ..principal import Principal
from .apikeys import PREFIX, ApiKeys
from .errors import CredentialsInvalid, CredentialsMissing
from .roles import Roles
from .tokenreview import TokenReviewer

Metadata = Iterable[tuple[str, str | bytes]]


def bearer(metadata: Metadata | None) -> str:
    """The token of the ``authorization: Bearer <token>`` metadata entry."""
    values = [v for k, v in metadata or () if k.lower() == "authorization"]
    if not values:
        raise CredentialsMissing()
    if len(values) > 1:
        raise CredentialsInvalid("more than one authorization entry")
    value = values[0] if isinstance(values[0], str) else ""
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or len(token.split()) != 1:  # (split: tokens are a kilobyte long)
        raise CredentialsInvalid("the authorization metadata must be 'Bearer <token>'")
    return token


class Authenticator:
    def __init__(self, api_keys: ApiKeys, reviewer: TokenReviewer | None, roles: Roles) -> None:
        self.api_keys = api_keys
        self.reviewer = reviewer
        self.roles = roles

    async def authenticate(self, metadata: Metadata | None) -> Principal:
        token = bearer(metadata)
        if token.startswith(PREFIX):
            found = self.api_keys.lookup(token)
            if found is None:
                raise CredentialsInvalid()
            return found
        if self.reviewer is None:
            raise CredentialsInvalid("this authority accepts API keys only (no Kubernetes API server configured)")
        return self.roles.principal(await self.reviewer.username(token))
