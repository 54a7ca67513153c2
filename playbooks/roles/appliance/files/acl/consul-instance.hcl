# Consul policy "faas-instance": the function instances' own calls (CONSUL_HTTP_TOKEN in the
# function-instance and runtime-pool jobs). A pool instance clears the claim on its allocation and,
# once specialised, registers and deregisters fn-<function> through its node's agent. Function
# code can read this token: it may do nothing else.
service_prefix "fn-" {
  policy = "write"
}
key_prefix "faas/pool/claims/" {
  policy = "write"
}
