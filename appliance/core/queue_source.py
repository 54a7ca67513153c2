"""Queue sources: triggers of kind ``queue`` that read a message queue in batches and invoke their
function with Lambda's SQS event, as a Lambda event source mapping does.

* A batch is up to ``batch_size`` (1..10) messages, gathered for up to ``batching_window_s``
  (0..20 s; 0 = what one receive returns).
* The function is invoked synchronously (trigger ``queue:<id>`` in its records). When it succeeds,
  the batch's messages are deleted; when it fails (error, timeout, throttling), none is, and each
  comes back after the queue's visibility timeout (on SQS, the queue's redrive policy moves one
  received too often to its dead-letter queue).
* With ``report_batch_item_failures`` (Lambda's ``ReportBatchItemFailures``), a handler may return
  ``{"batchItemFailures": [{"itemIdentifier": "<messageId>"}]}``: those stay, the rest are deleted. An
  identifier that is not in the batch fails the whole batch, as on Lambda.
* ``max_concurrency`` (1..20, default 2) pollers per source and process: at most that many batches
  of one source run at once here. ``faas describe`` shows each source's batches in flight.

The rules (:func:`validate`, :func:`sqs_event`, :func:`settle`) are pure; :class:`QueuePoller`
runs the pollers.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time

from appliance.core.codec import new_request_id
from appliance.core.errors import ApplianceError, ValidationError

log = logging.getLogger("appliance.queue_source")

BATCH_SIZE = (1, 10)
BATCHING_WINDOW_S = (0, 20)
MAX_CONCURRENCY = (1, 20)
VISIBILITY_TIMEOUT_S = (1, 43200)
QUEUE_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
#: How long an idle poller waits on an empty queue per receive (SQS's longest long poll).
LONG_POLL_S = 20
#: Poller threads one process runs for all queue sources together.
MAX_POLLERS = 200
#: Pause after a failed receive or invocation, so a broken queue or function is not hammered.
ERROR_PAUSE_S = 1.0


def is_url(queue: str) -> bool:
    return queue.startswith(("https://", "http://"))


def validate_queue(value, field: str = "queue") -> str:
    if isinstance(value, str) and (QUEUE_NAME_RE.match(value) or (is_url(value) and len(value) <= 2048)):
        return value
    raise ValidationError(f"{field} must be a queue name (1-80 letters, digits, '-', '_') or an SQS queue URL; "
                          f"got {value!r}", field=field)


def _int(data: dict, name: str, default: int, bounds: tuple[int, int]) -> int:
    v = data.get(name, default)
    if isinstance(v, bool) or not isinstance(v, int) or not bounds[0] <= v <= bounds[1]:
        raise ValidationError(f"{name} must be an integer from {bounds[0]} to {bounds[1]}, got {v!r}", field=name)
    return v


def validate(data: dict, base: dict | None = None) -> dict:
    """A queue trigger's settings, with defaults; ``base`` is the current trigger on an update."""
    merged = {**(base or {}), **data}
    report = merged.get("report_batch_item_failures", False)
    enabled = merged.get("enabled", True)
    for name, v in (("report_batch_item_failures", report), ("enabled", enabled)):
        if not isinstance(v, bool):
            raise ValidationError(f"{name} must be true or false", field=name)
    return {"queue": validate_queue(merged.get("queue")),
            "batch_size": _int(merged, "batch_size", 10, BATCH_SIZE),
            "batching_window_s": _int(merged, "batching_window_s", 0, BATCHING_WINDOW_S),
            "max_concurrency": _int(merged, "max_concurrency", 2, MAX_CONCURRENCY),
            "visibility_timeout_s": _int(merged, "visibility_timeout_s", 30, VISIBILITY_TIMEOUT_S),
            "report_batch_item_failures": report, "enabled": enabled}


FIELDS = ("queue", "batch_size", "batching_window_s", "max_concurrency", "visibility_timeout_s",
          "report_batch_item_failures", "enabled")


def sqs_event(messages, arn: str, region: str) -> dict:
    """Lambda's event for an SQS batch."""
    return {"Records": [{
        "messageId": m.id, "receiptHandle": m.receipt, "body": m.body,
        "attributes": {"ApproximateReceiveCount": str(m.receive_count), "SentTimestamp": str(m.sent_at_ms),
                       "SenderId": "faas-appliance", "ApproximateFirstReceiveTimestamp": str(m.first_receive_ms)},
        "messageAttributes": m.attributes or {}, "md5OfBody": _md5(m.body), "eventSource": "aws:sqs",
        "eventSourceARN": arn, "awsRegion": region} for m in messages]}


def _md5(text: str) -> str:
    import hashlib
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def settle(ids: list[str], ok: bool, result, report: bool) -> tuple[list[str], list[str]]:
    """(message ids to delete, message ids left for redrive) after one batch's invocation."""
    if not ok:
        return [], list(ids)
    if not report or not isinstance(result, dict) or "batchItemFailures" not in result:
        return list(ids), []
    failures = result["batchItemFailures"]
    if failures is None:
        return list(ids), []
    if not isinstance(failures, list):
        return [], list(ids)
    failed = set()
    for item in failures:
        ident = item.get("itemIdentifier") if isinstance(item, dict) else None
        if not isinstance(ident, str) or ident not in ids:
            return [], list(ids)  # Lambda: an invalid identifier fails the whole batch
        failed.add(ident)
    return [i for i in ids if i not in failed], [i for i in ids if i in failed]


