# Consul policy "faas-nomad-agent": what the Nomad agents' Consul token (nomad_consul_token) needs
# for the appliance's jobs: register and deregister their services (fn-<function> for dispatched
# instances, faas-pool-<runtime>, faas-edge, faas-control) and their checks on the agent's node.
service_prefix "fn-" {
  policy = "write"
}
service_prefix "faas-" {
  policy = "write"
}
node_prefix "" {
  policy = "write"
}
agent_prefix "" {
  policy = "read"
}
