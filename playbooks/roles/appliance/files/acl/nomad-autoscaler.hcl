# Nomad policy "faas-autoscaler": the node autoscaler reads nodes, allocations and blocked
# evaluations, and marks nodes ineligible and drains them (node write).
namespace "default" {
  capabilities = ["list-jobs", "read-job"]
}
node {
  policy = "write"
}
