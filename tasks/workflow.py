"""The workflow API: a workflow is a named set of steps; a step returns what comes next.

    loan = Workflow("loan")

    @loan.step(start=True)
    def assess(ctx: StepContext) -> Outcome:
        ctx.state["assessment"] = ctx.ask("Assess: " + ctx.task)
        return Wait.approval(then="finalize", prompt="Approve this loan?")

    @loan.step
    def finalize(ctx: StepContext) -> Outcome:
        return End({"approved": ctx.resumed.outcome["approved"]})

Plain Python: each step runs once per attempt, between two checkpoints, and
there is no replay. A step's side effects should be idempotent under
``ctx.idempotency_key``, which is the same for every attempt of that step.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeAlias, overload

from pausepoint.persistence.errors import ConfigurationError, InvalidInput, WorkflowNotFound
from pausepoint.persistence.records import APPROVAL, CALLBACK, EVENT, RESOURCE, TIMER
from pausepoint.tasks.tools import ToolRegistry, tool

if TYPE_CHECKING:
    from pausepoint.tasks.context import StepContext


@dataclass(frozen=True)
class Next:
    """Go on to ``step`` (after ``delay`` seconds, kept in the database, not the broker)."""

    step: str
    delay: float = 0.0


@dataclass(frozen=True)
class Wait:
    """Park the run (no worker held) until the wait is fulfilled, then run ``then``."""

    kind: str
    then: str
    prompt: str = ""
    group: str | None = None
    timeout: timedelta | None = None
    deadline: datetime | None = None
    # At the deadline: "fail" the run, "default": resume ``then`` with ``default``,
    # or "escalate" (approvals): hand the decision to ``escalate_to`` for ``escalate_after``.
    on_timeout: str = "fail"
    default: Any = None
    escalate_to: str | None = None
    escalate_after: timedelta | None = None
    source: str | None = None
    event_name: str | None = None
    match_key: str | None = None
    resource_name: str | None = None

    @classmethod
    def approval(
        cls,
        then: str,
        *,
        prompt: str = "",
        group: str | None = None,
        timeout: timedelta | None = None,
        on_timeout: str = "fail",
        default: Any = None,
        escalate_to: str | None = None,
        escalate_after: timedelta | None = None,
    ) -> Wait:
        """Wait for a person of ``group`` to approve or reject.

        With ``escalate_to``, the deadline hands the decision to that group for
        ``escalate_after`` more (one day by default) instead of ``on_timeout``.
        """
        if escalate_to is not None:
            on_timeout = "escalate"
        return cls(
            APPROVAL,
            then,
            prompt,
            group,
            timeout,
            None,
            on_timeout,
            default,
            escalate_to=escalate_to,
            escalate_after=escalate_after,
        )

    @classmethod
    def callback(
        cls,
        then: str,
        *,
        source: str | None = None,
        timeout: timedelta | None = None,
        on_timeout: str = "fail",
        default: Any = None,
    ) -> Wait:
        """Wait for an external system to POST to the URL from ``ctx.callback_url(source)``."""
        return cls(
            CALLBACK, then, timeout=timeout, on_timeout=on_timeout, default=default, source=source
        )

    @classmethod
    def event(
        cls,
        name: str,
        key: str,
        then: str,
        *,
        timeout: timedelta | None = None,
        on_timeout: str = "fail",
        default: Any = None,
    ) -> Wait:
        """Wait for ``POST /events/{name}`` whose ``key`` equals ``key``."""
        return cls(
            EVENT,
            then,
            timeout=timeout,
            on_timeout=on_timeout,
            default=default,
            event_name=name,
            match_key=key,
        )

    @classmethod
    def resource(cls, name: str, then: str, *, timeout: timedelta | None = None) -> Wait:
        """Run step ``then`` holding one slot of ``name``; park (no worker) until one is free.

        The slot is given back when ``then`` finishes, whatever it returns.
        """
        return cls(RESOURCE, then, timeout=timeout, resource_name=name)

    @classmethod
    def timer(
        cls, then: str, *, delay: timedelta | None = None, at: datetime | None = None
    ) -> Wait:
        """Sleep until ``at`` (or for ``delay``) without holding a worker."""
        if (delay is None) == (at is None):
            raise InvalidInput("a timer needs exactly one of delay= or at=")
        return cls(TIMER, then, timeout=delay, deadline=at)


@dataclass(frozen=True)
class End:
    """Finish the run: completed with ``result``, or failed with ``error``."""

    result: Any = None
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None


Outcome: TypeAlias = Next | Wait | End
StepFn: TypeAlias = "Callable[[StepContext], Outcome]"


@dataclass(frozen=True)
class Step:
    name: str
    fn: StepFn
    max_retries: int = 3
    retry_delay: float = 1.0

    def backoff(self, attempt: int) -> float:
        """Delay before retry number ``attempt + 1``: exponential, capped at 5 minutes."""
        return float(min(self.retry_delay * 2**attempt, 300.0))


@dataclass
class Workflow:
    """A named set of steps; registers itself in ``registry`` (the default one unless given)."""

    name: str
    description: str = ""
    registry: Registry | None = None
    steps: dict[str, Step] = field(default_factory=dict)
    start: str | None = None
    # The tools this workflow's agent loops offer, beside the agent's own.
    tools: ToolRegistry = field(default_factory=ToolRegistry)

    def __post_init__(self) -> None:
        if not self.name or self.name.startswith("__"):
            raise ConfigurationError(f"bad workflow name {self.name!r}")
        (self.registry if self.registry is not None else registry).register(self)

    @overload
    def step(self, fn: StepFn) -> StepFn: ...

    @overload
    def step(
        self,
        fn: None = None,
        *,
        name: str | None = None,
        start: bool = False,
        max_retries: int = 3,
        retry_delay: float = 1.0,
    ) -> Callable[[StepFn], StepFn]: ...

    def step(
        self,
        fn: StepFn | None = None,
        *,
        name: str | None = None,
        start: bool = False,
        max_retries: int = 3,
        retry_delay: float = 1.0,
    ) -> StepFn | Callable[[StepFn], StepFn]:
        """Register a step. The first step registered (or the one with ``start=True``) starts."""

        def register(f: StepFn) -> StepFn:
            step_name = name or f.__name__
            if step_name in self.steps:
                raise ConfigurationError(f"workflow {self.name!r} has two steps {step_name!r}")
            self.steps[step_name] = Step(step_name, f, max_retries, retry_delay)
            if start or self.start is None:
                self.start = step_name
            return f

        return register(fn) if fn is not None else register

    def tool(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Register a tool offered by this workflow's agent loops (see
        :func:`pausepoint.tasks.tools.tool` for the options)."""
        register = tool(into=self.tools, **options)
        return register(fn) if fn is not None else register

    def get_step(self, name: str | None) -> Step:
        if name is None or name not in self.steps:
            raise ConfigurationError(
                f"workflow {self.name!r} has no step {name!r} (steps: {', '.join(self.steps)})"
            )
        return self.steps[name]

    def check(self, outcome: object) -> Outcome:
        """Validate what a step returned, with a message that names the mistake."""
        if isinstance(outcome, Next):
            self.get_step(outcome.step)
        elif isinstance(outcome, Wait):
            self.get_step(outcome.then)
            if outcome.on_timeout not in ("fail", "default", "escalate"):
                raise ConfigurationError("on_timeout must be 'fail', 'default' or 'escalate'")
        elif not isinstance(outcome, End):
            raise ConfigurationError(
                f"a step of {self.name!r} returned {outcome!r}; return Next, Wait or End"
            )
        return outcome


