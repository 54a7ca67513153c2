"""FaaS Appliance: a self-hosted Function-as-a-Service platform.

Public entry points: :mod:`appliance.cli` (the ``faas`` command), :mod:`appliance.client` (the
Python SDK), :class:`appliance.server.Appliance` (run it in-process), :mod:`appliance.wiring`
(build the parts from settings).
"""

__version__ = "0.1.0"
