"""The control plane's face: the REST API, the console's assets, record and scaling views."""
