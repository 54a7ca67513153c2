# control-plane: the management API (functions, code uploads, triggers, usage).
#
# A service job; several control planes may run at once: metadata lives in Consul KV with
# check-and-set and code in S3, so none of them holds state the others need.

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "python" {
  type    = string
  default = "/opt/faas-appliance/venv/bin/python"
}

variable "control_count" {
  type    = number
  default = 2
}

variable "data_dir" {
  type    = string
  default = "/var/lib/faas-appliance/control"
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

variable "admin_token" {
  type        = string
  default     = ""
  description = "The admin API token, or sha256:<hex> of it (APPLIANCE_ADMIN_TOKEN), seeded into the token store. Stored in the job."
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
  type    = string
  default = ""
}

variable "s3_bucket" {
  type    = string
  default = "faas-code"
}

variable "s3_region" {
  type    = string
  default = "us-east-1"
}

job "control-plane" {
  type        = "service"
  datacenters = var.datacenters

  group "control" {
    count = var.control_count

    # Dynamic port: the CLI and the web console find the API through Consul ("faas-control").
    network {
      port "http" {}
    }

    task "control" {
      driver = "raw_exec"

      config {
        command = var.python
        args    = ["-m", "appliance", "serve", "--role", "control", "--host", "${NOMAD_IP_http}", "--api-port", "${NOMAD_PORT_http}"]
      }

      env {
        APPLIANCE_MODE         = "cluster"
        APPLIANCE_DATA_DIR     = var.data_dir
        APPLIANCE_NOMAD_ADDR   = var.nomad_addr
        APPLIANCE_CONSUL_ADDR  = var.consul_addr
        APPLIANCE_NOMAD_TOKEN  = var.nomad_token
        APPLIANCE_CONSUL_TOKEN = var.consul_token
        APPLIANCE_ADMIN_TOKEN = var.admin_token
        APPLIANCE_INTERNAL_TOKEN = var.internal_token
        APPLIANCE_SECRETS_KEY = var.secrets_key
        APPLIANCE_S3_ENDPOINT  = var.s3_endpoint
        APPLIANCE_S3_BUCKET    = var.s3_bucket
        APPLIANCE_S3_REGION    = var.s3_region
        APPLIANCE_NODE_NAME    = "${node.unique.name}"
      }

      # Code uploads are unpacked and checked in memory-bounded steps; 512 MB leaves room.
      resources {
        cpu    = 500
        memory = 512
      }

      kill_signal  = "SIGTERM"
      kill_timeout = "30s"

      service {
        name     = "faas-control"
        port     = "http"
        provider = "consul"
        tags     = ["faas", "control"]

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
