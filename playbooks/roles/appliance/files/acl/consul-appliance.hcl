# Consul policy "faas-appliance": edge routers and the control plane (python -m appliance serve;
# both roles run the same components, so they need the same rights).
# They read every function's instances and the runtime pools (health and catalog reads need
# service:read on the service and node:read on each node; without them Consul answers 200 with a
# filtered, often empty list, not 403), keep function metadata, pool claims and the scaling
# leader's lock under faas/ (the lock through a session), and an edge lists itself as faas-edge.
service_prefix "fn-" {
  policy = "read"
}
service_prefix "faas-" {
  policy = "read"
}
service "faas-edge" {
  policy = "write"
}
node_prefix "" {
  policy = "read"
}
key_prefix "faas/" {
  policy = "write"
}
session_prefix "" {
  policy = "write"
}