class QueueRouter:
    """Which backend serves a queue: an SQS URL, or a name when SQS is configured, goes to SQS; any
    other name is an embedded queue."""

    def __init__(self, embedded, sqs=None):
        self.embedded = embedded
        self.sqs = sqs

    def pick(self, queue: str):
        if is_url(queue):
            if self.sqs is None:
                raise ValidationError("an SQS queue URL needs SQS settings (APPLIANCE_SQS_REGION or "
                                      "APPLIANCE_SQS_ENDPOINT)", field="queue")
            return self.sqs
        return self.sqs if self.sqs is not None else self.embedded


class _Source:
    """The pollers of one queue trigger in this process, and what they have done."""

    def __init__(self, doc: dict):
        self.doc = doc
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.in_flight = 0
        self.batches = 0
        self.deleted = 0
        self.failed = 0
        self.last_error: str | None = None
        self.lock = threading.Lock()

    def stats(self) -> dict:
        with self.lock:
            return {"id": self.doc["id"], "queue": self.doc["queue"], "max_concurrency": self.doc["max_concurrency"],
                    "batch_size": self.doc["batch_size"], "in_flight": self.in_flight, "batches": self.batches,
                    "messages_deleted": self.deleted, "messages_failed": self.failed, "last_error": self.last_error}


class QueuePoller:
    """Keeps ``max_concurrency`` poller threads per enabled queue trigger, and reconciles them with
    the stored triggers every ``interval_s``."""

    def __init__(self, triggers, router: QueueRouter, invoker, *, region: str = "local", interval_s: float = 1.0):
        self.triggers = triggers
        self.router = router
        self.invoker = invoker
        self.region = region
        self.interval_s = interval_s
        self._sources: dict[str, _Source] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def stats(self, function: str) -> list[dict]:
        return [s.stats() for s in list(self._sources.values()) if s.doc["function"] == function]

    def reconcile(self) -> None:
        want = {d["id"]: d for d in self.triggers.docs() if d.get("kind") == "queue" and d.get("enabled", True)}
        for tid, src in list(self._sources.items()):
            if tid not in want or want[tid] != src.doc:
                src.stop.set()
                del self._sources[tid]
        pollers = sum(len(s.threads) for s in self._sources.values())
        for tid, doc in sorted(want.items(), key=lambda kv: kv[1].get("created_at", 0)):
            if tid in self._sources:
                continue
            if pollers + doc["max_concurrency"] > MAX_POLLERS:
                log.warning("event=queue_source_skipped trigger=%s reason=%r", tid,
                            f"this process already runs {pollers} of at most {MAX_POLLERS} pollers")
                continue
            pollers += doc["max_concurrency"]
            src = self._sources[tid] = _Source(doc)
            for i in range(doc["max_concurrency"]):
                t = threading.Thread(target=self._poll, args=(src,), daemon=True, name=f"queue-{tid}-{i}")
                src.threads.append(t)
                t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconcile()
            except Exception:  # noqa: BLE001 - a metadata hiccup must not end the loop
                log.exception("event=queue_reconcile_failed")
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="queue-sources")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        for src in self._sources.values():
            src.stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _gather(self, src: _Source, backend) -> list:
        doc = src.doc
        size, window = doc["batch_size"], doc["batching_window_s"]
        # Short receives, so a stopped or changed source ends its pollers within a second or two.
        batch = backend.receive(doc["queue"], size, min(2, LONG_POLL_S), doc["visibility_timeout_s"])
        if not batch or window <= 0:
            return batch
        deadline = time.monotonic() + window
        while len(batch) < size and not src.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            batch += backend.receive(doc["queue"], size - len(batch), min(left, 2), doc["visibility_timeout_s"])
        # A message whose visibility timeout ran out during the window comes back: keep its newest receipt.
        return list({m.id: m for m in batch}.values())

    def _poll(self, src: _Source) -> None:
        doc = src.doc
        while not src.stop.is_set() and not self._stop.is_set():
            try:
                backend = self.router.pick(doc["queue"])
                batch = self._gather(src, backend)
                if not batch:
                    continue
                with src.lock:
                    src.in_flight += 1
                try:
                    self._process(src, backend, batch)
                finally:
                    with src.lock:
                        src.in_flight -= 1
            except ApplianceError as exc:
                with src.lock:
                    src.last_error = f"{exc.code}: {exc.message}"
                log.warning("event=queue_poll_failed trigger=%s error=%r", doc["id"], exc.message)
                src.stop.wait(ERROR_PAUSE_S)
            except Exception:  # noqa: BLE001 - a poller must outlive one bad batch
                log.exception("event=queue_poll_failed trigger=%s", doc["id"])
                src.stop.wait(ERROR_PAUSE_S)

    def _process(self, src: _Source, backend, batch) -> None:
        doc = src.doc
        event = json.dumps(sqs_event(batch, backend.arn(doc["queue"]), self.region)).encode()
        try:
            outcome = self.invoker.invoke(doc["function"], event, request_id=new_request_id(),
                                          trigger=f"queue:{doc['id']}")
            ok, result = outcome.error is None, outcome.result
            error = None if ok else f"{outcome.error.code}: {outcome.error.message}"
        except ApplianceError as exc:
            ok, result, error = False, None, f"{exc.code}: {exc.message}"
        ids = [m.id for m in batch]
        delete, failed = settle(ids, ok, result, doc["report_batch_item_failures"])
        receipts = {m.id: m.receipt for m in batch}
        if delete:
            backend.delete(doc["queue"], [receipts[i] for i in delete])
        with src.lock:
            src.batches += 1
            src.deleted += len(delete)
            src.failed += len(failed)
            if error:
                src.last_error = error[:500]
        log.info("event=queue_batch trigger=%s function=%s size=%d deleted=%d left=%d", doc["id"], doc["function"],
                 len(batch), len(delete), len(failed))
        if not ok:
            src.stop.wait(ERROR_PAUSE_S)
