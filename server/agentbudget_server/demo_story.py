"""The five-agent demo's cast, their work and the coordinator's policy: pure data and decisions.

``demo`` runs these against a real authority; everything here is deterministic for a seed, so
the story (an 80 % alert, a denial escalated to the coordinator who moves budget, an agent
exhausted and paused, the spend report) happens the same way every run.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

NAMESPACE = "demo"
COORDINATOR = f"{NAMESPACE}/ceo"

# Prices of the demo's sandbox class and paid APIs (models are priced by genai-prices).
PRICE_CONFIG = """\
sandboxes:
  render: {per_second: "0.002"}
apis:
  search: {per_call: "0.005"}
  statuspage: {per_call: "0.02"}
"""


@dataclass(frozen=True)
class Work:
    """A kind of task: its task class (routed to a model), token ranges and extra paid work."""

    task_class: str
    input_tokens: tuple[int, int]
    max_output: int
    output_tokens: tuple[int, int]
    cache_read: tuple[int, int] = (0, 0)
    search_calls: int = 0  # paid API calls, recorded after the task (a direct charge)
    status_checks: int = 0
    sandbox_seconds: tuple[int, int] = (0, 0)  # a sandbox session after the model call


@dataclass(frozen=True)
class Agent:
    name: str
    role: str
    limit: Decimal
    tasks: int  # how many tasks it wants to run in the demo
    mix: tuple[tuple[Work, int], ...]  # kinds of work and their weights
    priority: bool = False  # the coordinator tops it up when it is denied

    @property
    def budget(self) -> str:
        return f"{NAMESPACE}/{self.name}"


RESEARCH = Work("research", (10_000, 40_000), 4_096, (800, 3_000), cache_read=(0, 6_000), search_calls=3)
LOOKUP = Work("lookup", (1_000, 4_000), 512, (50, 400))
REPORTING = Work("reporting", (10_000, 40_000), 4_096, (1_000, 3_500), sandbox_seconds=(10, 40))
ANALYSIS = Work("analysis", (5_000, 20_000), 2_048, (300, 1_500))
PLANNING = Work("planning", (10_000, 25_000), 4_096, (1_000, 3_000))
REFLECTION = Work("reflection", (2_000, 8_000), 1_024, (200, 800))
MONITORING = Work("monitoring", (500, 2_000), 256, (20, 200), status_checks=5)
MEMORY = Work("memory", (2_000, 10_000), 512, (100, 400), cache_read=(0, 8_000))

CAST: tuple[Agent, ...] = (
    Agent("research", "researches markets and competitors", Decimal(20), 90, ((RESEARCH, 4), (LOOKUP, 1)), True),
    Agent("reporting", "writes the weekly reports", Decimal(10), 30, ((REPORTING, 2), (ANALYSIS, 1))),
    Agent("ceo", "coordinates the fleet and moves budget", Decimal(30), 12, ((PLANNING, 1), (REFLECTION, 2))),
    Agent("monitor", "watches the status pages", Decimal(4), 200, ((MONITORING, 1),)),
    Agent("librarian", "keeps the shared memory", Decimal(6), 40, ((MEMORY, 3), (REFLECTION, 1))),
)


@dataclass(frozen=True)
class Usage:
    """One sampled task: the estimate to reserve, then what it really used."""

    work: Work
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    sandbox_seconds: int


def sample(work: Work, rng: random.Random) -> Usage:
    input_tokens = rng.randint(*work.input_tokens)
    cached = rng.randint(*work.cache_read) if work.cache_read[1] else 0
    return Usage(
        work,
        input_tokens,
        rng.randint(*work.output_tokens),
        min(cached, input_tokens // 2),  # cache reads are part of the input
        rng.randint(*work.sandbox_seconds) if work.sandbox_seconds[1] else 0,
    )


def plan(agent: Agent, seed: int) -> list[Usage]:
    """The agent's tasks, in order (the same for the same seed)."""
    rng = random.Random(f"{seed}:{agent.name}")
    works = [w for w, _ in agent.mix]
    weights = [n for _, n in agent.mix]
    return [sample(rng.choices(works, weights)[0], rng) for _ in range(agent.tasks)]


# -- the coordinator -------------------------------------------------------------------------------

TOP_UP = Decimal(5)
MAX_TOP_UPS = 2  # per agent
KEEP = Decimal(10)  # what the coordinator keeps for its own work


@dataclass
class Coordinator:
    """The "AI CEO"'s budget policy: top up a priority agent that was denied, within limits."""

    top_ups: dict[str, int] = field(default_factory=dict)

    def on_denial(self, budget: str, priority: Mapping[str, bool], own_remaining: Decimal) -> Decimal | None:
        """How much to move to ``budget`` (None: escalate to a human instead)."""
        if budget == COORDINATOR or not priority.get(budget, False):
            return None
        if self.top_ups.get(budget, 0) >= MAX_TOP_UPS or own_remaining - TOP_UP < KEEP:
            return None
        self.top_ups[budget] = self.top_ups.get(budget, 0) + 1
        return TOP_UP


# -- the story ------------------------------------------------------------------------------------

BEATS = ("alert", "escalated", "transferred", "exhausted", "paused")


@dataclass
class Story:
    """What happened, for the live view and the closing checklist."""

    lines: list[str] = field(default_factory=list)
    beats: dict[str, str] = field(default_factory=dict)  # the first of each kind of beat

    def tell(self, line: str, beat: str | None = None) -> None:
        self.lines.append(line)
        if beat is not None and beat not in self.beats:
            self.beats[beat] = line

    def complete(self) -> bool:
        return all(b in self.beats for b in BEATS)

    def checklist(self) -> list[str]:
        names = {
            "alert": "80 % alert",
            "escalated": "denial escalated to the coordinator",
            "transferred": "coordinator moved budget",
            "exhausted": "an agent exhausted its budget",
            "paused": "the exhausted agent was paused",
        }
        return [f"[{'x' if b in self.beats else ' '}] {names[b]}: {self.beats.get(b, 'did not happen')}" for b in BEATS]


# -- the view -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    budget: str
    phase: str
    spent: Decimal
    limit: Decimal
    tasks_done: int
    tasks: int
    state: str  # running, waiting, paused, done


def bar(spent: Decimal, limit: Decimal, width: int = 24) -> str:
    share = min(Decimal(1), spent / limit) if limit > 0 else Decimal(1)
    filled = int(share * width)
    return "#" * filled + "." * (width - filled)


def frame(rows: Sequence[Row], story: Story, elapsed: float, last: int = 8) -> str:
    out = [f"AgentBudget demo — five agents, real gRPC, real PostgreSQL ({elapsed:4.1f} s)", ""]
    for r in rows:
        used = r.spent / r.limit if r.limit else Decimal(0)
        out.append(
            f"{r.budget:<16} [{bar(r.spent, r.limit)}] {r.spent:>7.2f} / {r.limit:>6.2f} USD {used:>4.0%}"
            f"  {r.phase:<9} {r.state:<8} tasks {r.tasks_done}/{r.tasks}"
        )
    out += ["", *story.lines[-last:]]
    return "\n".join(out)
