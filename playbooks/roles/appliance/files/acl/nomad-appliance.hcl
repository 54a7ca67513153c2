# Nomad policy "faas-appliance": edge routers and the control plane. They parse and register the
# function-instance and runtime-pool jobs (and the memory-sized copies), dispatch instances, follow
# and purge the dispatched jobs, read allocations and their task events, stop pool allocations,
# and scale the runtime pool.
namespace "default" {
  capabilities = ["list-jobs", "parse-job", "read-job", "submit-job", "dispatch-job", "read-job-scaling",
                  "scale-job", "alloc-lifecycle"]
}
