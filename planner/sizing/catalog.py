"""The price catalogue: what a device costs an hour, per kind, and the node shapes it comes in.

A JSON document, strictly validated like a cluster (unknown keys, a negative or zero price,
an unknown device kind, a node shape that does not divide the server it is cut from: each
refused naming the field). The default one (`default_catalog.json`) names the source and
the date of every price; a user replaces it with their own contract prices (``--catalog``).

    {"schema_version": 1, "name": "my contract", "max_nodes": 32,
     "offers": [{"kind": "h100-80gb", "usd_per_device_hour": 2.5, "server_devices": 8,
                 "node_sizes": [8], "source": "our 2026 contract", "date": "2026-11"}]}
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from planner.devices import device_kind
from planner.errors import PlannerError
from planner.limits import MAX_DEVICES_PER_NODE, MAX_NODES, MAX_TEXT_CHARS
from planner.strict import StrictModel, parse_document, read_document

SCHEMA_VERSION = 1
DEFAULT_PATH = Path(__file__).with_name("default_catalog.json")
MAX_OFFERS = 256
MAX_USD_PER_DEVICE_HOUR = 10_000.0  # a GPU-hour costs dollars; more is a typo for a node's or a month's price
DATE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?$")


class CatalogError(PlannerError):
    """A price catalogue is invalid; the message names the field."""


class Offer(StrictModel):
    """One device kind for rent: its price per device and hour, and the node shapes it comes in."""

    kind: str = Field(description="Device kind id from the catalog of kinds, e.g. 'h100-80gb'.")
    usd_per_device_hour: float = Field(
        gt=0, le=MAX_USD_PER_DEVICE_HOUR, description="US dollars per device and hour."
    )
    server_devices: int = Field(
        ge=1, le=MAX_DEVICES_PER_NODE, description="Devices in the server a node is cut from (8 in a DGX)."
    )
    node_sizes: list[int] = Field(
        min_length=1,
        max_length=64,
        description="Devices per node on offer; each divides server_devices (1, 2, 4 or 8 of 8).",
    )
    source: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, description="Where the price comes from.")
    date: str = Field(description="When the price was published or agreed: YYYY-MM or YYYY-MM-DD.")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        found = device_kind(kind)  # raises naming the kinds there are
        if found.memory_bytes is None:
            raise ValueError(f"{kind!r} has no memory of its own to plan with (a CPU rank's is its host's)")
        return found.id

    @field_validator("date")
    @classmethod
    def _a_date(cls, date: str) -> str:
        if not DATE.match(date):
            raise ValueError(f"{date[:40]!r} is not a date as YYYY-MM or YYYY-MM-DD")
        return date

    @model_validator(mode="after")
    def _sizes_divide(self) -> Offer:
        if len(set(self.node_sizes)) != len(self.node_sizes):
            raise ValueError(f"node_sizes: {self.node_sizes} names a size twice")
        for size in self.node_sizes:
            if size < 1 or self.server_devices % size:
                raise ValueError(
                    f"node_sizes: {size} does not divide the server's {self.server_devices} devices "
                    f"(server_devices); a node is a whole part of a server"
                )
        return self


class PriceCatalog(StrictModel):
    schema_version: int = SCHEMA_VERSION
    name: str = Field(default="", max_length=MAX_TEXT_CHARS)
    max_nodes: int = Field(ge=1, le=MAX_NODES, description="The most nodes a cluster may have.")
    offers: list[Offer] = Field(min_length=1, max_length=MAX_OFFERS)

    @field_validator("schema_version")
    @classmethod
    def _version(cls, version: int) -> int:
        if version != SCHEMA_VERSION:
            raise ValueError(f"schema_version {version} is not {SCHEMA_VERSION}, the one this version reads")
        return version

    @model_validator(mode="after")
    def _one_offer_per_kind(self) -> PriceCatalog:
        kinds = [o.kind for o in self.offers]
        twice = sorted({k for k in kinds if kinds.count(k) > 1})
        if twice:
            raise ValueError(f"offers: kind {twice[0]!r} is offered twice; give it one price")
        return self

    def offer(self, kind: str) -> Offer:
        wanted = device_kind(kind).id
        for o in self.offers:
            if o.kind == wanted:
                return o
        raise CatalogError(
            f"kind {kind!r} is not in the catalogue {self.name!r}; it offers {', '.join(self.kinds())}"
        )

    def kinds(self) -> list[str]:
        return [o.kind for o in self.offers]


def catalog_from_json(data: str | bytes, origin: str = "catalogue JSON") -> PriceCatalog:
    return parse_document(PriceCatalog, data, origin, CatalogError, "price catalogue")


def load_catalog(path: str | Path) -> PriceCatalog:
    return read_document(PriceCatalog, path, CatalogError, "price catalogue")


def default_catalog() -> PriceCatalog:
    """The catalogue shipped with the planner: public list prices, each with its source and date."""
    return catalog_from_json(DEFAULT_PATH.read_bytes(), "the default catalogue")
