"""The Azure Resource Graph part of the Azure twin: the one query endpoint, over rows of the
``SpotResources`` table (``tests/fixtures/azure/spot-eviction-rates.json``), because nothing
else plays Resource Graph and meadowrun reads Spot eviction-rate bands from it.

The shapes follow the Resource Graph REST reference, "Resources - Resources"
(learn.microsoft.com/rest/api/azureresourcegraph/resourcegraph/resources/resources, and
``Azure/azure-rest-api-specs`` ``specification/resourcegraph/resource-manager/
Microsoft.ResourceGraph/stable/2021-03-01/examples/ResourcesFilterQuery.json``):

* ``POST /providers/Microsoft.ResourceGraph/resources?api-version=2021-03-01`` with an ARM
  token and ``{"subscriptions": [...], "query": "...", "options": {"resultFormat":
  "objectArray", "$top": n, "$skipToken": "..."}}``;
* 200 ``{"totalRecords", "count", "data", "facets", "resultTruncated", "$skipToken"}``, the
  token present only while more rows follow (the next request sends it back in ``options``);
* errors in ARM's common shape: 401 ``AuthenticationFailed``, 400 ``BadRequest`` (no
  ``api-version``, a query the twin cannot read), 403 ``AuthorizationFailed`` (``refuse``).

It understands the queries meadowrun sends, not Kusto: a table name, ``where <column> =~
'<value>'`` clauses (case-insensitive equality, ``sku.name`` style paths allowed), and one
``project alias = tostring(path), ...`` clause. Rows of subscriptions the request does not
name are not filtered (``SpotResources`` rows are not per subscription).
"""

from __future__ import annotations

import base64
import re
import threading
from typing import Any

from tests.azure_twin_http import ARM_SCOPE, Request, Response, error

PATH = "/providers/microsoft.resourcegraph/resources"
_WHERE = re.compile(r"where\s+([\w.]+)\s*=~\s*'([^']*)'\s*", re.I)
_PROJECTED = re.compile(r"(\w+)\s*=\s*tostring\(\s*([\w.]+)\s*\)")


class GraphTwin:
    def __init__(self, tables: dict[str, list[dict[str, Any]]], page_size: int = 8) -> None:
        self.tables = {name.lower(): rows for name, rows in tables.items()}
        self.page_size = page_size
        self.refuse = False  # answer 403 AuthorizationFailed, as for a caller without Reader
        self.queries: list[dict[str, Any]] = []  # request bodies, for tests
        self._lock = threading.Lock()

    def handle(self, request: Request) -> Response | None:
        if request.path.lower() != PATH:
            return None
        if request.token_scope() != ARM_SCOPE:
            return error(
                401,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing or invalid.",
            )
        if request.method != "POST":
            return error(405, "MethodNotAllowed", "Resource Graph queries are POSTed")
        if "api-version" not in request.query:
            return error(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        body = request.json() or {}
        with self._lock:
            self.queries.append(body)
        if self.refuse:
            return error(
                403,
                "AuthorizationFailed",
                "The client does not have authorization to perform action "
                "'Microsoft.ResourceGraph/resources/read' over scope "
                "'/providers/Microsoft.ResourceGraph' or the scope is invalid.",
            )
        try:
            rows = self._run(str(body.get("query", "")))
        except ValueError as exc:
            return error(400, "BadRequest", f"Please provide a valid query: {exc}")
        options = body.get("options") or {}
        start = _offset(options.get("$skipToken"))
        top = min(int(options.get("$top") or 100), self.page_size)
        page = rows[start : start + top]
        answer: dict[str, Any] = {
            "totalRecords": len(rows),
            "count": len(page),
            "data": page,
            "facets": [],
            "resultTruncated": "false",
        }
        if start + len(page) < len(rows):
            answer["$skipToken"] = base64.b64encode(f"offset:{start + len(page)}".encode()).decode()
        return Response(200, answer)

    def _run(self, query: str) -> list[dict[str, Any]]:
        """The rows ``query`` selects: ``Table | where a =~ 'x' | ... | project ...``."""
        table, *steps = [part.strip() for part in query.split("|")]
        if table.lower() not in self.tables:
            raise ValueError(f"no table {table!r}")
        rows = self.tables[table.lower()]
        for step in steps:
            if m := _WHERE.fullmatch(step):
                path, value = m[1], m[2].lower()
                rows = [r for r in rows if str(_at(r, path)).lower() == value]
            elif step.lower().startswith("project "):
                columns = _PROJECTED.findall(step[len("project ") :])
                if not columns:
                    raise ValueError(f"cannot read {step!r}")
                rows = [{alias: str(_at(r, path) or "") for alias, path in columns} for r in rows]
            else:
                raise ValueError(f"cannot read {step!r}")
        return rows


def _at(row: dict[str, Any], path: str) -> Any:
    value: Any = row
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _offset(token: Any) -> int:
    if not token:
        return 0
    return int(base64.b64decode(str(token)).decode().removeprefix("offset:"))
