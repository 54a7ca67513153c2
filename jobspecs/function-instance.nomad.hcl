# function-instance: the slow path of a cold start, and the pool's refill.
#
# A parameterized batch job. The appliance registers it once (POST /v1/jobs/parse with
# Variables, then POST /v1/jobs) and dispatches one child job per instance it needs:
#
#   POST /v1/job/function-instance/dispatch?idempotency_token=<uuid>
#   {"Meta": {"function": "resize", "version": "7", "digest": "sha256-...", "runtime": "python3.11",
#             "handler": "index.handler", "memory": "256", "timeout": "3", "concurrency": "1",
#             "code_url": "<presigned S3 GET URL of the package>", "env": "{\"GREETING\":\"hi\"}"}}
#
# Each child gets one allocation: a runtime instance serving that function on a dynamic port,
# registered by Nomad in Consul as the service "fn-<function>" (see the service block). The Consul
# service name is the contract with ConsulRegistry: ready instances of function F are the passing
# entries of "fn-F"; tags and meta carry the version and the instance (allocation) id.

# --- variables: everything that differs between clusters, declared first -------------------

variable "job_id" {
  type        = string
  default     = "function-instance"
  description = "Job ID. Nomad cannot size resources from dispatch meta: a function needing more than memory_mb is dispatched from a copy of this job that reserves its memory (<job_id>-<MB>), which the appliance registers from this job as registered."
}

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "instance_command" {
  type        = string
  default     = "/opt/faas-appliance/venv/bin/python"
  description = "Interpreter of the installed appliance virtualenv."
}

variable "instance_args" {
  type        = list(string)
  default     = ["-m", "appliance", "instance"]
  description = "Launcher: makes sure the code of FAAS_CODE_DIGEST is in FAAS_CODE_CACHE_DIR (fetched once per digest per node), then execs the bootstrap of FAAS_RUNTIME with the runtime contract's environment."
}

variable "code_cache_dir" {
  type        = string
  default     = "/var/lib/faas-appliance/code-cache"
  description = "Per-node, content-addressed cache of unpacked code: <dir>/<digest>/ is read-only once written."
}

variable "memory_mb" {
  type        = number
  default     = 256
  description = "Memory Nomad reserves per instance at least (the floor: the runtime's own needs). A function with more memory gets a sized copy of this job reserving exactly its memory; FAAS_MEMORY_MB is the function's setting."
}

variable "cpu_mhz" {
  type    = number
  default = 200
}

variable "kill_timeout" {
  type        = string
  default     = "35s"
  description = "Time between SIGTERM and SIGKILL: longer than the longest function timeout, so in-flight invocations finish (runtime contract section 5)."
}

variable "check_interval" {
  type    = string
  default = "2s"
}

variable "check_timeout" {
  type    = string
  default = "1s"
}

variable "consul_http_addr" {
  type        = string
  default     = "http://127.0.0.1:8500"
  description = "The node's Consul agent (instances never talk to a remote Consul)."
}

variable "consul_token" {
  type        = string
  default     = ""
  description = "Consul ACL token for the instance's own Consul calls (CONSUL_HTTP_TOKEN; empty: none), as in runtime-pool: Nomad registers a dispatched instance, the launcher and bootstraps it shares with pool instances send this token when they call Consul. It is stored in the job, where anyone who may read the job sees it, and function code runs in the instance's environment: use a token that may only write the service prefix fn- and the key prefix faas/pool/claims/, not the appliance's."
}

