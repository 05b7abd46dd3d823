"""Checks nats/accounts.conf against a real nats-server (started by test-permissions.sh).

Each role's user does what that role's client does (the same JetStream API subjects,
consumer names and acks) and must succeed; then it tries what it must not do (another
platform's events, another role's consumer, deleting a stream, listening to events)
and the server must refuse. Prints `N passed, M failed` and exits non-zero on failure.

Usage: python3 nats/permissions_test.py <nats url> <nats dir>
Passwords come from TTFD_NATS_<ROLE>_PASSWORD, as for the server.
"""

import asyncio
import json
import os
import sys
from pathlib import Path

import nats
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout

URL = sys.argv[1]
NATS_DIR = Path(sys.argv[2])
TIMEOUT = 2.0
results = {"passed": 0, "failed": 0}


async def scans(role, name):
    """A member's export: an unnamed ephemeral consumer that acks nothing, read by its
    server-given name; the shared consumer stays out of reach."""
    created = await role.api("$JS.API.CONSUMER.CREATE.TTFD_EVENTS", {
        "stream_name": "TTFD_EVENTS",
        "config": {"deliver_policy": "all", "ack_policy": "none",
                   "filter_subject": "ttfd.events.website.*", "inactive_threshold": 10_000_000_000},
    })
    consumer = (created or {}).get("name")
    check(f"{name} creates a scan consumer on the events stream", bool(consumer), str(created))
    if consumer:
        info = await role.api(f"$JS.API.CONSUMER.INFO.TTFD_EVENTS.{consumer}")
        check(f"{name} reads its scan consumer's info", info and "config" in info, str(info))
        msg = await role.pull_one("TTFD_EVENTS", consumer)
        check(f"{name} reads the events stream through its scan", msg is not None, "no message")
    check(f"{name} may not pull from the shared consumer",
          await role.refused_publish("$JS.API.CONSUMER.MSG.NEXT.TTFD_EVENTS.ttfd-sync"))
    check(f"{name} may not create a named consumer",
          await role.refused_publish("$JS.API.CONSUMER.CREATE.TTFD_EVENTS.ttfd-sync"))


def check(name, ok, detail=""):
    results["passed" if ok else "failed"] += 1
    print(f"{'ok  ' if ok else 'FAIL'} {name}{'' if ok else ': ' + detail}")


class Role:
    """One connection as one user, collecting the permission errors the server sends."""

    def __init__(self, user):
        self.user = user
        self.errors = []
        self.nc = None

    async def __aenter__(self):
        async def on_error(e):
            self.errors.append(str(e))

        role = self.user.removeprefix("ttfd-").upper()
        self.nc = await nats.connect(
            URL,
            user=self.user,
            password=os.environ[f"TTFD_NATS_{role}_PASSWORD"],
            error_cb=on_error,
            # As ttfd connects: replies under the user's own inbox prefix.
            inbox_prefix=f"_INBOX.{self.user}",
            allow_reconnect=False,
            connect_timeout=TIMEOUT,
        )
        return self

    async def __aexit__(self, *exc):
        await self.nc.close()

    async def violation(self, needle):
        """Whether the server refused something naming `needle` (waited for briefly:
        the -ERR is processed before the flush's PONG, the callback runs just after)."""
        await self.nc.flush(timeout=TIMEOUT)
        for _ in range(50):
            # nats-py lower-cases the server's message.
            if any("permissions" in e.lower() and needle.lower() in e.lower() for e in self.errors):
                return True
            await asyncio.sleep(0.02)
        return False

    async def api(self, subject, body=b""):
        """A JetStream API request; the decoded reply, or None when nothing answered."""
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        try:
            reply = await self.nc.request(subject, body, timeout=TIMEOUT)
        except (NatsTimeout, NoRespondersError):
            return None
        return json.loads(reply.data) if reply.data else {}

    async def js_publish(self, subject, msg_id, data=b"x"):
        """A JetStream publish as async-nats sends it: the stored-ack, or None."""
        try:
            reply = await self.nc.request(
                subject, data, timeout=TIMEOUT, headers={"Nats-Msg-Id": msg_id}
            )
        except (NatsTimeout, NoRespondersError):
            return None
        return json.loads(reply.data)

    async def pull_one(self, stream, consumer):
        """One message from a pull consumer (MSG.NEXT to an inbox), or None."""
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        await self.nc.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
            json.dumps({"batch": 1, "expires": 1_000_000_000}).encode(),
            reply=inbox,
        )
        try:
            while True:
                msg = await sub.next_msg(timeout=TIMEOUT)
                if msg.reply and msg.reply.startswith("$JS.ACK."):
                    return msg
                # Status messages (404 no messages, 408 timeout) carry no ack subject.
                if msg.headers and msg.headers.get("Status") in ("404", "408"):
                    return None
        except NatsTimeout:
            return None
        finally:
            await sub.unsubscribe()

    async def refused_publish(self, subject):
        await self.nc.publish(subject, b"x")
        return await self.violation(subject)

    async def refused_subscribe(self, subject):
        await self.nc.subscribe(subject)
        return await self.violation(subject)


