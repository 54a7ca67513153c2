"""ACL policies for the doubles: the rule language of Consul and Nomad policies, parsed from the same
HCL files the roles apply (playbooks/roles/appliance/files/acl/).

Consul (acl/policy.go, acl/policy_authorizer.go): rules ``service``, ``service_prefix``, ``node``,
``node_prefix``, ``key``, ``key_prefix``, ``session``, ``session_prefix``, ``agent``,
``agent_prefix`` with ``policy`` = ``deny`` | ``read`` | ``write`` (``list`` for keys). An exact
rule wins over prefix rules, the longest prefix wins among those; no matching rule falls back to
the default policy (deny here). ``write`` implies ``read``.

Nomad (acl/policy.go expandNamespacePolicy): ``namespace "<name>" { policy = "read" | "write" |
"scale" | "deny", capabilities = [...] }``, ``node { policy = ... }``, ``agent { policy = ... }``.
"""
from __future__ import annotations

import hcl2

_LEVEL = {"deny": 0, "list": 1, "read": 1, "write": 2}

# acl/policy.go: what each namespace policy shorthand grants.
_NS_READ = {"list-jobs", "parse-job", "read-job", "csi-list-volume", "csi-read-volume", "read-job-scaling",
            "list-scaling-policies", "read-scaling-policy", "host-volume-read"}
_NS_WRITE = _NS_READ | {"scale-job", "submit-job", "dispatch-job", "read-logs", "read-fs", "alloc-exec",
                        "alloc-lifecycle", "csi-write-volume", "csi-mount-volume", "submit-recommendation",
                        "list-host-volume", "host-volume-write"}
_NS_SCALE = {"list-scaling-policies", "read-scaling-policy", "read-job-scaling", "scale-job"}


def _loads(text: str) -> dict:
    return hcl2.loads(text, serialization_options=hcl2.SerializationOptions(strip_string_quotes=True,
                                                                              with_comments=False))


def _blocks(doc: dict, kind: str):
    """(label, body) pairs of ``kind "label" { ... }`` blocks (label None for unlabelled blocks)."""
    for block in doc.get(kind, []):
        if isinstance(block, dict) and len(block) == 1 and isinstance(next(iter(block.values())), dict) \
                and "policy" not in block and "capabilities" not in block:
            label, body = next(iter(block.items()))
            yield label.strip('"'), body
        else:
            yield None, block


class ConsulAuthorizer:
    """What one Consul token may do. ``rules`` None: a management token (everything)."""

    KINDS = ("service", "node", "key", "session", "agent")

    def __init__(self, rules: str | None):
        self.management = rules is None
        self.exact: dict[str, dict[str, str]] = {k: {} for k in self.KINDS}
        self.prefix: dict[str, dict[str, str]] = {k: {} for k in self.KINDS}
        if rules:
            doc = _loads(rules)
            for kind in self.KINDS:
                for label, body in _blocks(doc, kind):
                    self.exact[kind][label or ""] = body["policy"]
                for label, body in _blocks(doc, kind + "_prefix"):
                    self.prefix[kind][label or ""] = body["policy"]

    def policy(self, kind: str, name: str) -> str:
        if self.management:
            return "write"
        if name in self.exact[kind]:
            return self.exact[kind][name]
        best = max((p for p in self.prefix[kind] if name.startswith(p)), key=len, default=None)
        return self.prefix[kind][best] if best is not None else "deny"

    def allows(self, kind: str, name: str, access: str) -> bool:
        return _LEVEL[self.policy(kind, name)] >= _LEVEL[access]

    def allows_prefix(self, kind: str, prefix: str, access: str) -> bool:
        """``access`` on every name under ``prefix`` (recursive KV deletes: KeyWritePrefix)."""
        if self.management:
            return True
        if not self.allows(kind, prefix, access):
            return False
        return all(_LEVEL[p] >= _LEVEL[access] for table in (self.exact[kind], self.prefix[kind])
                   for name, p in table.items() if name.startswith(prefix))


class NomadAuthorizer:
    """What one Nomad token may do. ``rules`` None: a management token."""

    def __init__(self, rules: str | None):
        self.management = rules is None
        self.namespaces: dict[str, set[str]] = {}
        self.node = self.agent = "deny"
        if rules:
            doc = _loads(rules)
            for label, body in _blocks(doc, "namespace"):
                caps = set(body.get("capabilities") or [])
                pol = body.get("policy", "")
                caps |= {"read": _NS_READ, "write": _NS_WRITE, "scale": _NS_SCALE}.get(pol, set())
                if pol == "deny":
                    caps = {"deny"}
                self.namespaces[label or "default"] = caps
            for _label, body in _blocks(doc, "node"):
                self.node = body.get("policy", "deny")
            for _label, body in _blocks(doc, "agent"):
                self.agent = body.get("policy", "deny")

    def allows_namespace(self, capabilities: tuple[str, ...], namespace: str = "default") -> bool:
        """Any one of ``capabilities`` in the namespace (Nomad's endpoints accept alternatives)."""
        if self.management:
            return True
        caps = self.namespaces.get(namespace, set())
        return "deny" not in caps and bool(caps & set(capabilities))

    def allows_node(self, access: str) -> bool:
        return self.management or _LEVEL.get(self.node, 0) >= _LEVEL[access]
