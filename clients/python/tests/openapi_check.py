"""Checks an answer of the request endpoint against ``api/request-endpoint.openapi.yaml``: the
status is documented for the path, the body validates (JSON Schema 2020-12) against the
documented schema, documented headers are present and valid, a refusal's reason has that
status in ``x-refusal-reasons`` and a ``Retry-After`` exactly when the reason says so, and a
served wrap carries ``Cache-Control: no-store``.

Problems are described by where and which rule failed, never by quoting the body: a wrap's
body holds a wrapping token."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import jsonschema
import yaml


class Checker:
    """The API document, ready to check answers."""

    def __init__(self, doc: Dict[str, Any]) -> None:
        self.doc = doc
        self.reasons = {r["reason"]: r for r in doc.get("x-refusal-reasons", [])}

    @classmethod
    def load(cls, path: Path) -> "Checker":
        return cls(yaml.safe_load(Path(path).read_text(encoding="utf-8")))

    def resolve(self, node: Any) -> Any:
        """``node`` with a local ``$ref`` followed (repeatedly)."""
        seen = 0
        while isinstance(node, dict) and "$ref" in node and seen < 16:
            ref = node["$ref"]
            if not ref.startswith("#/"):
                raise ValueError(f"only local references are supported: {ref}")
            node = self.doc
            for part in ref[2:].split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
            seen += 1
        return node

    def validator(self, schema: Dict[str, Any]) -> jsonschema.Draft202012Validator:
        """A validator for ``schema`` whose ``#/components/...`` references resolve in the doc."""
        root = dict(schema)
        root.setdefault("components", self.doc.get("components", {}))
        return jsonschema.Draft202012Validator(root)

    def check(
        self, method: str, path: str, status: int, headers: Mapping[str, str], body: bytes
    ) -> List[str]:
        """Every way the answer departs from the document (empty: it conforms)."""
        where = f"{method.upper()} {path} -> {status}"
        problems: List[str] = []
        operation = self.doc.get("paths", {}).get(path, {}).get(method.lower())
        if operation is None:
            return [f"{where}: the path is not documented"]
        responses = operation.get("responses", {})
        key = next((k for k in (str(status), f"{status // 100}XX", "default") if k in responses), None)
        if key is None:
            return [f"{where}: the status is not documented (documented: {sorted(responses)})"]
        response = self.resolve(responses[key])
        headers = {k.lower(): v for k, v in headers.items()}
        problems += self._headers(where, response, headers)
        parsed: Any = None
        content = response.get("content")
        if not content:
            if body.strip():
                problems.append(f"{where}: a body ({len(body)} bytes) where the document has none")
        else:
            media = headers.get("content-type", "").split(";")[0].strip().lower()
            if media not in content:
                problems.append(f"{where}: content type {media!r} not documented ({sorted(content)})")
            else:
                try:
                    parsed = json.loads(body.decode("utf-8"))
                except ValueError:
                    problems.append(f"{where}: the body is not JSON")
                else:
                    schema = content[media].get("schema", {})
                    for error in self.validator(schema).iter_errors(parsed):
                        # Where and which rule, never the instance (it may be a token).
                        problems.append(
                            f"{where}: body at {error.json_path} "
                            f"fails {error.validator} {error.validator_value!r}"
                        )
        if status >= 400 and isinstance(parsed, dict) and isinstance(parsed.get("reason"), str):
            problems += self._refusal(where, path, status, parsed["reason"], headers)
        if path.endswith("/wrap") and status == 200 and headers.get("cache-control") != "no-store":
            problems.append(f"{where}: a served wrap without Cache-Control: no-store")
        return problems

    def _headers(self, where: str, response: Dict[str, Any], headers: Mapping[str, str]) -> List[str]:
        problems = []
        for name, spec in (response.get("headers") or {}).items():
            spec = self.resolve(spec)
            value = headers.get(name.lower())
            if value is None:
                if spec.get("required"):
                    problems.append(f"{where}: required header {name} missing")
                continue
            schema = spec.get("schema", {})
            instance: Any = value
            if schema.get("type") == "integer":
                try:
                    instance = int(value.strip())
                except ValueError:
                    problems.append(f"{where}: header {name} is not an integer: {value!r}")
                    continue
            for error in self.validator(schema).iter_errors(instance):
                problems.append(
                    f"{where}: header {name}={value!r} fails {error.validator} {error.validator_value!r}"
                )
        return problems

    def _refusal(
        self, where: str, path: str, status: int, reason: str, headers: Mapping[str, str]
    ) -> List[str]:
        listed: Optional[Dict[str, Any]] = self.reasons.get(reason)
        if listed is None:
            return [f"{where}: reason {reason} is not in x-refusal-reasons"]
        problems = []
        if listed.get("status") != status:
            problems.append(f"{where}: reason {reason} is documented with status {listed.get('status')}")
        route = path.rstrip("/").rsplit("/", 1)[-1]
        if route not in listed.get("routes", []):
            problems.append(
                f"{where}: reason {reason} is not documented for route {route} ({listed.get('routes')})"
            )
        has_wait = "retry-after" in headers
        if has_wait != bool(listed.get("retryAfter")):
            problems.append(
                f"{where}: reason {reason} {'has' if has_wait else 'lacks'} Retry-After, "
                f"documented retryAfter={listed.get('retryAfter')}"
            )
        return problems
