"""HTTP doubles of the Nomad and Consul API subsets the appliance uses.

Test tools only: they live under tests/ and are never shipped. Every behaviour they
implement is taken from ``/work/shared/reference/nomad-consul-api.md`` (the "reference");
docstrings cite its section numbers.
"""
