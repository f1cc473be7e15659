"""AntBot (Alice): AntBuddy's voice-bot dialer, its CDR report and campaigns in, its contacts,
campaign statuses and reminder calls out.

`register` wires, from `[antbot]`: the API client (closed when the hub stops), the poller (one
service, `antbot-poll`, reporting as the `antbot` upstream; its cursor kept in the hub's store),
the rule actions `antbot.add_contact`, `antbot.campaign_status` and (with
`[antbot.reminders] calendar` and `creator`) `antbot.reminder_call`, and their admin endpoints.
See docs/ANTBOT.md.
"""

from __future__ import annotations

from functools import partial

from handlers.antbot.actions import (
    ADD_CONTACT,
    CAMPAIGN_STATUS,
    REMINDER_CALL,
    REQUIRED,
    add_contact,
    campaign_status,
    parse_reminder,
    reminder_call,
)
from handlers.antbot.client import AntBotClient
from handlers.antbot.config import AntBotConfig
from handlers.antbot.poller import SOURCE, UPSTREAM, Poller
from handlers.antbot.routes import routes
from hub.plugin import ActionSpec, Registry, public_params

__all__ = ["AntBotConfig", "register"]


def register(registry: Registry) -> None:
    config = registry.section("antbot", AntBotConfig)
    if config is None or not config.enabled:
        return
    context = registry.context
    client = AntBotClient(config.base_url, config.username, config.password, timeout=config.request_timeout,
                          token_path=config.token_path, token_fields=tuple(config.token_fields))
    client.report_to(registry.context.vendor_calls)
    registry.add_cleanup(client.aclose)
    upstream = context.upstream(UPSTREAM, kind="poll", poll_interval=config.poll_interval)
    poller = Poller(client, config, publish=context.publish, state=context.state, upstream=upstream)
    registry.claim_source(SOURCE)
    # One service under one lease: with several processes on Redis, one polls at a time.
    registry.add_service("antbot-poll", poller.run, lease=UPSTREAM)
    registry.add_action(ActionSpec(ADD_CONTACT, add_contact(client, config), idempotent=False, group="antbot",
                                   required=REQUIRED[ADD_CONTACT],
                                   describe=public_params("phonebook", "phone_number")))
    registry.add_action(ActionSpec(CAMPAIGN_STATUS, campaign_status(client, config), idempotent=True,
                                   group="antbot", required=REQUIRED[CAMPAIGN_STATUS],
                                   describe=public_params("campaign_id", "status")))
    reminders = config.reminders
    reminders_on = reminders.calendar is not None and reminders.creator is not None
    if reminders_on:
        registry.add_action(ActionSpec(REMINDER_CALL, reminder_call(client, config), idempotent=False,
                                       group="antbot", required=REQUIRED[REMINDER_CALL],
                                       describe=public_params("phone_number", "at", "delay")))
    check = partial(parse_reminder, config=config) if reminders_on else None
    for route in routes(context, check_reminder=check):
        registry.add_route(route)

    registry.add_check("antbot", client.check)