def definition(name):
    return json.loads((NATS_DIR / name).read_text())


async def main():
    # Provisioning, as `ttfd nats setup` does, with the operators' user.
    async with Role("ttfd-ops") as ops:
        for file in ("events.stream.json", "notify.stream.json", "dlq.stream.json"):
            config = definition(file)
            reply = await ops.api(f"$JS.API.STREAM.CREATE.{config['name']}", config)
            check(f"ops creates stream {config['name']}", reply and "error" not in reply, str(reply))
        consumer = definition("sync.consumer.json")
        reply = await ops.api(
            f"$JS.API.CONSUMER.CREATE.TTFD_EVENTS.ttfd-sync.{consumer['filter_subject']}",
            {"stream_name": "TTFD_EVENTS", "config": consumer},
        )
        check("ops creates consumer ttfd-sync", reply and "error" not in reply, str(reply))

    async def quiet(_error):
        pass

    try:
        await nats.connect(URL, user="ttfd-web", password="wrong", allow_reconnect=False,
                           connect_timeout=TIMEOUT, error_cb=quiet)
        check("a wrong password is refused", False, "connected")
    except Exception:  # noqa: BLE001 - any refusal will do
        check("a wrong password is refused", True)

    async with Role("ttfd-web") as web:
        ack = await web.js_publish("ttfd.events.website.message", "website:perm-1")
        check("web publishes website events", ack and ack.get("stream") == "TTFD_EVENTS", str(ack))
        info = await web.api("$JS.API.STREAM.INFO.TTFD_EVENTS")
        check("web reads the events stream info (readiness)", info and "config" in info, str(info))
        check("web may not publish discord events", await web.refused_publish("ttfd.events.discord.message"))
        check("web's ingest may not publish website link events",
              await web.refused_publish("ttfd.events.website.link"))
        ack = await web.js_publish("ttfd.events.discord.xp", "mod:xp:perm-web-1")
        check("web publishes the admin page's xp events",
              ack and ack.get("stream") == "TTFD_EVENTS", str(ack))
        ack = await web.js_publish("ttfd.events.telegram.unlink", "mod:unlink:perm-web-1")
        check("web publishes the admin page's unlink events",
              ack and ack.get("stream") == "TTFD_EVENTS", str(ack))
        await scans(web, "web")
        check("web may not publish notifications", await web.refused_publish("ttfd.notify.rank"))
        check("web may not delete the events stream",
              await web.refused_publish("$JS.API.STREAM.DELETE.TTFD_EVENTS"))
        check("web may not listen to events", await web.refused_subscribe("ttfd.events.>"))

    async with Role("ttfd-query") as query, Role("ttfd-discord") as discord, \
            Role("ttfd-sync") as sync, Role("ttfd-telegram") as telegram:
        # The query service answers in its queue group; its reply goes through only as
        # the response to a request it received.
        async def answer(msg):
            await msg.respond(b"pong:" + msg.data)

        await query.nc.subscribe("ttfd.query.>", queue="ttfd-query", cb=answer)
        await query.nc.flush()
        # The service's subscription can reach the bots' connections a moment after its
        # flush (a run saw "no responders"): wait until one can ask, then check.
        for _ in range(50):
            try:
                await discord.nc.request("ttfd.query.profile", b"ready", timeout=TIMEOUT)
                break
            except NoRespondersError:
                await asyncio.sleep(0.05)
        try:
            reply = await discord.nc.request("ttfd.query.profile", b"d", timeout=TIMEOUT)
            check("discord asks the query service and gets the answer", reply.data == b"pong:d")
        except Exception as e:  # noqa: BLE001
            check("discord asks the query service and gets the answer", False, repr(e))
        try:
            reply = await telegram.nc.request("ttfd.query.top", b"t", timeout=TIMEOUT)
            check("telegram asks the query service and gets the answer", reply.data == b"pong:t")
        except Exception as e:  # noqa: BLE001
            check("telegram asks the query service and gets the answer", False, repr(e))
        for role, own, other in ((discord, "discord", "telegram"), (telegram, "telegram", "discord")):
            try:
                reply = await role.nc.request(f"ttfd.query.as.{own}.link.issue", b"c", timeout=TIMEOUT)
                check(f"{own} issues link codes for its own members", reply.data == b"pong:c")
            except Exception as e:  # noqa: BLE001
                check(f"{own} issues link codes for its own members", False, repr(e))
            check(f"{own} may not act for {other} members",
                  await role.refused_publish(f"ttfd.query.as.{other}.link.redeem"))
            check(f"{own} may not ask unscoped acting queries",
                  await role.refused_publish("ttfd.query.link.issue"))
            check(f"{own} may not read {other}'s replies",
                  await role.refused_subscribe(f"_INBOX.ttfd-{other}.>"))
            check(f"{own} may not read the default inbox",
                  await role.refused_subscribe("_INBOX.>"))
        check("query may not publish activity events",
              await query.refused_publish("ttfd.events.discord.message"))
        check("query may not publish links", await query.refused_publish("ttfd.events.discord.link"))
        ack = await query.js_publish("ttfd.events.discord.xp", "mod:xp:perm-1")
        check("query publishes the moderators' xp events",
              ack and ack.get("stream") == "TTFD_EVENTS", str(ack))
        ack = await query.js_publish("ttfd.events.telegram.unlink", "mod:unlink:perm-1")
        check("query publishes the moderators' unlink events",
              ack and ack.get("stream") == "TTFD_EVENTS", str(ack))
        ack = await query.js_publish("ttfd.events.telegram.forget", "mod:forget:perm-1")
        check("query publishes the members' erasures (/gdpr delete)",
              ack and ack.get("stream") == "TTFD_EVENTS", str(ack))
        await scans(query, "query")
        check("query may not publish to an arbitrary inbox",
              await query.refused_publish("_INBOX.somebody-else"))
        check("query may not listen to events", await query.refused_subscribe("ttfd.events.>"))

        # Discord: its own events, its own durable consumer on rank notices.
        ack = await discord.js_publish("ttfd.events.discord.message", "discord:perm-1")
        check("discord publishes discord events", ack and ack.get("seq"), str(ack))
        check("discord may not publish telegram events",
              await discord.refused_publish("ttfd.events.telegram.message"))
        check("discord may not publish website events",
              await discord.refused_publish("ttfd.events.website.message"))
        for kind in ("xp", "game", "link", "forget"):
            check(f"discord may not publish its own {kind} events",
                  await discord.refused_publish(f"ttfd.events.discord.{kind}"))
        ack = await discord.js_publish("ttfd.events.discord.prefs", "discord:prefs:perm-1")
        check("discord publishes its members' prefs (/notify)", ack and ack.get("seq"), str(ack))
        check("discord may not publish telegram prefs",
              await discord.refused_publish("ttfd.events.telegram.prefs"))
        ack = await discord.js_publish("ttfd.events.discord.voice_unpaid", "discord:unpaid:perm-1")
        check("discord publishes voice time that paid nothing", ack and ack.get("seq"), str(ack))
        check("telegram may not publish voice time",
              await telegram.refused_publish("ttfd.events.telegram.voice_unpaid"))
        for role, own in ((discord, "discord"), (telegram, "telegram")):
            try:
                reply = await role.nc.request("ttfd.query.statement", b"s", timeout=TIMEOUT)
                check(f"{own} asks for a member's XP statement", reply.data == b"pong:s")
            except Exception as e:  # noqa: BLE001
                check(f"{own} asks for a member's XP statement", False, repr(e))
        info = await discord.api("$JS.API.STREAM.INFO.TTFD_NOTIFY")
        check("discord reads the notify stream info", info and "config" in info, str(info))
        created = await discord.api(
            "$JS.API.CONSUMER.CREATE.TTFD_NOTIFY.ttfd-discord-roles.ttfd.notify.rank",
            {"stream_name": "TTFD_NOTIFY", "config": {
                "durable_name": "ttfd-discord-roles", "filter_subject": "ttfd.notify.rank",
                "ack_policy": "explicit", "deliver_policy": "all"}},
        )
        check("discord creates its consumer ttfd-discord-roles",
              created and "error" not in created, str(created))
        check("discord may not create a consumer on the events stream",
              await discord.refused_publish("$JS.API.CONSUMER.CREATE.TTFD_EVENTS.sneaky.ttfd.events.>"))
        check("discord may not pull from the sync consumer",
              await discord.refused_publish("$JS.API.CONSUMER.MSG.NEXT.TTFD_EVENTS.ttfd-sync"))
        check("discord may not pull from telegram's consumer",
              await discord.refused_publish("$JS.API.CONSUMER.MSG.NEXT.TTFD_NOTIFY.ttfd-telegram-rank"))
        check("discord may not listen to notifications directly",
              await discord.refused_subscribe("ttfd.notify.>"))

        # Sync: consumes, dead-letters, relays notifications, and acks.
        msg = await sync.pull_one("TTFD_EVENTS", "ttfd-sync")
        check("sync pulls from ttfd-sync", msg is not None, "no message")
        if msg is not None:
            await msg.ack()
            check("sync acks", not await sync.violation("$JS.ACK"), str(sync.errors))
        ack = await sync.js_publish("ttfd.dlq.website.message", "dlq:1")
        check("sync dead-letters", ack and ack.get("stream") == "TTFD_DLQ", str(ack))
        ack = await sync.js_publish("ttfd.notify.rank", "rank:1")
        check("sync publishes rank notices", ack and ack.get("stream") == "TTFD_NOTIFY", str(ack))
        ack = await sync.js_publish("ttfd.events.telegram.link", "telegram:link:1")
        check("sync relays outbox links of any platform", ack and ack.get("seq"), str(ack))
        ack = await sync.js_publish("ttfd.events.discord.forget", "web:forget:1")
        check("sync relays the website's erasures", ack and ack.get("seq"), str(ack))
        ack = await sync.js_publish("ttfd.events.discord.xp", "season:winter:1")
        check("sync relays a closed season's rewards (admitted only as season:.. from the relay)",
              ack and ack.get("seq"), str(ack))
        for subject in ("ttfd.events.telegram.message", "ttfd.events.discord.unlink",
                        "ttfd.events.discord.game"):
            check(f"sync publishes no other event ({subject})", await sync.refused_publish(subject))
        check("sync may not delete streams",
              await sync.refused_publish("$JS.API.STREAM.DELETE.TTFD_EVENTS"))
        check("sync may not serve queries", await sync.refused_subscribe("ttfd.query.>"))

        # Discord reads the rank notice through its consumer and acks it.
        msg = await discord.pull_one("TTFD_NOTIFY", "ttfd-discord-roles")
        check("discord pulls a rank notice from its consumer", msg is not None, "no message")
        if msg is not None:
            await msg.ack()
            check("discord acks it", not await discord.violation("$JS.ACK"), str(discord.errors))

        # Telegram: its events, its consumer, its key-value bucket.
        ack = await telegram.js_publish("ttfd.events.telegram.message", "telegram:perm-1")
        check("telegram publishes telegram events", ack and ack.get("seq"), str(ack))
        check("telegram may not publish discord events",
              await telegram.refused_publish("ttfd.events.discord.message"))
        for kind in ("xp", "game", "link"):
            check(f"telegram may not publish its own {kind} events",
                  await telegram.refused_publish(f"ttfd.events.telegram.{kind}"))
        created = await telegram.api(
            "$JS.API.CONSUMER.CREATE.TTFD_NOTIFY.ttfd-telegram-rank.ttfd.notify.rank",
            {"stream_name": "TTFD_NOTIFY", "config": {
                "durable_name": "ttfd-telegram-rank", "filter_subject": "ttfd.notify.rank",
                "ack_policy": "explicit", "deliver_policy": "new"}},
        )
        check("telegram creates its consumer ttfd-telegram-rank",
              created and "error" not in created, str(created))
        bucket = await telegram.api("$JS.API.STREAM.CREATE.KV_TTFD_TELEGRAM_STARTED", {
            "name": "KV_TTFD_TELEGRAM_STARTED", "subjects": ["$KV.TTFD_TELEGRAM_STARTED.>"],
            "max_msgs_per_subject": 1, "storage": "file", "discard": "new",
            "allow_rollup_hdrs": True, "deny_delete": True, "allow_direct": True,
            "num_replicas": 1, "retention": "limits"})
        check("telegram creates its key-value bucket", bucket and "error" not in bucket, str(bucket))
        ack = await telegram.js_publish("$KV.TTFD_TELEGRAM_STARTED.42", "kv:42", b"1700000000000")
        check("telegram writes to its bucket", ack and ack.get("stream") == "KV_TTFD_TELEGRAM_STARTED",
              str(ack))
        try:
            got = await telegram.nc.request(
                "$JS.API.DIRECT.GET.KV_TTFD_TELEGRAM_STARTED.$KV.TTFD_TELEGRAM_STARTED.42",
                b"", timeout=TIMEOUT)
            check("telegram reads its bucket (direct get)", got.data == b"1700000000000", repr(got.data))
        except Exception as e:  # noqa: BLE001
            check("telegram reads its bucket (direct get)", False, repr(e))
        check("telegram may not create other streams",
              await telegram.refused_publish("$JS.API.STREAM.CREATE.ANYTHING"))
        check("discord may not write telegram's bucket",
              await discord.refused_publish("$KV.TTFD_TELEGRAM_STARTED.43"))

    print(f"{results['passed']} passed, {results['failed']} failed")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
