"""Settings: one validated, frozen object built from ``APPLIANCE_*`` variables.

Each field maps to one variable, ``APPLIANCE_<FIELD>`` (``edge_port`` -> ``APPLIANCE_EDGE_PORT``).
``APPLIANCE_SETTINGS`` may name a ``KEY=VALUE`` file read first; the environment overrides it.
Invalid values stop start-up with a message naming the variable and what it accepts.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

from appliance.core.errors import ValidationError

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Settings whose values are credentials: never shown in messages or reprs.
SECRET_FIELDS = frozenset({"internal_token", "admin_token", "secrets_key", "nomad_token", "consul_token",
                           "instance_consul_token", "s3_secret_key"})


@dataclass(frozen=True)
class Settings:
    #: local (embedded: processes on this host, SQLite, files) or cluster (Nomad, Consul, S3).
    mode: str = "local"
    #: Address the edge router and the control-plane API listen on, unless edge_host / api_host say.
    host: str = "127.0.0.1"
    #: Address of the edge router (HTTP triggers) alone; empty: host.
    edge_host: str = ""
    #: Address of the control-plane API alone; empty: host. Keep it private: exposing the edge
    #: does not need exposing the API.
    api_host: str = ""
    #: Host names the control API answers to (comma-separated; ``*`` for any). Empty: the loopback
    #: names and the addresses it listens on (DNS rebinding sends a foreign name and is refused).
    allowed_hosts: str = ""
    #: The credential edges and control planes use between themselves (the edge's /_/ paths but
    #: health and readiness). Empty: embedded mode generates <data_dir>/internal.token; cluster mode
    #: shares one through the metadata store. Set it in cluster mode (Ansible does).
    internal_token: str = dataclasses.field(default="", repr=False)
    #: Cluster mode: the admin token's plaintext or ``sha256:<hex>`` of it, seeded into the token
    #: store at start (embedded mode writes <data_dir>/admin.token instead).
    admin_token: str = dataclasses.field(default="", repr=False)
    #: Key of the function secrets' encryption (a Fernet key: 32 url-safe base64 bytes). Empty:
    #: embedded mode keeps one in <data_dir>/secrets.key; cluster mode must set it to store secrets.
    secrets_key: str = dataclasses.field(default="", repr=False)
    #: Seconds a token lookup is cached (a revoked token stops working within this).
    token_cache_s: float = 1.0
    edge_port: int = 8080
    api_port: int = 8081
    #: Where the embedded mode keeps its databases, code packages, unpacked code and logs.
    data_dir: str = ".faas"
    runtimes_dir: str = str(REPO_ROOT / "runtimes")
    #: Longest a request waits for an instance (free slot or cold start) before 503 + Retry-After.
    queue_timeout_s: float = 10.0
    #: Requests that may wait per function before 429.
    max_queue: int = 100
    #: Longest one instance may take from placement to ready.
    start_timeout_s: float = 30.0
    max_code_bytes: int = 50 << 20
    max_unpacked_bytes: int = 250 << 20
    max_files: int = 5000
    #: Largest request body an HTTP trigger or invoke accepts (Lambda's synchronous limit).
    max_event_bytes: int = 6 << 20
    #: Connections, on both ports: a request's headers must arrive within header_timeout_s of its
    #: first byte (an idle keep-alive connection is closed after as long) and its body within
    #: body_timeout_s more (408 Request.Timeout on the edge). The control API also takes at most
    #: max_connections at once and max_connections_per_client from one address (0: no bound; for
    #: deployments behind a proxy or load balancer, where every client has its address).
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_connections: int = 1000
    max_connections_per_client: int = 100
    #: Largest result a function may return (Lambda's synchronous limit); over it the request gets
    #: 502 Function.ResponseTooLarge. The instance's reply may carry its logs besides (1 MiB more).
    max_reply_bytes: int = 6 << 20
    #: Bytes of an instance's own output (stdout, stderr) kept per log file; past it the file is
    #: rotated once (<id>.log.1), so an instance keeps at most twice this on disk.
    instance_log_bytes: int = 10 << 20
    #: Snapshot templates (appliance/instances/templates.py): their memory across the host, least
    #: recently used dropped first, and how long an idle one is kept (longer than instances, whose
    #: cold starts it serves).
    snapshot_budget_mb: int = 1024
    snapshot_keep_s: float = 600.0
    #: Seconds between keep-alive sweeps (idle instance reclaiming, min_instances upkeep).
    reap_interval_s: float = 1.0
    #: Autoscaling (docs/autoscaling.md): seconds of history averaged in stable mode and to detect
    #: a burst, the share of each instance's concurrency to fill, and the largest scale-up factor
    #: per decision. Per-function settings (concurrency, min/max, keep-alive) come from the function.
    stable_window_s: float = 60.0
    panic_window_s: float = 6.0
    target_utilisation: float = 0.7
    max_scale_up_rate: float = 10.0
    #: Seconds function settings and routes may be served from cache (other control planes' writes).
    metadata_cache_s: float = 1.0
    #: Invocation records kept per edge: at most this many, this old, and this many bytes in all
    #: and per function (the oldest go first). Usage is metered apart and is not pruned with them.
    records_retention: int = 100_000
    #: Asynchronous invocation (appliance/core/async_runner.py): events run at once by this process,
    #: the share of a function's capacity (max_instances x concurrency) its events may take, the
    #: first retry's wait after a function error (the second waits twice as long), the pending
    #: events accepted before 429 Async.QueueFull, and the finished events kept for `faas events`.
    async_workers: int = 4
    async_share: float = 0.5
    async_backoff_s: float = 60.0
    async_max_pending: int = 10000
    async_retention: int = 10000
    #: Amazon SQS or an SQS-compatible endpoint, for queue triggers and queue destinations. With a
    #: region or an endpoint set, queue names are SQS queues; without, they are embedded queues.
    sqs_endpoint: str = ""
    sqs_region: str = ""
    sqs_access_key: str = ""
    sqs_secret_key: str = ""
    #: The SQS queue (name or URL) of asynchronous events; unset: SQLite in the data directory. Set it in
    #: cluster mode so every edge router and control plane shares the events. The visibility timeout of
    #: a received event: longer than any attempt (a process that dies mid-attempt leaves it to reappear).
    sqs_async_queue: str = ""
    sqs_async_visibility_s: int = 960
    records_max_age_s: float = 7 * 86400
    records_max_bytes: int = 1 << 30
    records_max_function_bytes: int = 256 << 20
    #: Largest answer of a records query (invocations, logs): past it the answer stops and says
    #: where to go on (``next``).
    max_answer_bytes: int = 4 << 20
    #: auto (sandbox when bubblewrap is present), on (required), off.
    sandbox: str = "auto"
    #: auto (install the packet filter that keeps network-default instances off this host's own
    #: services when the host allows it, else run with a note in /v1/health), on (refuse to start
    #: without it), off (no filter).
    instance_net_filter: str = "auto"
    log_level: str = "info"
    #: Region and 12-digit account id of the Lambda environment (AWS_REGION, function ARNs, accountId).
    region: str = "us-east-1"
    account_id: str = "000000000000"
    # -- cluster mode (docs/cluster.md) --
    nomad_addr: str = "http://127.0.0.1:4646"
    nomad_token: str = ""
    consul_addr: str = "http://127.0.0.1:8500"
    consul_token: str = ""
    #: Consul token the instances use for their own calls (a pool instance registers and deregisters
    #: fn-<function> and clears its claim), passed to the jobs as the variable consul_token. It is
    #: stored in the jobs and function code can read it, so give one that may only write the service
    #: prefix fn- and the key prefix faas/pool/claims/. Empty: consul_token (the appliance's own).
    instance_consul_token: str = ""
    #: S3 endpoint URL; empty means AWS S3 itself. Any S3 API works (MinIO: path-style addressing).
    s3_endpoint: str = ""
    s3_bucket: str = "faas-code"
    s3_region: str = "us-east-1"
    #: S3 credentials; empty means boto3's chain (AWS_ACCESS_KEY_ID/..., profile, instance role).
    s3_access_key: str = ""
    s3_secret_key: str = ""
    node_name: str = ""
    #: Address other hosts reach this process's edge router on (cluster mode lists it in Consul as
    #: faas-edge); empty: the listening address, or this host's name when listening on all addresses.
    advertise_addr: str = ""
    #: Directory of the Nomad jobspecs the scheduler registers (function-instance, runtime-pool).
    jobspecs_dir: str = str(REPO_ROOT / "jobspecs")
    #: HCL2 variable file sent with the jobspecs to /v1/jobs/parse (instance_command, code_cache_dir, ...).
    nomad_vars_file: str = ""
    #: Seconds a Nomad call is retried on transient errors before Scheduler.Unavailable.
    nomad_retry_s: float = 5.0
    #: Seconds an edge keeps serving its last view of Consul while Consul does not answer.
    consul_stale_limit_s: float = 60.0
    #: Generic instances kept free per runtime in the runtime pool (0: no top-up).
    pool_target_free: int = 1
    #: Seconds between pool top-up passes (0: never top up; the pool keeps its registered size).
    pool_refill_s: float = 5.0
    #: Lifetime of the presigned code URLs handed to instances.
    code_url_ttl_s: int = 900
    #: TTL of the Consul session behind the scaling leader's lock (10-86400 s): how long a dead
    #: leader's lock outlives it (Consul reaps within twice this, docs/autoscaling.md).
    leader_ttl_s: int = 15
    # -- node autoscaler (cluster mode; docs/node-autoscaler.md) --
    #: Seconds between two looks at the cluster. A scale-in in progress is advanced on each tick.
    node_autoscaler_interval_s: float = 30.0
    #: Print the plan, change nothing (no Nomad writes, no cloud writes).
    node_autoscaler_dry_run: bool = False
    #: Scale-out target, one of the two: an Auto Scaling group (set_desired_capacity; the group's
    #: launch template carries the user data), or a launch template (EC2 run_instances with the
    #: rendered user data; instances tagged ``faas:node-group=<node_group_tag>``).
    node_asg_name: str = ""
    node_launch_template: str = ""
    node_launch_template_version: str = "$Latest"
    node_group_tag: str = "faas-workers"
    #: AWS region and endpoint of the Auto Scaling / EC2 APIs ("" = boto3's default chain).
    node_aws_region: str = ""
    node_aws_endpoint: str = ""
    #: Policy (appliance/cluster/node_autoscaler_policy.py, NodePolicy): host limits, cooldowns, the free
    #: warm slots to keep and the utilisation under which a host may go.
    node_min_nodes: int = 1
    node_max_nodes: int = 10
    node_cooldown_out_s: float = 300.0
    node_cooldown_in_s: float = 600.0
    node_headroom_slots: int = 8
    node_scale_in_utilisation: float = 0.5
    #: The reference instance a warm slot stands for: jobspecs/function-instance.nomad.hcl's
    #: reservation (memory_mb, cpu_mhz).
    node_slot_memory_mb: int = 256
    node_slot_cpu_mhz: int = 200
    #: Nomad's drain deadline for a host being removed (force-stop after it), and the extra time
    #: given to its instances to leave Consul before the removal is abandoned and the host made
    #: eligible again.
    node_drain_deadline_s: float = 900.0
    node_drain_grace_s: float = 120.0
    #: Transient cloud / Nomad / Consul errors: attempts per call and the exponential backoff
    #: (first wait, longest wait) between them.
    node_retry_attempts: int = 5
    node_retry_initial_s: float = 0.5
    node_retry_max_s: float = 20.0
    #: What the user data of a new host joins: Consul addresses or a cloud auto-join string for
    #: ``retry_join`` (comma-separated), Nomad server addresses (comma-separated; empty = find
    #: them through Consul), and the Nomad datacenter / node class of the new client.
    node_consul_join: str = ""
    node_nomad_servers: str = ""
    node_datacenter: str = "dc1"
    node_class: str = ""
    #: The user data template ("" = appliance/cluster/templates/node-user-data.sh).
    node_user_data_template: str = ""

    def validate(self) -> Settings:
        def bad(name: str, what: str):
            shown = "(hidden)" if name in SECRET_FIELDS else repr(getattr(self, name))
            return ValidationError(f"APPLIANCE_{name.upper()}={shown} is invalid: {what}", field=name)

        if self.mode not in ("local", "cluster"):
            raise bad("mode", "use local or cluster")
        for port in ("edge_port", "api_port"):
            if not 0 <= getattr(self, port) <= 65535:
                raise bad(port, "use a TCP port from 0 to 65535 (0 picks a free one)")
        for name in ("queue_timeout_s", "start_timeout_s", "reap_interval_s"):
            if getattr(self, name) <= 0:
                raise bad(name, "use a positive number of seconds")
        for name in ("max_queue", "max_code_bytes", "max_unpacked_bytes", "max_files", "max_event_bytes",
                     "records_retention", "max_reply_bytes", "records_max_bytes",
                     "records_max_function_bytes", "max_answer_bytes", "records_max_age_s",
                     "instance_log_bytes", "header_timeout_s", "body_timeout_s", "max_connections",
                     "snapshot_budget_mb", "snapshot_keep_s"):
            if getattr(self, name) < 1:
                raise bad(name, "use a positive integer")
        for name in ("nomad_retry_s", "consul_stale_limit_s", "code_url_ttl_s"):
            if getattr(self, name) <= 0:
                raise bad(name, "use a positive number")
        for name in ("pool_target_free", "pool_refill_s", "max_connections_per_client"):
            if getattr(self, name) < 0:
                raise bad(name, "use zero or a positive number")
        if not 10 <= self.leader_ttl_s <= 86400:
            raise bad("leader_ttl_s", "use from 10 to 86400 seconds (Consul's session TTL bounds)")
        if not 1 <= self.panic_window_s <= self.stable_window_s:
            raise bad("panic_window_s", f"use from 1 to APPLIANCE_STABLE_WINDOW_S ({self.stable_window_s:g}) seconds")
        if not 0 < self.target_utilisation <= 1:
            raise bad("target_utilisation", "use a fraction greater than 0 and at most 1")
        if self.max_scale_up_rate <= 1:
            raise bad("max_scale_up_rate", "use a factor greater than 1")
        for name in ("async_workers", "async_max_pending", "async_retention"):
            if getattr(self, name) < 1:
                raise bad(name, "use a positive integer")
        if not 1 <= self.sqs_async_visibility_s <= 43200:
            raise bad("sqs_async_visibility_s", "use from 1 to 43200 seconds (SQS's visibility timeout bounds)")
        if not 0 < self.async_share <= 1:
            raise bad("async_share", "use a fraction greater than 0 and at most 1")
        if self.async_backoff_s < 0:
            raise bad("async_backoff_s", "use zero or a positive number of seconds")
        if self.sandbox not in ("auto", "on", "off"):
            raise bad("sandbox", "use auto, on or off")
        if self.instance_net_filter not in ("auto", "on", "off"):
            raise bad("instance_net_filter", "use auto, on or off")
        for name in ("node_autoscaler_interval_s", "node_drain_deadline_s", "node_retry_initial_s",
                     "node_retry_max_s"):
            if getattr(self, name) <= 0:
                raise bad(name, "use a positive number of seconds")
        for name in ("node_cooldown_out_s", "node_cooldown_in_s", "node_drain_grace_s"):
            if getattr(self, name) < 0:
                raise bad(name, "use zero or a positive number of seconds")
        if self.node_min_nodes < 0:
            raise bad("node_min_nodes", "use zero or a positive integer")
        if self.node_max_nodes < max(1, self.node_min_nodes):
            raise bad("node_max_nodes", f"use at least 1 and at least APPLIANCE_NODE_MIN_NODES ({self.node_min_nodes})")
        if self.node_headroom_slots < 0:
            raise bad("node_headroom_slots", "use zero or a positive integer")
        if not 0 < self.node_scale_in_utilisation <= 1:
            raise bad("node_scale_in_utilisation", "use a fraction greater than 0 and at most 1")
        for name in ("node_slot_memory_mb", "node_slot_cpu_mhz", "node_retry_attempts"):
            if getattr(self, name) < 1:
                raise bad(name, "use a positive integer")
        if self.node_asg_name and self.node_launch_template:
            raise bad("node_launch_template", "set either APPLIANCE_NODE_ASG_NAME or APPLIANCE_NODE_LAUNCH_TEMPLATE, not both")
        if not 0 <= self.token_cache_s <= 60:
            raise bad("token_cache_s", "use from 0 to 60 seconds")
        if self.admin_token and len(self.admin_token) < 32:
            raise bad("admin_token", "use a token of at least 32 characters (faas token create makes them) "
                      "or sha256:<64 hex digits>")
        if self.internal_token and len(self.internal_token) < 32:
            raise bad("internal_token", "use a random string of at least 32 characters")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise bad("log_level", "use debug, info, warning or error")
        if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d{1,2}", self.region):
            raise bad("region", "use a region name like us-east-1")
        if not re.fullmatch(r"\d{12}", self.account_id):
            raise bad("account_id", "use 12 digits, like 000000000000")
        return self

    @property
    def edge_listen(self) -> str:
        return self.edge_host or self.host

    @property
    def api_listen(self) -> str:
        return self.api_host or self.host

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).resolve()

    @classmethod
    def from_env(cls, environ=None, **overrides) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, str] = {}
        settings_file = environ.get("APPLIANCE_SETTINGS")
        if settings_file:
            values.update(read_env_file(Path(settings_file)))
        values.update({k: v for k, v in environ.items() if k.startswith("APPLIANCE_")})
        kwargs = {}
        for f in fields(cls):
            key = f"APPLIANCE_{f.name.upper()}"
            if key in values:
                kwargs[f.name] = _coerce(f, values[key], key)
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kwargs).validate()

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes).validate()


def _coerce(f, raw: str, key: str):
    default = f.default
    try:
        if isinstance(default, bool):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        kind = "an integer" if isinstance(default, int) else "a number"
        raise ValidationError(f"{key}={raw!r} is invalid: use {kind}", field=f.name) from None
    return raw


def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValidationError(f"APPLIANCE_SETTINGS names {path}, which cannot be read: {exc}",
                              field="settings") from None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, _, v = line.partition("=")
        out[k.strip().removeprefix("export ").strip()] = v.strip().strip('"').strip("'")
    return out
