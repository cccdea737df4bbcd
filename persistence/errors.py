"""One error tree for the whole project, rooted at :class:`PausepointError`.

It lives in ``persistence`` because that is the bottom layer: ``tasks`` and
``worker`` import from here, never the other way round. Every error says what
went wrong and, where there is one, what to do about it.
"""

from __future__ import annotations


class PausepointError(Exception):
    """Root of every error Pausepoint raises on purpose."""


class ConfigurationError(PausepointError):
    """A setting is missing or malformed, or an optional extra is not installed."""


class NotFound(PausepointError):
    """A named thing (run, agent, workflow, step, checkpoint) does not exist."""


class RunNotFound(NotFound):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run with id {run_id!r}; `pausepoint runs` lists the runs")
        self.run_id = run_id


class AgentNotFound(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f"no agent named {name!r}; create it first (`pausepoint agent NAME`)")
        self.name = name


class WorkflowNotFound(NotFound):
    def __init__(self, name: str, known: list[str] | None = None) -> None:
        hint = f"; known workflows: {', '.join(sorted(known))}" if known else ""
        super().__init__(f"no workflow named {name!r}{hint}")
        self.name = name


class InvalidInput(PausepointError):
    """Input from a user or producer is malformed (bad JSON, wrong type, bad name)."""


class Conflict(PausepointError):
    """The request is well-formed but the run is not in a state that allows it."""


class StaleVersion(Conflict):
    """A compare-and-swap found the run's version moved on: someone else got there first.

    Nothing was changed. For a duplicate or late step message this is the expected,
    harmless outcome.
    """

    def __init__(self, run_id: str, expected: int, found: int | None = None) -> None:
        seen = f", found {found}" if found is not None else ""
        super().__init__(f"run {run_id} is no longer at version {expected}{seen}; nothing changed")
        self.run_id = run_id
        self.expected = expected
        self.found = found


class NotWaiting(Conflict):
    """An approval or resume was asked of a run that is not waiting for one."""

    def __init__(self, run_id: str, status: str, detail: str = "") -> None:
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"run {run_id} is {status}, not waiting for an approval{extra}; nothing changed"
        )
        self.run_id = run_id
        self.status = status


class Gone(PausepointError):
    """What was asked for existed but is over: an expired token, a run that moved on."""


class Unauthorized(PausepointError):
    """No credentials, or credentials (API key, HMAC signature) that do not check out."""


class Forbidden(PausepointError):
    """Valid credentials that do not allow this (an approver of another group)."""


class Retry(PausepointError):
    """Raised by a step (or the runtime) to ask for another attempt after ``delay`` seconds."""

    def __init__(self, reason: str, delay: float = 1.0) -> None:
        super().__init__(f"{reason} (retry in {delay:g}s)")
        self.reason = reason
        self.delay = delay


class LLMError(PausepointError):
    """The language model backend failed (after its own retries, where it has them)."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = True) -> None:
        super().__init__(message)
        # The HTTP status the model's server answered with, when it answered.
        self.status = status
        # False when sending the same request again cannot help (a 400, a 401): the
        # runtime fails the step at once instead of retrying it.
        self.retryable = retryable


class ContextTooLong(LLMError):
    """The model refused the request as longer than its context (HTTP 400,
    ``context_length_exceeded``): the context builder compacts and tries once more."""

    def __init__(self, message: str, *, status: int | None = 400) -> None:
        super().__init__(message, status=status, retryable=False)
