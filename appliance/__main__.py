"""``python -m appliance`` runs the ``faas`` command."""

from appliance.cli import main

main(prog_name="faas")