job "function-instance" {
  # The label is a literal in HCL; the ID comes from a variable so size classes can coexist.
  id          = var.job_id
  type        = "batch"
  datacenters = var.datacenters

  # Dispatch contract. function/version/digest identify exactly which code runs; the rest has
  # defaults below. No payload: events go to the instance over HTTP, never through Nomad.
  parameterized {
    payload       = "forbidden"
    meta_required = ["function", "version", "digest"]
    meta_optional = ["handler", "runtime", "memory", "timeout", "concurrency", "code_url", "env", "region", "account_id", "layers"]
  }

  # Defaults of the optional dispatch keys. Dispatch meta is merged into the *job* meta, so these
  # are overridden by the dispatch. They must stay at job level: a group or task meta key with the
  # same name would shadow the dispatched value.
  meta {
    handler     = "index.handler"
    runtime     = "python3.11"
    memory      = "128"
    timeout     = "3"
    concurrency = "1"
    # A presigned URL of the code package; empty means "must already be in the node's cache".
    code_url = ""
    # The function's environment variables as a JSON object; the launcher sets them.
    env = "{}"
    # The Lambda environment's region and account id (APPLIANCE_REGION, APPLIANCE_ACCOUNT_ID).
    region     = "us-east-1"
    account_id = "000000000000"
    # The function's layers in order, a JSON list of {digest, url}; the launcher fetches each once per node.
    layers = "[]"
  }

  group "instance" {
    count = 1

    # One dynamic host port per instance; the runtime binds it on the node's address.
    # No "to": in host mode with raw_exec, NOMAD_PORT_http must be the host port.
    network {
      port "http" {}
    }

    # An instance that dies is not restarted in place nor rescheduled: the allocation fails,
    # waiting requests get Instance.PlacementFailed with Nomad's reason, and the activator decides
    # whether to start another one.
    restart {
      attempts = 0
      mode     = "fail"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    task "runtime" {
      # raw_exec only: Nomad's exec driver would run the task in a chroot without the appliance's
      # virtualenv and with a private copy of the code cache (its chroot_env copies files), so it is
      # not offered. The bootstrap sandboxes the function itself (runtimes/README.md).
      driver = "raw_exec"

      config {
        command = var.instance_command
        args    = var.instance_args
      }

      # The runtime contract (runtimes/README.md). FAAS_POOL is unset: this instance is born
      # specialised. Nomad interpolates the NOMAD_* values when it starts the task.
      env {
        FAAS_FUNCTION_NAME    = "${NOMAD_META_function}"
        FAAS_FUNCTION_VERSION = "${NOMAD_META_version}"
        FAAS_CODE_DIGEST      = "${NOMAD_META_digest}"
        FAAS_RUNTIME          = "${NOMAD_META_runtime}"
        FAAS_HANDLER          = "${NOMAD_META_handler}"
        FAAS_MEMORY_MB        = "${NOMAD_META_memory}"
        FAAS_TIMEOUT_S        = "${NOMAD_META_timeout}"
        FAAS_MAX_INFLIGHT     = "${NOMAD_META_concurrency}"
        FAAS_CODE_CACHE_DIR   = var.code_cache_dir
        FAAS_CODE_URL         = "${NOMAD_META_code_url}"
        FAAS_FUNCTION_ENV     = "${NOMAD_META_env}"
        FAAS_REGION           = "${NOMAD_META_region}"
        FAAS_ACCOUNT_ID       = "${NOMAD_META_account_id}"
        FAAS_LAYERS           = "${NOMAD_META_layers}"
        FAAS_CODE_DIR         = "${var.code_cache_dir}/${NOMAD_META_digest}"
        FAAS_HOST             = "${NOMAD_IP_http}"
        FAAS_PORT             = "${NOMAD_PORT_http}"
        FAAS_INSTANCE_ID      = "${NOMAD_ALLOC_ID}"
        CONSUL_HTTP_ADDR      = var.consul_http_addr
        CONSUL_HTTP_TOKEN     = var.consul_token
      }

      # Reservation for the scheduler (see variable memory_mb): the floor; sized copies of this
      # job (<job_id>-<MB>, registered by the appliance) reserve a bigger function's memory.
      resources {
        cpu    = var.cpu_mhz
        memory = var.memory_mb
      }

      # Draining: SIGTERM makes the runtime refuse new work and finish what is in flight
      # (Nomad's default signal would be SIGINT); kill_timeout bounds how long that may take.
      kill_signal  = "SIGTERM"
      kill_timeout = var.kill_timeout

      # The warm-instance cache entry. Nomad registers it when the task runs and removes it when
      # the task stops; Consul marks it passing once /_/ready answers 200 (code loaded, not draining).
      service {
        name     = "fn-${NOMAD_META_function}"
        port     = "http"
        provider = "consul"
        tags = [
          "faas",
          "function=${NOMAD_META_function}",
          "version=${NOMAD_META_version}",
          "instance=${NOMAD_ALLOC_ID}",
          "source=dispatch",
        ]
        meta {
          function    = "${NOMAD_META_function}"
          version     = "${NOMAD_META_version}"
          digest      = "${NOMAD_META_digest}"
          runtime     = "${NOMAD_META_runtime}"
          instance_id = "${NOMAD_ALLOC_ID}"
          job_id      = "${NOMAD_JOB_ID}"
          concurrency = "${NOMAD_META_concurrency}"
        }

        check {
          name     = "ready"
          type     = "http"
          path     = "/_/ready"
          interval = var.check_interval
          timeout  = var.check_timeout
        }
      }
    }
  }
}
