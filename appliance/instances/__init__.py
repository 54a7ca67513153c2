"""Instances on this host: sandbox, runtime zygotes, cgroups, launchers and the clients that speak the runtime contract."""
