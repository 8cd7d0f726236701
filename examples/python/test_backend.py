"""The contract as a Python backend meets it, through backend.py's own publish path (aio-pika):

- a job published with a namespaced routing key is reported NotRouted, never silently lost;
- a body without job_id, published without message_id (aiormq may fill one of its own), is
  announced under no job_id at all, and an unreadable body is announced under the job_id the
  backend set in the `job_id` header;
- every job's roadmap.accepted comes before its first progress event;
- every event validates against schemas/ with format checks, and names only job_ids we issued.

Run against a running worker: AMQP_NAMESPACE=... python examples/python/test_backend.py
"""

import asyncio
import os
import sys
import uuid

from backend import Backend, NotRouted, job_body


async def main() -> int:
    ns = os.environ.get("AMQP_NAMESPACE", "roadmap")
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
    backend = Backend(url, ns, f"{ns}.contract-test-{uuid.uuid4().hex[:8]}")
    await backend.connect()
    failures = []

    # 1. A namespaced routing key reaches no queue: reported, not lost.
    lost_id = str(uuid.uuid4())
    try:
        await backend.publish(job_body(lost_id, 2), lost_id, routing_key=f"{ns}.generate")
        failures.append("a job published with a namespaced routing key was not reported")
    except NotRouted as e:
        print(f"wrong routing key reported: {e}")

    # 2. No job_id anywhere: dead-lettered, announced under no id.
    await backend.publish(b'{"user_id": "u", "target_role": "Chef", "duration_weeks": 2}')
    # 3. An unreadable body, the job_id in the header: announced under that job_id.
    unreadable_id = str(uuid.uuid4())
    await backend.publish(b"{not json", unreadable_id)
    backend.track(unreadable_id, 60)

    # 4. Jobs of one batch and of many.
    for weeks in (1, 12, 52):
        job_id = str(uuid.uuid4())
        await backend.publish(job_body(job_id, weeks), job_id)
        backend.track(job_id, 240)
    await backend.wait_all()
    await asyncio.sleep(3)  # anything announced late, or under a stray id, arrives by now
    await backend.close(delete_queue=True)

    issued = set(backend.jobs)
    for job_id, state in backend.jobs.items():
        print(f"{job_id}: {state['end']}")
    refused = backend.jobs[unreadable_id]
    if refused["end"] != "roadmap.failed" or refused["event"]["reason"] != "not_json":
        failures.append(f"the unreadable body was not announced under its header's job_id: {refused}")
    for job_id, state in backend.jobs.items():
        if job_id != unreadable_id and state["end"] != "roadmap.completed":
            failures.append(f"job {job_id} ended {state['end']}")
    for event in backend.events:
        if event.get("job_id") not in issued:
            failures.append(f"an event names a job_id we never issued: {event}")
    for job_id in issued - {unreadable_id}:
        kinds = [e["event"] for e in backend.events if e.get("job_id") == job_id]
        if not kinds or kinds[0] != "roadmap.accepted" or "roadmap.progress" not in kinds:
            failures.append(f"job {job_id}: events in order {kinds}")
    if backend.invalid:
        failures.append(f"{backend.invalid} events broke their schema")
    print(f"{len(backend.events)} events, {backend.invalid} invalid, {backend.duplicates} duplicates")
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
