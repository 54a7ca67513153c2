"""The core: what a request and a function are and how they are run, through the ports it owns.

It imports no face (edge, control, cli) and no backend; backends implement :mod:`.ports`."""
