# runtime-pool: generic runtime instances started ahead of need (the fast path of a cold start).
#
# A service job with one group per runtime. Each allocation runs the runtime's bootstrap with
# FAAS_POOL=1: the runtime is loaded, no function code yet. A cold start claims one of them
# (atomic claim in Consul KV, keyed by the instance id) and POSTs /_/specialize with the
# function's code; the instance then registers itself under "fn-<function>" through the node's
# Consul agent. When a specialised instance is reclaimed it exits, and the launcher starts a fresh
# generic instance in the same allocation, so the pool refills itself without Nomad restarts. The
# appliance changes the pool size with POST /v1/job/runtime-pool/scale (Target.Group = the runtime
# group).

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "instance_command" {
  type    = string
  default = "/opt/faas-appliance/venv/bin/python"
}

variable "instance_args" {
  type        = list(string)
  default     = ["-m", "appliance", "instance"]
  description = "Same launcher as function-instance; with FAAS_POOL=1 it starts the runtime without code."
}

variable "code_cache_dir" {
  type    = string
  default = "/var/lib/faas-appliance/code-cache"
}

variable "python_count" {
  type        = number
  default     = 2
  description = "Generic python3.11 instances kept per cluster."
}

variable "node_count" {
  type        = number
  default     = 1
  description = "Generic nodejs20 instances kept per cluster."
}

variable "provided_count" {
  type        = number
  default     = 0
  description = "Generic provided (custom runtime) instances kept per cluster: its Runtime API server, waiting for a function's code and bootstrap."
}

variable "pool_max" {
  type        = number
  default     = 50
  description = "Upper bound the scale endpoint accepts per runtime group."
}

variable "memory_mb" {
  type        = number
  default     = 256
  description = "Memory Nomad reserves per pool instance; only functions with at most this much memory are started from the pool (the service meta memory_mb says it), bigger ones are dispatched."
}

variable "kill_timeout" {
  type    = string
  default = "35s"
}

variable "check_interval" {
  type        = string
  default     = "2s"
  description = "Interval of the pool check and of the check a specialised instance registers for itself."
}

variable "consul_http_addr" {
  type    = string
  default = "http://127.0.0.1:8500"
}

variable "consul_token" {
  type        = string
  default     = ""
  description = "Consul ACL token the instances send with their own Consul calls (CONSUL_HTTP_TOKEN; empty: none): a pool instance deletes its stale claim under faas/pool/claims/ and registers and deregisters its fn-<function> service. It is stored in the job, where anyone who may read the job sees it, and function code runs in the instance's environment: use a token that may only write the service prefix fn- and the key prefix faas/pool/claims/, not the appliance's."
}

