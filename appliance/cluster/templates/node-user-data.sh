#!/bin/bash
# User data of a worker host added by the node autoscaler (appliance/cluster/node_autoscaler.py).
#
# The image already has consul, nomad and the appliance installed (playbooks/, roles consul,
# nomad, appliance, runtimes); this script only tells the new host whom to join and who it is:
#   - the Consul agent joins the cluster through retry_join;
#   - the Nomad client finds its servers (listed, or through Consul) and carries
#     meta.instance_id = this EC2 instance's id, which is how the node autoscaler maps a Nomad
#     node back to the cloud instance it terminates on scale-in.
# Placeholders in double braces are filled in by the node autoscaler when it renders this file
# (run_instances), or by `faas node-autoscaler --print-user-data` for a launch template.
set -euo pipefail

# Instance identity from the instance metadata service (IMDSv2: token first).
imds_token=$(curl -sS -X PUT "http://169.254.169.254/latest/api/token" \
  -H "X-aws-ec2-metadata-token-ttl-seconds: 300")
imds() {
  curl -sS -H "X-aws-ec2-metadata-token: ${imds_token}" "http://169.254.169.254/latest/meta-data/$1"
}
instance_id=$(imds instance-id)
local_ipv4=$(imds local-ipv4)

install -d -m 0755 /etc/consul.d /etc/nomad.d

cat > /etc/consul.d/join.hcl <<CONSUL
retry_join = {{CONSUL_RETRY_JOIN}}
bind_addr  = "${local_ipv4}"
CONSUL

cat > /etc/nomad.d/client-join.hcl <<NOMAD
datacenter = {{DATACENTER}}
bind_addr  = "0.0.0.0"
advertise {
  http = "${local_ipv4}"
  rpc  = "${local_ipv4}"
  serf = "${local_ipv4}"
}
client {
  enabled    = true
  node_class = {{NODE_CLASS}}
  servers    = {{NOMAD_SERVERS}}
  meta {
    instance_id = "${instance_id}"
  }
}
consul {
  address          = "127.0.0.1:8500"
  client_auto_join = true
}
NOMAD

systemctl enable consul nomad
systemctl restart consul
systemctl restart nomad
