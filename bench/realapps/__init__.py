"""Real Python Lambda applications, cold and warm, through the appliance (snapshots on and off) and
serverless-offline, side by side in one run (part of ``python -m bench``; see bench/README.md).

Each application lives in ``bench/realapps/<app>/``: ``app.py`` (the handler, ``app.handler``) and a
``requirements.txt`` of exact pins. Its dependencies are vendored with ``pip install --target``
(:mod:`.build`), and the same directory is what the appliance gets as a zip and what
serverless-offline imports from. Cold starts of real applications are dominated by importing
their dependencies (300-1,200 ms), which a hello function does not show.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class App:
    name: str          #: directory under bench/realapps/
    label: str
    prefix: str        #: route prefix (the app reads APP_PREFIX, this is its default)
    env: dict = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return HERE / self.name

    @property
    def requirements(self) -> Path:
        return self.dir / "requirements.txt"

    def path(self, prefix: str | None = None) -> str:
        """The route every sample requests: ``POST <prefix>/orders``."""
        return f"{prefix or self.prefix}/orders"


#: What every sample sends, and what each app must answer (besides status 200).
ORDER = {"item": "book", "quantity": 2}
ORDER_BODY = json.dumps(ORDER).encode()

APPS = {a.name: a for a in (
    App("flask_app", "Flask + apig-wsgi", "/flask"),
    App("fastapi_app", "FastAPI + Mangum (pydantic)", "/fastapi"),
    App("powertools_app", "Powertools resolver + Logger/Tracer/Metrics", "/powertools",
        env={"POWERTOOLS_SERVICE_NAME": "orders", "POWERTOOLS_METRICS_NAMESPACE": "bench",
             "POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_DEV": "false"}),
    App("pydantic_app", "pydantic + requests (no web framework)", "/pydantic"),
)}


def check_answer(app: App, status: int, body: bytes) -> None:
    """Raise unless ``body`` is the app's 200 answer to :data:`ORDER`."""
    short = app.name.split("_")[0]
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if status != 200 or not isinstance(doc, dict) or doc.get("app") != short or doc.get("quantity") != ORDER["quantity"]:
        raise RuntimeError(f"{app.name} answered {status} {body[:300]!r}, not 200 with app={short!r}")
