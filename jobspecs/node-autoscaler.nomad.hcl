# node-autoscaler: adds hosts when warm-slot headroom runs out, drains and removes idle ones.
#
# A service job with exactly one allocation: two autoscalers would fight over the same Auto
# Scaling group. It talks to Nomad (node list, drain) and to the cloud API through boto3 with the
# node's instance profile (no keys in this file).

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "python" {
  type    = string
  default = "/opt/faas/venv/bin/python"
}

variable "nomad_addr" {
  type    = string
  default = "http://127.0.0.1:4646"
}

variable "consul_addr" {
  type    = string
  default = "http://127.0.0.1:8500"
}

variable "asg_name" {
  type        = string
  default     = "faas-workers"
  description = "The Auto Scaling group of worker nodes."
}

variable "aws_region" {
  type    = string
  default = "us-east-1"
}

variable "drain_deadline" {
  type        = string
  default     = "15m"
  description = "How long a drained node's instances get to finish before they are stopped."
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
        APPLIANCE_MODE        = "cluster"
        APPLIANCE_NOMAD_ADDR  = var.nomad_addr
        APPLIANCE_CONSUL_ADDR = var.consul_addr
        FAAS_ASG_NAME         = var.asg_name
        FAAS_DRAIN_DEADLINE   = var.drain_deadline
        AWS_REGION            = var.aws_region
      }

      resources {
        cpu    = 200
        memory = 256
      }

      # A scaling step in progress (drain, terminate) is left to finish or roll back.
      kill_signal  = "SIGTERM"
      kill_timeout = "60s"
    }
  }
}
