"""Automations that `aicml up` creates on the Prefect server: crash zombie runs, notify on failure.

A flow run whose process dies stops sending heartbeats (`PREFECT_FLOWS_HEARTBEAT_FREQUENCY`); the
first automation marks it Crashed when none arrives in time, so it can be resumed. The second sends a
message through a webhook block whenever a flow run fails or crashes.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any, cast
from uuid import UUID

CRASH_AUTOMATION = "aic-crash-zombie-flow-runs"
FAILURE_AUTOMATION = "aic-notify-on-failure"
WEBHOOK_BLOCK = "aic-failure-webhook"
HEARTBEAT_SECONDS = 30  # Prefect's minimum


def _replace(automation: Any) -> UUID:
    """Create ``automation``, replacing one of the same name (so `aicml up` stays idempotent)."""
    from prefect.automations import Automation

    with contextlib.suppress(ValueError):  # ValueError: none of that name yet
        cast(Any, Automation.read(name=automation.name)).delete()
    created = automation.create()
    return cast(UUID, created.id)


def ensure_crash_automation(within_seconds: int = 3 * HEARTBEAT_SECONDS) -> UUID:
    """Mark a running flow run Crashed when no heartbeat (and no final state) came for ``within_seconds``."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    return _replace(
        Automation(
            name=CRASH_AUTOMATION,
            description="Flow runs that stop sending heartbeats are marked Crashed (aic-ml).",
            trigger=EventTrigger(
                after={"prefect.flow-run.heartbeat"},
                expect={
                    "prefect.flow-run.heartbeat",
                    "prefect.flow-run.Completed",
                    "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled",
                    "prefect.flow-run.Crashed",
                },
                match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
                for_each={"prefect.resource.id"},
                posture=Posture.Proactive,
                threshold=1,
                within=timedelta(seconds=within_seconds),
            ),
            actions=[
                ChangeFlowRunState(
                    state=StateType.CRASHED,
                    message=f"No heartbeat for {within_seconds}s: the flow-run process is gone. "
                    "Resume it with `aicml resume <flow-run-id>`.",
                )
            ],
        )
    )


def ensure_failure_notification(webhook_url: str) -> UUID:
    """Save a webhook block for ``webhook_url`` and notify it when any flow run fails or crashes."""
    from prefect.automations import Automation
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    block = CustomWebhookNotificationBlock(
        name="aic-ml",
        url=webhook_url,
        method="POST",
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
        allow_private_urls=True,  # the receiver is usually on this machine or cluster
    )
    block_id = block.save(WEBHOOK_BLOCK, overwrite=True)
    return _replace(
        Automation(
            name=FAILURE_AUTOMATION,
            description="Notify the aic-ml webhook when a flow run fails or crashes.",
            trigger=EventTrigger(
                expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
                posture=Posture.Reactive,
                threshold=1,
                within=timedelta(seconds=0),
            ),
            actions=[
                SendNotification(
                    block_document_id=block_id,
                    subject="aic-ml: flow run {{ flow_run.name }} {{ flow_run.state.name }}",
                    body="Flow run {{ flow_run.name }} of {{ flow.name }} ended {{ flow_run.state.name }}: "
                    "{{ flow_run.state.message }}",
                )
            ],
        )
    )
