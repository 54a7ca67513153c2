"""Function secrets sealed with Fernet (AES-128-CBC + HMAC-SHA256, from ``cryptography``).

The key never enters the metadata store: embedded mode keeps it in ``<data_dir>/secrets.key``
(0600), cluster mode takes it from ``APPLIANCE_SECRETS_KEY`` (the same on every control plane
and edge). A copy of the store, a Consul snapshot or a backup, then holds only ciphertext.
"""

from __future__ import annotations

import json

from cryptography.fernet import Fernet, InvalidToken

from appliance.core.errors import ApplianceError, ValidationError


class SecretsUnavailable(ApplianceError):
    code = "Secrets.Unavailable"
    status = 503


class FernetSecretBox:
    def __init__(self, key: str | bytes | None):
        self._fernet = None
        if key:
            try:
                self._fernet = Fernet(key)
            except (ValueError, TypeError):
                raise ValidationError("APPLIANCE_SECRETS_KEY is not a Fernet key (32 url-safe base64-encoded bytes; "
                                      "make one with: python3 -c 'import base64,os; "
                                      "print(base64.urlsafe_b64encode(os.urandom(32)).decode())')",
                                      field="secrets_key") from None

    @staticmethod
    def generate_key() -> bytes:
        return Fernet.generate_key()

    def _need(self) -> Fernet:
        if self._fernet is None:
            raise SecretsUnavailable("function secrets need a key: set APPLIANCE_SECRETS_KEY (the same on every "
                                     "control plane and edge)")
        return self._fernet

    def seal(self, values: dict[str, str]) -> str:
        return self._need().encrypt(json.dumps(values, sort_keys=True).encode()).decode()

    def open(self, sealed: str) -> dict[str, str]:
        try:
            return json.loads(self._need().decrypt(sealed.encode()))
        except InvalidToken:
            raise SecretsUnavailable("the function's secrets were sealed with another key than "
                                     "APPLIANCE_SECRETS_KEY / <data_dir>/secrets.key") from None
