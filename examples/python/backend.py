"""A web backend's side of roadmap-worker, to copy: publish jobs so that none can vanish, follow
them from queued to working to done, give up on each at its own deadline, validate every event
against schemas/, and de-duplicate by message_id.

    python examples/python/backend.py --jobs 3 --weeks 6

Settings: AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f) and AMQP_NAMESPACE (default
roadmap). The namespace prefixes exchange and queue names only; routing keys are always the
contract's (`roadmap.generate`, `roadmap.progress`, ...).

What it does, and why:
- Its events queue is durable (quorum) and outlives the process: a completion published while
  the backend restarts waits for it. It is bound before the first job is published.
- It connects with `connect_robust`, which reconnects and restores its channel, queue and
  consumer after a broker restart.
- Every job is published persistent, `mandatory`, on a channel with publisher confirms, with
  the job_id in the body, in the `job_id` header and as `message_id`. A returned message (no
  queue took it: a wrong routing key, or no worker has declared the queues yet) is reported as
  NotRouted: aio-pika hands a return back as a `DeliveredMessage` whose `delivery` is a
  `Basic.Return` (or raises `DeliveryError` on a channel with `on_return_raises`); both are
  checked. A confirm that does not come is an error too: publish again, same job_id.
- Each job has its own deadline, a timer that fires whether or not any event arrives; a job
  that never got `roadmap.accepted` by then is reported as still queued (no worker took it),
  one that did as working.
"""

import argparse
import asyncio
import json
import os
import pathlib
import sys
import uuid

import aio_pika
import aiormq
import jsonschema
from pamqp import commands as spec

SCHEMAS = pathlib.Path(__file__).resolve().parents[2] / "schemas"
EVENTS = ["accepted", "progress", "completed", "failed", "cancel_rejected"]
TERMINAL = {"roadmap.completed", "roadmap.failed"}


class NotRouted(Exception):
    """The broker returned the message: no queue is bound for its routing key."""


def validators():
    """One validator per event type, from the repository's JSON Schemas, formats checked."""
    out = {}
    for name in EVENTS:
        schema = json.loads((SCHEMAS / f"roadmap.{name}.v1.json").read_text())
        out[f"roadmap.{name}"] = jsonschema.Draft202012Validator(
            schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        )
    return out


