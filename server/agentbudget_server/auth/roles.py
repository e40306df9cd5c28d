"""What a principal authenticated by Kubernetes may do: admin, an assigned role, or agent.

``admin_principals`` (a setting; the operator's service account) are admins of everything; the
roles file assigns coordinators and viewers (or anything) a role and a scope; every other
principal is an agent, reaching the budgets that name it among their agent principals.

    # roles.yaml
    system:serviceaccount:agents:ceo: {role: coordinator, scope: ["agents/*"]}
    system:serviceaccount:finance:reports: {role: viewer, scope: ["*"]}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..principal import ADMIN, AGENT, Principal
from . import files


@dataclass(frozen=True)
class Roles:
    admins: frozenset[str] = frozenset()
    assigned: Mapping[str, Principal] = field(default_factory=dict)

    def principal(self, name: str) -> Principal:
        if name in self.admins:  # an admin stays one whatever the roles file says
            return Principal(name, ADMIN, ("*",))
        return self.assigned.get(name) or Principal(name, AGENT)


def parse(data: object, where: str = "roles") -> dict[str, Principal]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{where}: a mapping of principal to {{role, scope}}")
    out: dict[str, Principal] = {}
    for name, spec in data.items():
        at = f"{where}: {name}"
        if not isinstance(name, str) or not name.strip() or not isinstance(spec, dict):
            raise ValueError(f"{at}: each entry is 'principal: {{role: ..., scope: [...]}}'")
        unknown = set(spec) - {"role", "scope"}
        if unknown:
            raise ValueError(f"{at}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        role, scope = files.role(spec.get("role"), at), files.scope(spec.get("scope"), at)
        out[name.strip()] = Principal(name.strip(), role, scope)
    return out


def load(admins: Iterable[str], path: str) -> Roles:
    assigned = parse(files.read_document(path), path) if path else {}
    return Roles(frozenset(a.strip() for a in admins if a.strip()), assigned)
