"""The compute SKUs the Azure twin offers: Resource Skus - List (``GET /subscriptions/{s}/
providers/Microsoft.Compute/skus``, ``$filter=location eq '<loc>'``; ``Skus/stable/2021-07-01/
examples/skus/ListAvailableResourceSkusForARegion.json`` in ``Azure/azure-rest-api-specs``):
the rows of a fixture, paged by ``nextLink``; and the lookup a VM create makes of its size."""

from __future__ import annotations

import re
from typing import Any

from tests.azure_twin_http import Request, Response, page_of


class SkuCatalog:
    def __init__(self, skus: list[dict[str, Any]], page_size: int = 8) -> None:
        self.skus = skus
        self.page_size = page_size

    def list(self, request: Request) -> Response:
        where = re.fullmatch(r"\s*location\s+eq\s+'([^']+)'\s*", request.query.get("$filter", ""))
        rows = [s for s in self.skus if where is None or _offered(s, where[1])]
        url = f"{request.base_url}{request.path}"
        page, next_link = page_of(rows, request, "$skiptoken", self.page_size, url)
        return Response(200, {"value": page, "nextLink": next_link})

    def offered(self, name: str, location: str) -> dict[str, Any] | None:
        """The size's SKU if ``location`` offers it without restriction."""
        for sku in self.skus:
            if sku["name"].lower() == name.lower() and _offered(sku, location):
                for restriction in sku.get("restrictions", []):
                    values = [v.lower() for v in restriction.get("values", [])]
                    if restriction.get("type") == "Location" and location.lower() in values:
                        return None
                return sku
        return None


def _offered(sku: dict[str, Any], location: str) -> bool:
    return location.lower() in [loc.lower() for loc in sku.get("locations", [])]
