# node-autoscaler: adds hosts when warm-slot headroom runs out, drains and removes idle ones.
#
# A service job with exactly one allocation: two autoscalers would fight over the same Auto
# Scaling group. It talks to Nomad (node list, drain) and to the cloud API through boto3 with the
# node's instance profile (no keys in this file). Settings: docs/node-autoscaler.md.

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "python" {
  type    = string
  default = "/opt/faas-appliance/venv/bin/python"
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

variable "asg_name" {
  type        = string
  default     = "faas-workers"
  description = "The Auto Scaling group of worker nodes. Its launch template carries the user data (faas node-autoscaler --print-user-data)."
}

variable "launch_template" {
  type        = string
  default     = ""
  description = "Instead of asg_name (set that to \"\"): start hosts with EC2 run_instances from this launch template."
}

variable "aws_region" {
  type    = string
  default = "us-east-1"
}

variable "min_nodes" {
  type    = number
  default = 1
}

variable "max_nodes" {
  type        = number
  default     = 10
  description = "Keep equal to the Auto Scaling group's MaxSize."
}

variable "headroom_slots" {
  type        = number
  default     = 8
  description = "Free warm slots (function instances of the reference size) to keep."
}

variable "drain_deadline_s" {
  type        = number
  default     = 900
  description = "Seconds a drained node's instances get to finish before Nomad stops them."
}

variable "consul_join" {
  type        = string
  default     = ""
  description = "What a new host's Consul agent joins (comma-separated addresses or a cloud auto-join string); used for launch_template."
}

variable "nomad_servers" {
  type        = string
  default     = ""
  description = "Nomad servers of a new host (comma-separated host:port; empty = found through Consul)."
}

variable "interval_s" {
  type    = number
  default = 30
}

variable "dry_run" {
  type        = bool
  default     = false
  description = "Log the plan only; change nothing."
}

job "node-autoscaler" {
  type        = "service"
  datacenters = var.datacenters

  group "autoscaler" {
    # One decision maker (see the header).
    count = 1

    # Restart in place a few times, then let Nomad place it elsewhere (service default
    # reschedule: unlimited, exponential delay).
    restart {
      attempts = 3
      interval = "10m"
      delay    = "10s"
      mode     = "fail"
    }

    task "autoscaler" {
      driver = "raw_exec"

      config {
        command = var.python
        args    = ["-m", "appliance", "node-autoscaler"]
      }

      env {
        APPLIANCE_MODE                      = "cluster"
        APPLIANCE_NOMAD_ADDR                = var.nomad_addr
        APPLIANCE_CONSUL_ADDR               = var.consul_addr
        APPLIANCE_NOMAD_TOKEN               = var.nomad_token
        APPLIANCE_CONSUL_TOKEN              = var.consul_token
        APPLIANCE_NODE_ASG_NAME             = var.asg_name
        APPLIANCE_NODE_LAUNCH_TEMPLATE      = var.launch_template
        APPLIANCE_NODE_AWS_REGION           = var.aws_region
        APPLIANCE_NODE_MIN_NODES            = var.min_nodes
        APPLIANCE_NODE_MAX_NODES            = var.max_nodes
        APPLIANCE_NODE_HEADROOM_SLOTS       = var.headroom_slots
        APPLIANCE_NODE_DRAIN_DEADLINE_S     = var.drain_deadline_s
        APPLIANCE_NODE_CONSUL_JOIN          = var.consul_join
        APPLIANCE_NODE_NOMAD_SERVERS        = var.nomad_servers
        APPLIANCE_NODE_AUTOSCALER_INTERVAL_S = var.interval_s
        APPLIANCE_NODE_AUTOSCALER_DRY_RUN   = var.dry_run
        # Its own host is never chosen for removal.
        APPLIANCE_NODE_NAME                 = "${node.unique.name}"
      }

      resources {
        cpu    = 200
        memory = 256
      }

      # A tick in progress is left to finish; a drain in progress lives in Nomad and is resumed
      # by the next allocation.
      kill_signal  = "SIGTERM"
      kill_timeout = "60s"
    }
  }
}
