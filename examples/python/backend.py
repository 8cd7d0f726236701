"""A web backend's side of roadmap-worker, to copy: publish jobs, follow their progress, wait
for each result, validate every event against schemas/, and de-duplicate by message_id.

    python examples/python/backend.py --jobs 3 --weeks 6

Settings: AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f) and AMQP_NAMESPACE (default
roadmap, the contract's names). The worker declares the exchanges; a backend declares its own
durable queue bound to the events exchange with `roadmap.#` before its first job, so that no
completion is published while nothing would take it.
"""

import argparse
import asyncio
import json
import os
import pathlib
import sys
import uuid

import aio_pika
import jsonschema

SCHEMAS = pathlib.Path(__file__).resolve().parents[2] / "schemas"
TERMINAL = {"roadmap.completed", "roadmap.failed"}


def validators():
    """One validator per event type, from the repository's JSON Schemas (draft 2020-12)."""
    out = {}
    for name in ["roadmap.completed", "roadmap.failed", "roadmap.progress", "roadmap.cancel_rejected"]:
        schema = json.loads((SCHEMAS / f"{name}.v1.json").read_text())
        out[name] = jsonschema.Draft202012Validator(
            schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        )
    return out


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--weeks", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()

    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
    ns = os.environ.get("AMQP_NAMESPACE", "roadmap")
    check = validators()

    connection = await aio_pika.connect_robust(url)
    async with connection:
        # The worker declares the exchanges at its start; a backend that comes up first waits.
        for attempt in range(60):
            # A job the broker returns (no queue bound for it yet) raises instead of vanishing.
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            try:
                events = await channel.get_exchange(f"{ns}.events", ensure=True)
                jobs_exchange = await channel.get_exchange(f"{ns}.jobs", ensure=True)
                break
            except aio_pika.exceptions.ChannelNotFoundEntity:
                if attempt == 0:
                    print("waiting for a worker to declare the exchanges")
                await asyncio.sleep(1)
        else:
            print("no worker declared the exchanges within 60 s", file=sys.stderr)
            return 1
        # Our own durable queue, bound before the first job. Quorum queues survive a broker
        # node's loss; any queue type works.
        queue = await channel.declare_queue(
            f"{ns}.example-backend", durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.bind(events, routing_key="roadmap.#")

        pending = {}
        for _ in range(args.jobs):
            # The canonical form: lower-case, hyphenated. Events carry it that way.
            job_id = str(uuid.uuid4())
            body = {
                "job_id": job_id,
                "user_id": "example-user",
                "target_role": "Data Engineer",
                "duration_weeks": args.weeks,
                "experience_level": "intermediate",
                "hours_per_week": 8,
                "focus_areas": ["testing"],
            }
            message = aio_pika.Message(
                json.dumps(body).encode(),
                content_type="application/json",
                message_id=job_id,  # a refusal can then still name the job
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            # Mandatory: a job that no queue takes (the worker is still declaring its queues)
            # comes back as an error; publish it again shortly rather than lose it.
            for _ in range(30):
                try:
                    await jobs_exchange.publish(message, routing_key="roadmap.generate", mandatory=True)
                    break
                except aio_pika.exceptions.DeliveryError as e:
                    print(f"job {job_id} not taken ({e}); publishing again", file=sys.stderr)
                    await asyncio.sleep(1)
            else:
                print(f"no queue took job {job_id} within 30 s", file=sys.stderr)
                return 1
            pending[job_id] = {"done": 0, "total": None}
            print(f"published {job_id}")

        seen = set()  # message_ids: delivery is at least once
        results, invalid, duplicates = {}, 0, 0
        # The deadline holds even when no event comes at all.
        try:
            async with asyncio.timeout(args.timeout):
                async with queue.iterator() as messages:
                    async for message in messages:
                        async with message.process():
                            if message.message_id in seen:
                                duplicates += 1
                                continue
                            seen.add(message.message_id)
                            kind = message.routing_key
                            event = json.loads(message.body)
                            try:
                                check[kind].validate(event)
                            except (KeyError, jsonschema.ValidationError) as e:
                                invalid += 1
                                print(f"INVALID {kind}: {e}", file=sys.stderr)
                            # Route on the headers: no need to parse a 320 KB body to know whose it is.
                            job_id = (message.headers or {}).get("job_id")
                            if job_id not in pending:
                                continue
                            if kind == "roadmap.progress":
                                state = pending[job_id]
                                state["done"] = max(state["done"], event["batches_done"])
                                state["total"] = event["batches_total"]
                                print(f"{job_id}: {state['done']}/{state['total']} batches")
                            elif kind in TERMINAL:
                                results[job_id] = event
                                print(f"{job_id}: {kind}")
                        if len(results) == len(pending):
                            break
        except TimeoutError:
            print(f"timed out after {args.timeout:.0f} s", file=sys.stderr)
        await queue.delete(if_unused=False, if_empty=False)

    completed = [e for e in results.values() if e["event"] == "roadmap.completed"]
    print(
        f"{len(completed)} of {len(pending)} jobs completed, {len(seen)} events, "
        f"{invalid} invalid, {duplicates} duplicates dropped"
    )
    ok = len(completed) == len(pending) and invalid == 0
    for event in completed:
        weeks = event["roadmap"]["weeks"]
        assert [w["number"] for w in weeks] == list(range(1, args.weeks + 1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
