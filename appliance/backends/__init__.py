"""Adapters behind the core's ports. Only ``appliance.wiring`` chooses among them."""
