"""``python -m appliance`` runs the ``faas`` command."""

from .cli import main

main(prog_name="faas")