log = logging.getLogger("pausepoint.workflow")


class Registry:
    """Workflows by name. Worker processes fill it by importing workflow modules."""

    def __init__(self) -> None:
        self._workflows: dict[str, Workflow] = {}

    def register(self, workflow: Workflow) -> None:
        existing = self._workflows.get(workflow.name)
        if existing is not None and existing is not workflow:
            raise ConfigurationError(f"two workflows are named {workflow.name!r}")
        self._workflows[workflow.name] = workflow

    def get(self, name: str) -> Workflow:
        try:
            return self._workflows[name]
        except KeyError:
            raise WorkflowNotFound(name, list(self._workflows)) from None

    def names(self) -> list[str]:
        return sorted(self._workflows)

    def load(self, modules: Iterable[str]) -> None:
        """Import workflow modules; each registers its workflows as it is imported.

        A name from before the ``pausepoint`` namespace (``tasks.examples``) still works
        when no module of that name exists (a user's own ``tasks`` package wins).
        """
        for module in (*BUILTIN_MODULES, *modules):
            try:
                importlib.import_module(module)
            except ImportError as exc:
                renamed = RENAMED_MODULES.get(module)
                if renamed is not None and getattr(exc, "name", None) in _prefixes(module):
                    log.warning("workflow module %r is now %r", module, renamed)
                    importlib.import_module(renamed)
                    continue
                raise ConfigurationError(
                    f"cannot import workflow module {module!r}: {exc}"
                ) from exc


# Loaded by every worker: the agent loops that ship with Pausepoint.
BUILTIN_MODULES = ("pausepoint.tasks.strategies",)

# Workflow modules this project shipped under other names.
RENAMED_MODULES = {"tasks.examples": "pausepoint.tasks.examples"}


def _prefixes(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[: i + 1]) for i in range(len(parts))}


registry = Registry()
