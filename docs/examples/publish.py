#!/usr/bin/env python3
"""Publish TTFD events for a new platform ("minecraft") with nats-py.

    pip install nats-py msgpack
    python3 publish.py [NATS_URL] [PREFIX]

NATS_URL defaults to $TTFD_NATS_URL or nats://127.0.0.1:4222, PREFIX to $TTFD_PREFIX
or "ttfd". The streams must exist (`ttfd nats setup`). See docs/wire.md.
"""

import asyncio
import os
import sys
import time

import msgpack
import nats

NATS_URL = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("TTFD_NATS_URL", "nats://127.0.0.1:4222")
PREFIX = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("TTFD_PREFIX", "ttfd")

PLATFORM = "minecraft"  # ^[a-z][a-z0-9_-]{0,31}$, no registration needed
SERVER = "survival-1"
PLAYER = "069a79f4-44e9-4726-a5be-fca90e38aaf5"  # the player's UUID on our server


def envelope(event_id, kind, data, ts_ms, name=None):
    """One event: a MessagePack map with string keys (docs/wire.md, Envelope)."""
    event = {
        "v": 1,
        "id": event_id,
        "ts": ts_ms,  # int, Unix milliseconds: never a float
        "platform": PLATFORM,
        "user": PLAYER,
        "kind": kind,
        "data": data,
    }
    if name is not None:
        event["name"] = name
    return event


async def publish(js, event):
    subject = f"{PREFIX}.events.{event['platform']}.{event['kind']}"
    payload = msgpack.packb(event)  # str -> MessagePack str, int -> int, dict -> map
    # Nats-Msg-Id = the event id: JetStream drops a re-send within its duplicate window.
    # The await returns once JetStream has stored the event (or raises: then retry).
    ack = await js.publish(subject, payload, headers={"Nats-Msg-Id": event["id"]})
    print(f"{event['id']} -> {subject}: stream={ack.stream} seq={ack.seq} duplicate={bool(ack.duplicate)}")
    return ack


async def main():
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    try:
        # A chat line. Minecraft has no message ids, so the id is derived from the fact
        # itself (server, player, time of the line): re-reading the same server log
        # produces the same ids, and nothing is counted twice.
        chat_ts = int(time.time() * 1000)
        text = "hello from the nether"
        message = envelope(
            f"minecraft:chat:{SERVER}:{PLAYER}:{chat_ts}",
            "message",
            {"len": len(text), "chat": SERVER},
            chat_ts,
            name="Notch",
        )
        await publish(js, message)

        # The player typed `/link 4821` in game, a code shown to them by the Discord bot:
        # this identity and discord:80351110224678912 are the same person.
        link = envelope(
            f"minecraft:link:{PLAYER}:discord:80351110224678912",
            "link",
            {"platform": "discord", "user": "80351110224678912", "proof": "code"},
            int(time.time() * 1000),
        )
        await publish(js, link)

        # Sending the same event again (e.g. after a timeout) is safe: same id, same fact.
        await publish(js, message)  # duplicate=True within the 2-minute window
    finally:
        await nc.drain()


if __name__ == "__main__":
    asyncio.run(main())
