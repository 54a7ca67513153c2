"""The asynchronous-event queue on SQS (cluster mode, or any mode with APPLIANCE_SQS_ASYNC_QUEUE):
an accepted event is an SQS message, so any appliance process (every edge router and control
plane with the same settings) may run it, and ``kill -9`` of the process that accepted it loses
nothing: SQS keeps it.

* accept: SendMessage, answered only once SQS has stored the message;
* claim: ReceiveMessage with a visibility timeout of ``visibility_s`` (longer than any attempt:
  900 s of function timeout and the wait for an instance). A process that dies mid-attempt leaves
  the message to reappear after it, and another process runs it again;
* retry: SendMessage of the event with its counters and ``DelaySeconds`` = the backoff (at most
  SQS's 900 s), then DeleteMessage of the old one (a crash in between runs that attempt twice);
* success or dead: the destination delivery is stored in the local ledger first, then the message
  is deleted.

The local ledger (:class:`SqliteEventQueue`) keeps what this process accepted and ran, for
``faas events`` and for destination deliveries; SQS cannot list its messages. In cluster mode
``faas events`` therefore shows the events of the process that answers the API.
"""

from __future__ import annotations

import base64
import json
import math
import threading

from botocore.exceptions import BotoCoreError, ClientError

from appliance.core.ports import QueuedEvent

#: SQS's longest DelaySeconds.
MAX_DELAY_S = 900


class SqsEventQueue:
    def __init__(self, sqs, queue: str, ledger, *, visibility_s: int = 960, clock=None):
        self.sqs = sqs                    # appliance.backends.sqs_queue.SqsQueues
        self.queue = queue
        self.ledger = ledger
        self.visibility_s = visibility_s
        self._clock = clock or ledger._clock
        self._receipts: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def _client(self):
        return self.sqs._sqs

    def _url(self) -> str:
        return self.sqs.url(self.queue)

    def _send(self, e: QueuedEvent, delay_s: float = 0) -> None:
        body = {"id": e.id, "function": e.function, "payload": base64.b64encode(e.payload).decode(),
                "created_at": e.created_at, "attempts": e.attempts, "failures": e.failures, "source": e.source}
        try:
            self._client.send_message(QueueUrl=self._url(), MessageBody=json.dumps(body),
                                      DelaySeconds=int(min(MAX_DELAY_S, max(0, math.ceil(delay_s)))))
        except (ClientError, BotoCoreError) as exc:
            raise self.sqs._fail("SendMessage", self.queue, exc) from None

    # -- EventQueue port ------------------------------------------------------------------

    def put(self, event: QueuedEvent) -> bool:
        if self.ledger.get(event.id) is not None:
            return False
        self._send(event)
        self.ledger.put(event)
        return True

    def claim(self, now, limit, busy, caps) -> list[QueuedEvent]:
        if limit <= 0:
            return []
        try:
            out = self._client.receive_message(QueueUrl=self._url(), MaxNumberOfMessages=min(10, limit),
                                               WaitTimeSeconds=0, VisibilityTimeout=self.visibility_s)
        except (ClientError, BotoCoreError) as exc:
            raise self.sqs._fail("ReceiveMessage", self.queue, exc) from None
        events, taken = [], {}
        for m in out.get("Messages", []):
            try:
                b = json.loads(m["Body"])
                e = QueuedEvent(id=b["id"], function=b["function"], payload=base64.b64decode(b["payload"]),
                                created_at=b["created_at"], state="running", attempts=b["attempts"] + 1,
                                failures=b["failures"], source=b.get("source") or "api", updated_at=now)
            except (ValueError, KeyError, TypeError):
                self._delete(m["ReceiptHandle"])  # not an event of ours: it would come back forever
                continue
            if busy.get(e.function, 0) + taken.get(e.function, 0) >= caps(e.function):
                self._release(m["ReceiptHandle"])  # at its share: leave it to another pass
                continue
            taken[e.function] = taken.get(e.function, 0) + 1
            with self._lock:
                self._receipts[e.id] = m["ReceiptHandle"]
            self.ledger.track(e)
            events.append(e)
        return events

    def _release(self, receipt: str) -> None:
        try:
            self._client.change_message_visibility(QueueUrl=self._url(), ReceiptHandle=receipt, VisibilityTimeout=1)
        except (ClientError, BotoCoreError):
            pass  # it comes back after the visibility timeout instead

    def _delete(self, receipt: str) -> None:
        try:
            self._client.delete_message(QueueUrl=self._url(), ReceiptHandle=receipt)
        except (ClientError, BotoCoreError) as exc:
            raise self.sqs._fail("DeleteMessage", self.queue, exc) from None

    def finish(self, event_id, state, *, now, available_at=0.0, failures=0, error=None, destination=None) -> None:
        with self._lock:
            receipt = self._receipts.pop(event_id, None)
        e = self.ledger.get(event_id)
        if state == "retrying" and e is not None:
            e.failures = failures
            self._send(e, delay_s=available_at - now)
        # The ledger first: a destination is durable on this disk before SQS forgets the event.
        self.ledger.finish(event_id, state, now=now, available_at=available_at, failures=failures, error=error,
                           destination=destination)
        if receipt is not None:
            self._delete(receipt)

    def recover(self, now) -> int:
        return self.ledger.recover(now)  # SQS redelivers what was running; the ledger only shows it

    def next_due(self):
        return None  # SQS is asked on every pass of the dispatcher

    def get(self, event_id):
        return self.ledger.get(event_id)

    def list(self, function, *, state=None, limit=50):
        return self.ledger.list(function, state=state, limit=limit)

    def counts(self, function=None):
        return self.ledger.counts(function)

    def deliveries(self, limit):
        return self.ledger.deliveries(limit)

    def complete_delivery(self, delivery_id, *, event=None, message=None, error=None) -> None:
        if event is not None:  # a function destination: an event of that function, on SQS
            self.put(event)
        self.ledger.complete_delivery(delivery_id, message=message, error=error)

    def close(self) -> None:
        self.ledger.close()