job "runtime-pool" {
  type        = "service"
  datacenters = var.datacenters

  group "python3.11" {
    count = var.python_count

    # Bounds for POST /v1/job/runtime-pool/scale; 0 allowed (pool off for this runtime).
    scaling {
      enabled = true
      min     = 0
      max     = var.pool_max
    }

    # Read by the service name and the environment below; group meta, not job meta, because
    # each group is one runtime. Nomad only accepts RFC 1123 service names (letters, digits,
    # dashes, at most 63), so the service is named from the runtime id with every other
    # character turned into "-": python3.11 -> faas-pool-python3-11.
    meta {
      runtime             = "python3.11"
      pool_service_suffix = "python3-11"
    }

    # No deployments for the pool (forced updates, Nomad's documented meaning of max_parallel = 0).
    # Nomad gives every service job a default update strategy, so each scale would open a
    # deployment; specialised instances fail their "free" check by design, so it would never turn
    # healthy, and until its 10-minute progress deadline Nomad refuses every further scale with
    # 400 "job scaling blocked due to active deployment" (nomad/job_endpoint.go Job.Scale).
    update {
      max_parallel = 0
    }

    network {
      port "http" {}
    }

    # A specialised instance that drains is replaced in place by the launcher, which stays the
    # task's process (appliance/instances/pool_supervisor.py): Nomad sees no exit, so this
    # budget counts only real failures (a runtime that crashes or cannot start), which are retried
    # 10 times in 5 minutes and then after a delay until the interval is over.
    restart {
      attempts = 10
      interval = "5m"
      delay    = "1s"
      mode     = "delay"
    }

    task "runtime" {
      driver = "raw_exec"

      config {
        command = var.instance_command
        args    = var.instance_args
      }

      env {
        FAAS_POOL           = "1"
        FAAS_RUNTIME        = "${NOMAD_META_runtime}"
        FAAS_CODE_CACHE_DIR = var.code_cache_dir
        FAAS_HOST           = "${NOMAD_IP_http}"
        FAAS_PORT           = "${NOMAD_PORT_http}"
        FAAS_INSTANCE_ID    = "${NOMAD_ALLOC_ID}"
        CONSUL_HTTP_ADDR    = var.consul_http_addr
        CONSUL_HTTP_TOKEN   = var.consul_token
        FAAS_CHECK_INTERVAL = var.check_interval
      }

      resources {
        cpu    = 200
        memory = var.memory_mb
      }

      kill_signal  = "SIGTERM"
      kill_timeout = var.kill_timeout

      # Pool membership. The check is /_/pool: 200 while the instance is generic, 503 once it
      # has been specialised, so passing entries are the free instances. A claim in Consul KV
      # (faas/pool/claims/<alloc id>, created with cas=0) decides which starter gets one; meta
      # memory_mb tells starters which functions fit the reservation.
      service {
        name     = "faas-pool-${NOMAD_META_pool_service_suffix}"
        port     = "http"
        provider = "consul"
        tags     = ["faas", "pool", "runtime=${NOMAD_META_runtime}", "instance=${NOMAD_ALLOC_ID}"]
        meta {
          runtime     = "${NOMAD_META_runtime}"
          instance_id = "${NOMAD_ALLOC_ID}"
          memory_mb   = "${var.memory_mb}"
        }

        check {
          name     = "free"
          type     = "http"
          path     = "/_/pool"
          interval = var.check_interval
          timeout  = "1s"
        }
      }
    }
  }

  group "nodejs20" {
    count = var.node_count

    scaling {
      enabled = true
      min     = 0
      max     = var.pool_max
    }

    meta {
      runtime             = "nodejs20"
      pool_service_suffix = "nodejs20"
    }

    # No deployments: see the python3.11 group.
    update {
      max_parallel = 0
    }

    network {
      port "http" {}
    }

    restart {
      attempts = 10
      interval = "5m"
      delay    = "1s"
      mode     = "delay"
    }

    task "runtime" {
      driver = "raw_exec"

      config {
        command = var.instance_command
        args    = var.instance_args
      }

      env {
        FAAS_POOL           = "1"
        FAAS_RUNTIME        = "${NOMAD_META_runtime}"
        FAAS_CODE_CACHE_DIR = var.code_cache_dir
        FAAS_HOST           = "${NOMAD_IP_http}"
        FAAS_PORT           = "${NOMAD_PORT_http}"
        FAAS_INSTANCE_ID    = "${NOMAD_ALLOC_ID}"
        CONSUL_HTTP_ADDR    = var.consul_http_addr
        CONSUL_HTTP_TOKEN   = var.consul_token
        FAAS_CHECK_INTERVAL = var.check_interval
      }

      resources {
        cpu    = 200
        memory = var.memory_mb
      }

      kill_signal  = "SIGTERM"
      kill_timeout = var.kill_timeout

      service {
        name     = "faas-pool-${NOMAD_META_pool_service_suffix}"
        port     = "http"
        provider = "consul"
        tags     = ["faas", "pool", "runtime=${NOMAD_META_runtime}", "instance=${NOMAD_ALLOC_ID}"]
        meta {
          runtime     = "${NOMAD_META_runtime}"
          instance_id = "${NOMAD_ALLOC_ID}"
          memory_mb   = "${var.memory_mb}"
        }

        check {
          name     = "free"
          type     = "http"
          path     = "/_/pool"
          interval = var.check_interval
          timeout  = "1s"
        }
      }
    }
  }

  group "provided" {
    count = var.provided_count

    scaling {
      enabled = true
      min     = 0
      max     = var.pool_max
    }

    meta {
      runtime             = "provided"
      pool_service_suffix = "provided"
    }

    # No deployments: see the python3.11 group.
    update {
      max_parallel = 0
    }

    network {
      port "http" {}
    }

    restart {
      attempts = 10
      interval = "5m"
      delay    = "1s"
      mode     = "delay"
    }

    task "runtime" {
      driver = "raw_exec"

      config {
        command = var.instance_command
        args    = var.instance_args
      }

      env {
        FAAS_POOL           = "1"
        FAAS_RUNTIME        = "${NOMAD_META_runtime}"
        FAAS_CODE_CACHE_DIR = var.code_cache_dir
        FAAS_HOST           = "${NOMAD_IP_http}"
        FAAS_PORT           = "${NOMAD_PORT_http}"
        FAAS_INSTANCE_ID    = "${NOMAD_ALLOC_ID}"
        CONSUL_HTTP_ADDR    = var.consul_http_addr
        CONSUL_HTTP_TOKEN   = var.consul_token
        FAAS_CHECK_INTERVAL = var.check_interval
      }

      resources {
        cpu    = 200
        memory = var.memory_mb
      }

      kill_signal  = "SIGTERM"
      kill_timeout = var.kill_timeout

      service {
        name     = "faas-pool-${NOMAD_META_pool_service_suffix}"
        port     = "http"
        provider = "consul"
        tags     = ["faas", "pool", "runtime=${NOMAD_META_runtime}", "instance=${NOMAD_ALLOC_ID}"]
        meta {
          runtime     = "${NOMAD_META_runtime}"
          instance_id = "${NOMAD_ALLOC_ID}"
          memory_mb   = "${var.memory_mb}"
        }

        check {
          name     = "free"
          type     = "http"
          path     = "/_/pool"
          interval = var.check_interval
          timeout  = "1s"
        }
      }
    }
  }
}
