"""Amazon SQS (or any SQS-compatible endpoint) through boto3: the MessageQueues port for queue
sources and queue destinations. A queue is named by its URL, or by its name (resolved once with
GetQueueUrl). Visibility timeouts and the redrive to a dead-letter queue are SQS's own: a message
the function did not process is simply not deleted."""

from __future__ import annotations

import threading

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from appliance.core.errors import ApplianceError
from appliance.core.ports import Message


class QueueUnavailable(ApplianceError):
    code = "Queue.Unavailable"
    status = 503
    retry_after = 5


class SqsQueues:
    def __init__(self, *, endpoint_url: str | None = None, region: str = "us-east-1", access_key: str | None = None,
                 secret_key: str | None = None):
        self.endpoint_url = endpoint_url
        self.region = region
        kw = {}
        if access_key and secret_key:
            kw = {"aws_access_key_id": access_key, "aws_secret_access_key": secret_key}
        # Long polls hold a connection up to 20 s: the read timeout must outlast them.
        self._sqs = boto3.client("sqs", endpoint_url=endpoint_url or None, region_name=region,
                                 config=Config(read_timeout=30, connect_timeout=5, retries={"max_attempts": 3},
                                               max_pool_connections=50), **kw)
        self._urls: dict[str, str] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings) -> SqsQueues:
        return cls(endpoint_url=settings.sqs_endpoint or None, region=settings.sqs_region or "us-east-1",
                   access_key=settings.sqs_access_key or None, secret_key=settings.sqs_secret_key or None)

    def _fail(self, what: str, queue: str, exc: Exception) -> QueueUnavailable:
        return QueueUnavailable(f"SQS {what} on {queue!r} at {self.endpoint_url or 'AWS'} failed: {exc}")

    def url(self, queue: str) -> str:
        if queue.startswith(("https://", "http://")):
            return queue
        with self._lock:
            hit = self._urls.get(queue)
        if hit:
            return hit
        try:
            url = self._sqs.get_queue_url(QueueName=queue)["QueueUrl"]
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("GetQueueUrl", queue, exc) from None
        with self._lock:
            self._urls[queue] = url
        return url

    def send(self, queue: str, body: str) -> str:
        try:
            return self._sqs.send_message(QueueUrl=self.url(queue), MessageBody=body)["MessageId"]
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("SendMessage", queue, exc) from None

    def receive(self, queue: str, max_messages: int, wait_s: float, visibility_s: int) -> list[Message]:
        try:
            out = self._sqs.receive_message(QueueUrl=self.url(queue), MaxNumberOfMessages=max_messages,
                                            WaitTimeSeconds=int(min(20, max(0, wait_s))),
                                            AttributeNames=["All"], MessageAttributeNames=["All"])
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("ReceiveMessage", queue, exc) from None
        msgs = []
        for m in out.get("Messages", []):
            attrs = m.get("Attributes", {})
            msgs.append(Message(id=m["MessageId"], receipt=m["ReceiptHandle"], body=m.get("Body", ""),
                                receive_count=int(attrs.get("ApproximateReceiveCount", "1")),
                                sent_at_ms=int(attrs.get("SentTimestamp", "0")),
                                first_receive_ms=int(attrs.get("ApproximateFirstReceiveTimestamp", "0")),
                                attributes=m.get("MessageAttributes") or {}))
        return msgs

    def delete(self, queue: str, receipts: list[str]) -> None:
        url = self.url(queue)
        for start in range(0, len(receipts), 10):
            chunk = receipts[start:start + 10]
            try:
                out = self._sqs.delete_message_batch(
                    QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(chunk)])
            except (ClientError, BotoCoreError) as exc:
                raise self._fail("DeleteMessageBatch", queue, exc) from None
            # A receipt made stale by a later receive (the message's visibility ran out) cannot delete:
            # the message is processed again (at least once). Anything else is an error.
            failed = [f for f in out.get("Failed", []) if f.get("Code") != "ReceiptHandleIsInvalid"]
            if failed:
                raise self._fail("DeleteMessageBatch", queue, Exception(failed))

    def arn(self, queue: str) -> str:
        name = self.url(queue).rstrip("/").rsplit("/", 1)[-1]
        account = self.url(queue).rstrip("/").rsplit("/", 2)[-2] if "/" in self.url(queue) else "000000000000"
        return f"arn:aws:sqs:{self.region}:{account}:{name}"
