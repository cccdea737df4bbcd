"""The runtime: start a run, advance it one step, decide an approval, sweep.

Plain functions over a :class:`Store`, an LLM backend and a ``publish``
callable, so all of it runs and is tested without a broker. The Celery tasks
in :mod:`tasks.jobs` are thin wrappers around these.

The order is always: commit, then publish. A crash between the two leaves a
queued run with no message, which the sweeper finds and publishes again.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from pausepoint.persistence.errors import (
    ConfigurationError,
    InvalidInput,
    LLMError,
    NotFound,
    PausepointError,
    Retry,
    StaleVersion,
)
from pausepoint.persistence.jsonvalues import Unreadable
from pausepoint.persistence.records import (
    CALLBACK,
    COMPLETED,
    FAILED,
    QUEUED,
    RESOURCE,
    RUNNING,
    WAITING,
    Claim,
    NewEvent,
    RunRecord,
    SweepReport,
    Transition,
    WaitSpec,
)
from pausepoint.persistence.retention import GcReport, Progress, Retention, collect
from pausepoint.persistence.store import Store
from pausepoint.tasks import metrics
from pausepoint.tasks.context import StepContext
from pausepoint.tasks.heartbeats import _heartbeats
from pausepoint.tasks.llm import LLMBackend
from pausepoint.tasks.tokens import make_token, parse_token
from pausepoint.tasks.workflow import End, Next, Registry, Step, Wait, Workflow, registry

log = logging.getLogger("pausepoint.runtime")

Publish = Callable[[str, int], None]


def worker_identity() -> str:
    """Who holds a lease: host and pid, so the audit trail can name the process."""
    return f"worker:{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class StepReport:
    """What one ``run_step`` call did: ``stale`` when the message had nothing to do."""

    run_id: str
    outcome: str
    step: str | None = None
    status: str | None = None
    version: int | None = None


class Runtime:
    def __init__(
        self,
        store: Store,
        *,
        llm: LLMBackend,
        publish: Publish,
        workflows: Registry = registry,
        redeliver_after: float = 30.0,
        max_attempts: int = 5,
        secret: bytes | None = None,
        public_url: str = "http://127.0.0.1:8000",
        retention: Retention | None = None,
        inline_steps: int = 1,
        inline_seconds: float = 2.0,
    ) -> None:
        if inline_steps < 1:
            raise InvalidInput("inline_steps must be at least 1")
        self.inline_steps = inline_steps
        self.inline_seconds = inline_seconds
        self.store = store
        self.retention = retention or Retention()
        self.llm = llm
        self._publish = publish
        self.workflows = workflows
        self.redeliver_after = redeliver_after
        self.max_attempts = max_attempts
        self._secret = secret
        self.public_url = public_url.rstrip("/")

    @property
    def secret(self) -> bytes:
        """The key callback tokens derive from: given in settings, or the store's own."""
        if self._secret is None:
            self._secret = self.store.secret()
        return self._secret

    # ------------------------------------------------------------ producers

    def start(
        self,
        workflow: str,
        *,
        agent: str,
        task: str = "",
        input: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        actor: str = "api",
    ) -> RunRecord:
        """Start a run of ``workflow`` for ``agent``; with a used idempotency key, the same run."""
        run, _ = self.start_run(
            workflow,
            agent=agent,
            task=task,
            input=input,
            idempotency_key=idempotency_key,
            actor=actor,
        )
        return run

    def start_run(
        self,
        workflow: str,
        *,
        agent: str,
        task: str = "",
        input: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        actor: str = "api",
    ) -> tuple[RunRecord, bool]:
        """Like :meth:`start`, and whether this call created the run."""
        if input is not None and not isinstance(input, dict):
            raise InvalidInput("run input must be a JSON object")
        wf = self.workflows.get(workflow)
        run, created = self.store.create_run(
            agent_name=agent,
            workflow=wf.name,
            first_step=wf.start,
            actor=actor,
            task=task,
            input=input,
            idempotency_key=idempotency_key,
        )
        if created:
            self.publish(run)
        return run, created

    def decide(
        self,
        run_id: str,
        *,
        approved: bool,
        actor: str,
        comment: str = "",
        data: dict[str, Any] | None = None,
        groups: frozenset[str] | None = None,
    ) -> RunRecord:
        """Approve or reject a run's pending approval and queue its next step.

        The API and the CLI both decide through here; ``groups`` limits who may.
        """
        run = self.store.decide(
            run_id, approved=approved, actor=actor, comment=comment, data=data, groups=groups
        )
        self.publish(run)
        return run

    def deliver_callback(
        self, token: str, payload: Any, *, actor: str = "system"
    ) -> tuple[str, RunRecord | None]:
        """Hand an external system's result to the wait its token names.

        ``("resumed", run)``: the run is queued; ``("stored", None)``: it came before
        the run parked and will be delivered then. Raises NotFound for a token that is
        not ours, Conflict for a second use, Gone when it is too late.
        """
        parsed = parse_token(self.secret, token)
        if parsed is None:
            raise NotFound("unknown callback token")
        outcome, run = self.store.deliver_callback(
            token_hash=parsed.hash,
            run_id=parsed.run_id,
            seq=parsed.seq,
            source=parsed.source,
            payload=payload,
            actor=actor,
        )
        if run is not None:
            self.publish(run)
        return outcome, run

    def publish_event(self, name: str, key: str, payload: Any, *, actor: str) -> list[RunRecord]:
        """Resume every run waiting for event ``name`` with ``key``; keep it for later ones."""
        resumed = self.store.publish_event(name, key, payload, actor=actor)
        for run in resumed:
            self.publish(run)
        return resumed

    # ------------------------------------------------ rollback, fork, hold

    def rollback(self, run_id: str, to_seq: int, *, actor: str, reason: str = "") -> RunRecord:
        """Continue a (not running) run from checkpoint ``to_seq``; queue or re-park it."""
        run = self.store.rollback(
            run_id, to_seq, actor=actor, reason=reason, token_hash=self._token_hash
        )
        self.publish(run)
        return run

    def fork(
        self, run_id: str, at_seq: int | None = None, *, actor: str, reason: str = ""
    ) -> RunRecord:
        """A new run from checkpoint ``at_seq`` (the latest by default) of ``run_id``."""
        run = self.store.fork(
            run_id, at_seq, actor=actor, reason=reason, token_hash=self._token_hash
        )
        self.publish(run)
        return run

    def set_legal_hold(self, run_id: str, on: bool, *, actor: str, reason: str = "") -> RunRecord:
        run = self.store.set_legal_hold(run_id, on, actor=actor, reason=reason)
        self.publish(run)
        return run

    def _token_hash(self, run_id: str, seq: int, source: str | None) -> str:
        return make_token(self.secret, run_id, seq, source).hash

    def gc(
        self,
        *,
        dry_run: bool = False,
        batch: int = 100,
        actor: str = "gc",
        progress: Progress | None = None,
    ) -> GcReport:
        """One retention pass with this runtime's policy (``pausepoint gc``, beat daily)."""
        return collect(
            self.store,
            self.retention,
            dry_run=dry_run,
            batch=batch,
            actor=actor,
            progress=progress,
        )

    def sweep(self) -> SweepReport:
        started = time.monotonic()
        report = self.store.sweep(
            redeliver_after=self.redeliver_after, max_attempts=self.max_attempts
        )
        for run_id, version in report.republished:
            self._send(run_id, version)
        # Chain the ledger entries the transitions since the last pass wrote.
        self.store.seal_ledger()
        metrics.swept(
            time.monotonic() - started,
            {
                "republished": len(report.republished),
                "deadline": len(report.deadlines),
                "escalated": len(report.escalated),
                "failed": len(report.failed),
                "resource_wakeup": len(report.resource_wakeups),
                "skipped": len(report.skipped),
            },
            len(report.lease_expired),
        )
        if report.republished or report.failed or report.skipped:
            log.log(
                logging.WARNING if report.skipped else logging.INFO,
                "sweep: published %d, lease expired %d, deadlines %d, failed %d, skipped %d",
                len(report.republished),
                len(report.lease_expired),
                len(report.deadlines),
                len(report.failed),
                len(report.skipped),
            )
        return report

    def publish(self, run: RunRecord) -> None:
        if run.status == QUEUED and run.published_at is not None:
            self._send(run.id, run.version)

    def _send(self, run_id: str, version: int) -> None:
        try:
            self._publish(run_id, version)
        except Exception as exc:
            # Committed already: the sweeper re-sends after redeliver_after.
            log.warning(
                "could not publish run %s v%d (%s: %s); the sweeper will re-send it",
                run_id,
                version,
                type(exc).__name__,
                exc,
            )

    # --------------------------------------------------------------- a step

    def run_step(self, run_id: str, version: int, *, owner: str | None = None) -> StepReport:
        """Advance a run by one step, exactly once per version, whatever the duplicates.

        With ``inline_steps`` > 1, a step whose next step is due now hands it to this same
        worker in its commit (the lease is kept), up to ``inline_steps`` steps or
        ``inline_seconds``: sequential steps skip the broker, each still one checkpoint.
        """
        owner = owner or worker_identity()
        claim = self.store.claim(run_id, version, owner)
        if claim is None:
            log.debug("run %s v%d: stale or duplicate message, nothing to do", run_id, version)
            return StepReport(run_id, "stale")
        until = time.monotonic() + self.inline_seconds
        done = 0
        while True:
            _note_resume(claim, self.store.clock())
            started = time.monotonic()
            with _heartbeats.beating(self.store, claim, owner):
                transition = self._execute(claim)
            seconds = time.monotonic() - started
            transition = _with_completion_event(transition, claim, round(seconds * 1000, 3))
            done += 1
            keep = done < self.inline_steps and time.monotonic() < until
            try:
                new, transition = self._commit(claim, owner, transition, keep)
            except StaleVersion:
                log.warning(
                    "run %s: lease lost during step %s; result dropped", run_id, claim.run.step
                )
                metrics.step_done(claim.run.workflow, claim.run.step, "lost", seconds)
                return StepReport(run_id, "stale", claim.run.step)
            metrics.step_done(claim.run.workflow, claim.run.step, _outcome(transition), seconds)
            self.publish(new)
            if claim.holds and not transition.retry:
                # Slots came back with this commit: the runs waiting longest get them now.
                for woken in self.store.wake_resources(claim.holds):
                    self.publish(woken)
            if new.status != RUNNING:
                return StepReport(run_id, "committed", claim.run.step, new.status, new.version)
            claim = self.store.next_claim(claim, new, transition.state)

    def _commit(
        self, claim: Claim, owner: str, transition: Transition, keep: bool
    ) -> tuple[RunRecord, Transition]:
        """Commit a step's transition; the run as committed, and the transition it got."""
        try:
            return self.store.commit_step(claim, owner, transition, keep_lease=keep), transition
        except InvalidInput as exc:
            # The step gave back what the store cannot keep (not JSON, nested too deep, a
            # 100-digit integer): the run fails, saying so, instead of the task erroring
            # and the sweeper re-running the step after its lease.
            log.error("run %s step %s: %s", claim.run.id, claim.run.step, exc)
            failed = _failed(claim, f"the step's outcome cannot be stored: {exc}")
            return self.store.commit_step(claim, owner, failed, keep_lease=False), failed

    def _execute(self, claim: Claim) -> Transition:
        run = claim.run
        unreadable = _unreadable(claim)
        if unreadable is not None:
            # Stored before the store bounded JSON (or written by hand): no retry can read it.
            log.error("run %s: %s; failing the run", run.id, unreadable)
            return _failed(claim, unreadable)
        try:
            wf = self.workflows.get(run.workflow)
            step = wf.get_step(run.step)
        except PausepointError as exc:
            # A worker without this workflow's code: retry, in case another worker has it.
            return self._retry_or_fail(claim, None, exc, retry_delay=5.0)
        try:
            ctx = StepContext(
                store=self.store,
                claim=claim,
                llm=self.llm,
                secret=self.secret,
                public_url=self.public_url,
            )
            outcome = wf.check(step.fn(ctx))
            if isinstance(outcome, Wait) and outcome.kind == RESOURCE:
                self.store.get_resource(outcome.resource_name or "")
            if isinstance(outcome, End) and _wants_episodes(claim.agent.model):
                ctx.write_episode()
        except Retry as exc:
            return self._retry_or_fail(claim, step, exc, retry_delay=exc.delay)
        except LLMError as exc:
            if exc.retryable:
                return self._retry_or_fail(claim, step, exc)
            # A request the model refuses (a 400, an overflowing context, a bad key) is
            # refused again on every retry: the run fails now, saying why.
            return _failed(claim, f"{type(exc).__name__}: {exc}")
        except (ConfigurationError, NotFound) as exc:
            # A mistake in the workflow or its setup: retrying cannot fix it.
            return _failed(claim, f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            return self._retry_or_fail(claim, step, exc)
        return _transition(wf, ctx, outcome, now=self.store.clock(), secret=self.secret)

    def _retry_or_fail(
        self,
        claim: Claim,
        step: Step | None,
        exc: BaseException,
        retry_delay: float | None = None,
    ) -> Transition:
        attempt = claim.run.attempt
        max_retries = step.max_retries if step is not None else 3
        error = f"{type(exc).__name__}: {exc}"
        if attempt >= max_retries:
            # The traceback (file paths, code) goes to the worker's log, for operators; the
            # trail, which any API key may read, says what failed and why.
            log.error(
                "run %s step %s failed for good: %s\n%s",
                claim.run.id,
                claim.run.step,
                error,
                traceback.format_exc(limit=8),
            )
            return _failed(claim, error)
        delay = retry_delay if retry_delay is not None else step.backoff(attempt) if step else 1.0
        log.warning(
            "run %s step %s attempt %d failed (%s); retry in %.1fs",
            claim.run.id,
            claim.run.step,
            attempt + 1,
            error,
            delay,
        )
        return Transition(
            status=QUEUED,
            state=claim.checkpoint.state,
            step=claim.run.step,
            retry=True,
            delay=delay,
            events=(
                NewEvent(
                    "retried",
                    {
                        "step": claim.run.step,
                        "attempt": attempt + 1,
                        "error": error,
                        "delay": delay,
                    },
                ),
            ),
        )


def _outcome(t: Transition) -> str:
    """How a step ended, as ``pausepoint_steps_total`` counts it."""
    if t.retry:
        return "retried"
    return {QUEUED: "next", WAITING: "waiting", COMPLETED: "completed"}.get(t.status, "failed")


def _note_resume(claim: Claim, now: datetime) -> None:
    """A step that resumes a fulfilled wait: how long it waited for a worker."""
    wait = claim.resumed
    if wait is not None and wait.decided_at is not None:
        metrics.resumed(wait.kind, (now - wait.decided_at).total_seconds())


def _wants_episodes(model: Any) -> bool:
    """The agent's ``model["memory"]["episodes"]``, read without judging the rest (a run
    that never asks the model is not failed for its context settings)."""
    memory = model.get("memory") if isinstance(model, dict) else None
    return isinstance(memory, dict) and memory.get("episodes") is True


def _unreadable(claim: Claim) -> str | None:
    """What of the run's stored data cannot be decoded, if anything."""
    parts: list[tuple[str, Any]] = [
        ("input", claim.run.input),
        ("state", claim.checkpoint.state),
        ("agent's model settings", claim.agent.model),
    ]
    if claim.resumed is not None:
        parts.append(("the outcome of the wait it resumes from", claim.resumed.outcome))
    for what, value in parts:
        if isinstance(value, Unreadable):
            return f"the run's stored {what} cannot be read ({value.why})"
    return None


def _failed(claim: Claim, error: str) -> Transition:
    data: dict[str, Any] = {"step": claim.run.step, "error": error}
    return Transition(
        status=FAILED,
        state=claim.checkpoint.state,
        error=error,
        events=(NewEvent("failed", data),),
    )


def _transition(
    wf: Workflow, ctx: StepContext, outcome: Next | Wait | End, now: datetime, secret: bytes
) -> Transition:
    messages = tuple(ctx.new_messages)
    state = ctx.stored_state()
    kept: dict[str, Any] = {"memories": tuple(ctx.new_memories), "summary": ctx.new_summary}
    info = dict(ctx.info)
    if ctx.model_calls:
        info["model_calls"] = ctx.model_calls
    if info:
        kept["info"] = info
    if isinstance(outcome, Next):
        return Transition(
            status=QUEUED,
            state=state,
            step=outcome.step,
            messages=messages,
            delay=outcome.delay,
            **kept,
        )
    if isinstance(outcome, Wait):
        deadline = outcome.deadline
        if deadline is None and outcome.timeout is not None:
            deadline = now + outcome.timeout
        token_hash = None
        if outcome.kind == CALLBACK:
            token_hash = make_token(secret, ctx.run_id, ctx.next_seq, outcome.source).hash
        spec = WaitSpec(
            kind=outcome.kind,
            resume_step=outcome.then,
            prompt=outcome.prompt,
            approver_group=outcome.group,
            deadline=deadline,
            on_timeout=outcome.on_timeout,
            default_outcome=outcome.default,
            token_hash=token_hash,
            escalate_to=outcome.escalate_to,
            escalate_after=(
                outcome.escalate_after.total_seconds() if outcome.escalate_after else None
            ),
            source=outcome.source,
            event_name=outcome.event_name,
            match_key=outcome.match_key,
            resource=outcome.resource_name,
        )
        # The wait is described in the step's step_completed event (_with_completion_event).
        return Transition(status=WAITING, state=state, messages=messages, wait=spec, **kept)
    if outcome.failed:
        return Transition(
            status=FAILED,
            state=state,
            messages=messages,
            error=outcome.error,
            result=outcome.result,
            events=(NewEvent("failed", {"step": ctx.step, "error": outcome.error}),),
            **kept,
        )
    return Transition(
        status=COMPLETED,
        state=state,
        messages=messages,
        result=outcome.result,
        events=(NewEvent("completed", {"result": outcome.result}),),
        **kept,
    )


def _with_completion_event(t: Transition, claim: Claim, duration_ms: float) -> Transition:
    if t.retry:
        return t
    # One event per step, written with its commit: the claim writes none (a worker that
    # dies mid-step leaves a ``lease_expired`` event naming it instead). The step
    # started ``duration_ms`` before this event's time; it made checkpoint ``seq``,
    # and its idempotency key is ``<run_id>:<seq>``. ``attempt`` only when a retry.
    info: dict[str, Any] = {"step": claim.run.step, "seq": claim.run.seq + 1}
    if claim.run.attempt:
        info["attempt"] = claim.run.attempt
    # next: the step that runs next (after the wait, when there is one), or how the run
    # ended ("completed", "failed").
    following: str | None = t.status
    if t.status == QUEUED:
        following = t.step
    elif t.status == WAITING and t.wait is not None:
        following = t.wait.resume_step
    info.update(duration_ms=duration_ms, messages=len(t.messages), next=following)
    info.update(t.info)
    if t.status == WAITING and t.wait is not None:
        # What the run now waits for, in the same event: a parked run keeps one event
        # row fewer (bench/README.md, parked runs). The empty fields are left out.
        w = t.wait
        wait: dict[str, Any] = {"kind": w.kind}
        if w.prompt:
            wait["prompt"] = w.prompt
        if w.approver_group:
            wait["group"] = w.approver_group
        if w.deadline is not None:
            wait["deadline"] = w.deadline.isoformat()
        info["wait"] = wait
    done = NewEvent("step_completed", info)
    return replace(t, events=(done, *t.events))


__all__ = ["Publish", "Runtime", "StepReport", "worker_identity"]