class Backend:
    """One backend replica's connection to the worker fleet."""

    def __init__(self, url: str, namespace: str, queue_name: str):
        self.url, self.ns, self.queue_name = url, namespace, queue_name
        self.check = validators()
        self.jobs = {}  # job_id -> state
        self.seen = set()  # message_ids: delivery is at least once
        self.events, self.invalid, self.duplicates = [], 0, 0
        self.changed = asyncio.Event()

    async def connect(self, wait_for_worker: float = 60.0):
        self.connection = await aio_pika.connect_robust(self.url)
        # The exchanges exist once a worker ran, or `roadmap-worker declare` did.
        for attempt in range(int(wait_for_worker)):
            self.channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
            try:
                self.events_exchange = await self.channel.get_exchange(f"{self.ns}.events", ensure=True)
                self.jobs_exchange = await self.channel.get_exchange(f"{self.ns}.jobs", ensure=True)
                break
            except aio_pika.exceptions.ChannelNotFoundEntity:
                if attempt == 0:
                    print("waiting for the exchanges (run a worker, or `roadmap-worker declare`)")
                await asyncio.sleep(1)
        else:
            raise RuntimeError(f"no exchange {self.ns}.events within {wait_for_worker:.0f} s")
        self.queue = await self.channel.declare_queue(
            self.queue_name, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await self.queue.bind(self.events_exchange, routing_key="roadmap.#")
        await self.queue.consume(self.on_event)

    async def publish(self, body: bytes, job_id=None, routing_key: str = "roadmap.generate", timeout=10.0):
        """Publishes a job; raises NotRouted if no queue took it, TimeoutError without a confirm."""
        headers = {"job_id": job_id} if job_id else {}
        message = aio_pika.Message(
            body,
            content_type="application/json",
            headers=headers,
            message_id=job_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        try:
            confirm = await self.jobs_exchange.publish(
                message, routing_key=routing_key, mandatory=True, timeout=timeout
            )
        except aio_pika.exceptions.DeliveryError as e:
            raise NotRouted(f"returned by the broker: {e}") from e
        delivery = getattr(confirm, "delivery", confirm)
        if isinstance(delivery, spec.Basic.Return):
            raise NotRouted(f"returned by the broker: {delivery.reply_code} {delivery.reply_text}")
        if not isinstance(delivery, spec.Basic.Ack):
            raise RuntimeError(f"the broker did not confirm the publish: {delivery!r}")

    def track(self, job_id: str, deadline: float):
        """Follows a published job; its deadline fires on its own."""
        state = {"state": "queued", "done": 0, "total": None, "end": None}
        self.jobs[job_id] = state

        def expire():
            if state["end"] is None:
                state["end"] = "timed out while " + state["state"]
                self.changed.set()

        state["timer"] = asyncio.get_running_loop().call_later(deadline, expire)

    async def on_event(self, message: aio_pika.abc.AbstractIncomingMessage):
        async with message.process():
            if message.message_id in self.seen:
                self.duplicates += 1
                return
            self.seen.add(message.message_id)
            kind = message.routing_key
            event = json.loads(message.body)
            self.events.append(event)
            try:
                self.check[kind].validate(event)
            except (KeyError, jsonschema.ValidationError) as e:
                self.invalid += 1
                print(f"INVALID {kind}: {e}", file=sys.stderr)
            # Route on the headers: no need to parse a 320 KB body to know whose it is.
            state = self.jobs.get((message.headers or {}).get("job_id"))
            if state is None or state["end"] is not None:
                return
            if kind == "roadmap.accepted":
                state["state"] = "working"
                state["total"] = event["batches_total"]
            elif kind == "roadmap.progress":
                state["state"] = "working"
                state["done"] = max(state["done"], event["batches_done"])
                state["total"] = event["batches_total"]
            elif kind in TERMINAL:
                state["end"] = kind
                state["event"] = event
                state["timer"].cancel()
            self.changed.set()

    async def wait_all(self):
        while any(s["end"] is None for s in self.jobs.values()):
            self.changed.clear()
            await self.changed.wait()

    async def close(self, delete_queue: bool = False):
        if delete_queue:  # for tests only: a real backend's queue outlives it
            await self.queue.delete(if_unused=False, if_empty=False)
        await self.connection.close()


def job_body(job_id: str, weeks: int) -> bytes:
    return json.dumps(
        {
            "job_id": job_id,  # the canonical form: lower-case, hyphenated
            "user_id": "example-user",
            "target_role": "Data Engineer",
            "duration_weeks": weeks,
            "experience_level": "intermediate",
            "hours_per_week": 8,
            "focus_areas": ["testing"],
        }
    ).encode()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--weeks", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=300.0, help="each job's deadline, seconds")
    parser.add_argument("--queue", default=None, help="this backend's events queue")
    parser.add_argument("--delete-queue", action="store_true", help="delete the queue at exit (tests)")
    args = parser.parse_args()

    ns = os.environ.get("AMQP_NAMESPACE", "roadmap")
    backend = Backend(
        os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
        ns,
        args.queue or f"{ns}.example-backend",
    )
    await backend.connect()
    for _ in range(args.jobs):
        job_id = str(uuid.uuid4())
        for attempt in range(30):
            try:
                await backend.publish(job_body(job_id, args.weeks), job_id)
                break
            except (NotRouted, asyncio.TimeoutError, aiormq.exceptions.AMQPError) as e:
                print(f"job {job_id} not taken ({e}); publishing again", file=sys.stderr)
                await asyncio.sleep(1)
        else:
            print(f"no queue took job {job_id} within 30 tries", file=sys.stderr)
            return 1
        backend.track(job_id, args.timeout)
        print(f"published {job_id}")
    await backend.wait_all()
    await backend.close(delete_queue=args.delete_queue)

    completed = 0
    for job_id, state in backend.jobs.items():
        print(f"{job_id}: {state['end']} ({state['done']}/{state['total']} batches)")
        if state["end"] == "roadmap.completed":
            weeks = state["event"]["roadmap"]["weeks"]
            assert [w["number"] for w in weeks] == list(range(1, args.weeks + 1))
            completed += 1
    print(
        f"{completed} of {len(backend.jobs)} jobs completed, {len(backend.seen)} events, "
        f"{backend.invalid} invalid, {backend.duplicates} duplicates dropped"
    )
    return 0 if completed == len(backend.jobs) and backend.invalid == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
