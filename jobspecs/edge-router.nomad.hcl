# edge-router: the HTTP front door (triggers in, function results out).
#
# A service job; every allocation is a full edge router (no state only one process holds), so
# the count is just capacity and availability. Each edge keeps its own invocation records; the
# control plane finds the edges through their Consul service and merges queries across them.

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "python" {
  type        = string
  default     = "/opt/faas-appliance/venv/bin/python"
  description = "Interpreter of the installed appliance virtualenv."
}

variable "edge_count" {
  type    = number
  default = 2
}

variable "http_port" {
  type        = number
  default     = 8080
  description = "Static port clients (or the load balancer in front) use on every edge node."
}

variable "data_dir" {
  type        = string
  default     = "/var/lib/faas-appliance/edge"
  description = "Where the edge keeps its invocation records."
}

variable "nomad_addr" {
  type    = string
  default = "http://127.0.0.1:4646"
}

variable "consul_addr" {
  type    = string
  default = "http://127.0.0.1:8500"
}

variable "nomad_token" {
  type        = string
  default     = ""
  description = "Nomad ACL token of the appliance (APPLIANCE_NOMAD_TOKEN); empty without Nomad ACLs. Stored in the job."
}

variable "consul_token" {
  type        = string
  default     = ""
  description = "Consul ACL token of the appliance (APPLIANCE_CONSUL_TOKEN); empty without Consul ACLs. Stored in the job."
}

variable "internal_token" {
  type        = string
  default     = ""
  description = "Credential between edges and control planes (APPLIANCE_INTERNAL_TOKEN); empty: one shared through Consul KV. Stored in the job."
}

variable "secrets_key" {
  type        = string
  default     = ""
  description = "Fernet key of the function secrets (APPLIANCE_SECRETS_KEY), the same for every edge and control plane. Stored in the job."
}

variable "s3_endpoint" {
  type        = string
  default     = ""
  description = "Empty: AWS S3; otherwise any S3 endpoint (MinIO...)."
}

variable "s3_bucket" {
  type    = string
  default = "faas-code"
}

variable "s3_region" {
  type    = string
  default = "us-east-1"
}

job "edge-router" {
  type        = "service"
  datacenters = var.datacenters

  group "edge" {
    count = var.edge_count

    # A static port: clients need a known address. Two edges cannot share a node's port, so
    # Nomad spreads them over nodes by itself.
    network {
      port "http" {
        static = var.http_port
      }
    }

    task "edge" {
      driver = "raw_exec"

      config {
        command = var.python
        args    = ["-m", "appliance", "serve", "--role", "edge", "--host", "${NOMAD_IP_http}", "--edge-port", "${NOMAD_PORT_http}"]
      }

      # Settings are APPLIANCE_* variables (appliance/config.py).
      env {
        APPLIANCE_MODE         = "cluster"
        APPLIANCE_DATA_DIR     = var.data_dir
        APPLIANCE_NOMAD_ADDR   = var.nomad_addr
        APPLIANCE_CONSUL_ADDR  = var.consul_addr
        APPLIANCE_NOMAD_TOKEN  = var.nomad_token
        APPLIANCE_CONSUL_TOKEN = var.consul_token
        APPLIANCE_INTERNAL_TOKEN = var.internal_token
        APPLIANCE_SECRETS_KEY = var.secrets_key
        APPLIANCE_S3_ENDPOINT  = var.s3_endpoint
        APPLIANCE_S3_BUCKET    = var.s3_bucket
        APPLIANCE_S3_REGION    = var.s3_region
        APPLIANCE_NODE_NAME    = "${node.unique.name}"
      }

      resources {
        cpu    = 1000
        memory = 512
      }

      # SIGTERM: stop accepting, finish proxied requests; the longest function timeout bounds it.
      kill_signal  = "SIGTERM"
      kill_timeout = "35s"

      # Found by the control plane (record queries) and by operators; the check is the edge's own
      # health, which also reports a degraded Consul view.
      service {
        name     = "faas-edge"
        port     = "http"
        provider = "consul"
        tags     = ["faas", "edge"]
        meta {
          node = "${node.unique.name}"
        }

        check {
          name     = "health"
          type     = "http"
          path     = "/_/health"
          interval = "5s"
          timeout  = "2s"
        }
      }
    }
  }
}
