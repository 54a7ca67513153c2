# Consul policy "faas-autoscaler": the node autoscaler reads where function instances run.
service_prefix "fn-" {
  policy = "read"
}
service_prefix "faas-pool-" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
