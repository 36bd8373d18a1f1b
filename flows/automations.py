"""Tell someone when a scheduled run fails: a Prefect automation on the nightly deployment.

    python -m flows.automations create --webhook URL      # after `python -m flows.deploy` registered it
    python -m flows.automations delete

Trigger: a flow run of the deployment (default `pipeline/nightly`) entering Failed or Crashed, the
events the Prefect server itself emits on a state change, so a run that dies without reporting
(a killed worker: Crashed) is caught too. Action: a notification through a Custom Webhook block,
a POST of `{"text": ...}` naming the run, its state, its message and its page in the UI: what Slack
and Mattermost incoming webhooks, ntfy or any small receiver take. The URL is kept as the block's
secret (masked in the UI) and never printed. Both live on the server PREFECT_API_URL names (the
one the deployment is served on); creating them again replaces them.
"""

from __future__ import annotations

import argparse
import sys
from uuid import UUID

AUTOMATION_NAME = "alexnet: {deployment} failed"
BLOCK_NAME = "alexnet-failures"
FAILED_EVENTS = ("prefect.flow-run.Failed", "prefect.flow-run.Crashed")
SUBJECT = "{{ flow.name }}/{{ deployment.name }}: run {{ flow_run.name }} {{ flow_run.state.name }}"
BODY = """Flow run {{ flow.name }}/{{ flow_run.name }} of deployment {{ deployment.name }} entered \
{{ flow_run.state.name }} at {{ flow_run.state.timestamp }}.
Message: {{ flow_run.state.message }}
Flow run: {{ flow_run|ui_url }}"""


def save_webhook_block(url: str) -> UUID:
    """The Custom Webhook block the notifications go through, the URL as its secret; its id."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block = CustomWebhookNotificationBlock(
        name=BLOCK_NAME, url="{{webhook_url}}", secrets={"webhook_url": url},
        json_data={"text": "{{subject}}\n{{body}}"})
    return block.save(BLOCK_NAME, overwrite=True)


def create(webhook: str, deployment: str = "pipeline/nightly") -> UUID:
    """The automation that notifies `webhook` when a run of `deployment` fails or crashes; its id.

    The deployment must exist on the server; an automation of the same name is replaced.
    """
    from prefect.client.orchestration import get_client
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            target = client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            raise SystemExit(f"automations: no deployment {deployment!r} on {client.api_url}; serve it first "
                             "(python -m flows.deploy)") from None
        block_id = save_webhook_block(webhook)
        name = AUTOMATION_NAME.format(deployment=deployment)
        for old in client.read_automations_by_name(name):
            client.delete_automation(old.id)
        return client.create_automation(AutomationCore(
            name=name, description=f"Notify a webhook when a run of {deployment} fails or crashes",
            trigger=EventTrigger(
                expect=set(FAILED_EVENTS), match={"prefect.resource.id": "prefect.flow-run.*"},
                match_related={"prefect.resource.id": f"prefect.deployment.{target.id}"},
                posture=Posture.Reactive, threshold=1),
            actions=[SendNotification(block_document_id=block_id, subject=SUBJECT, body=BODY)]))


def delete(deployment: str = "pipeline/nightly") -> int:
    """Remove the automation of `deployment`; how many were removed."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        found = client.read_automations_by_name(AUTOMATION_NAME.format(deployment=deployment))
        for automation in found:
            client.delete_automation(automation.id)
    return len(found)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    make = sub.add_parser("create", help="notify a webhook when a run of the deployment fails or crashes")
    make.add_argument("--webhook", required=True, help="the URL notifications are POSTed to (kept secret)")
    gone = sub.add_parser("delete", help="remove the automation")
    for parser in (make, gone):
        parser.add_argument("--deployment", default="pipeline/nightly", help="FLOW/DEPLOYMENT (default: %(default)s)")
    args = ap.parse_args(argv)
    if args.command == "create":
        automation = create(args.webhook, args.deployment)
        print(f"automation {automation}: a failed or crashed run of {args.deployment} notifies the webhook "
              f"(block {BLOCK_NAME!r})")
    else:
        print(f"removed {delete(args.deployment)} automation(s) of {args.deployment}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
