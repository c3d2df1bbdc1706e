"""The FHIR REST endpoints: thin, they parse, ask the store, and assemble bytes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fhir_gateway.errors import Gone, InvalidRequest, NotFound, PayloadTooLarge
from fhir_gateway.fhir import bundle
from fhir_gateway.fhir.access import AccessContext, Authenticator
from fhir_gateway.fhir.capability import capability_statement
from fhir_gateway.fhir.http import (
    fhir_response,
    negotiate,
    not_modified,
    require_form,
    version_headers,
)
from fhir_gateway.fhir.outcome import warnings_outcome
from fhir_gateway.fhir.search import (
    ParsedSearch,
    encode_cursor,
    parse_lastn,
    parse_search,
    restrict_to_patient,
)
from fhir_gateway.fhir.search_cache import SearchCache
from fhir_gateway.store.base import Cursor, Store, StoredResource
from fhir_gateway.store.data_version import DataVersioned
from fhir_gateway.withings.terminology import code_systems

READABLE_TYPES = ("Observation", "Patient", "Device")
MAX_FORM_BYTES = 64 * 1024

Endpoint = Callable[[Request], Awaitable[Response]]


def _compartment_patient(resource_type: str, resource: dict[str, Any]) -> str | None:
    """The Patient whose compartment holds this resource (FHIR R4 compartmentdefinition-patient)."""
    if resource_type == "Patient":
        return str(resource.get("id"))
    field = "subject" if resource_type == "Observation" else "patient"
    reference = resource.get(field, {}).get("reference", "")
    kind, _, patient_id = reference.rpartition("/")
    return patient_id if kind.endswith("Patient") else None


@dataclass(frozen=True, slots=True)
class _SearchBody:
    json: bytes
    cacheable: bool


class FhirApi:
    def __init__(
        self,
        store: Store,
        authenticator: Authenticator,
        base_url: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        *,
        cache_searches: bool = True,
    ) -> None:
        self.store = store
        self.authenticator = authenticator
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        # Only a store that can say when anything committed gets a response cache.
        self.versioned_store = store if isinstance(store, DataVersioned) else None
        self.search_cache = (
            SearchCache(bundle.bundle_id)
            if cache_searches and self.versioned_store is not None
            else None
        )

    async def access(self, request: Request) -> AccessContext:
        return await self.authenticator.authenticate(request.headers.get("authorization"))

    # -------------------------------------------------------------------- capabilities

    async def metadata(self, request: Request) -> Response:
        media_type = negotiate(request)
        return fhir_response(capability_statement(self.base_url), media_type=media_type)

    async def code_system(self, request: Request) -> Response:
        media_type = negotiate(request)
        await self.access(request)
        wanted = request.path_params["id"]
        for code_system in code_systems():
            if code_system["id"] == wanted:
                return fhir_response(code_system, media_type=media_type)
        raise NotFound(f"CodeSystem/{wanted} is not known")

    # -------------------------------------------------------------------- instance level

    async def _visible(
        self, context: AccessContext, stored: StoredResource | None, label: str
    ) -> StoredResource:
        if stored is None:
            raise NotFound(f"{label} is not known")
        if context.patient_id is not None:
            if stored.deleted:
                # A deletion marker has no content to check the compartment against; look at the
                # last live version so deletions outside the compartment stay invisible.
                versions = await self.store.history(stored.resource_type, stored.id)
                live = next((v for v in versions if not v.deleted), None)
                owner = (
                    _compartment_patient(stored.resource_type, orjson.loads(live.json))
                    if live
                    else None
                )
            else:
                owner = _compartment_patient(stored.resource_type, orjson.loads(stored.json))
            if owner != context.patient_id:
                raise NotFound(f"{label} is not known")
        return stored

    def _resource_type(self, request: Request) -> str:
        resource_type = str(request.path_params["type"])
        if resource_type not in READABLE_TYPES:
            raise NotFound(f"resource type {resource_type!r} is not served here")
        return resource_type

    async def _instance(self, request: Request) -> tuple[str, str, str, StoredResource]:
        """Negotiate, authorise and load the current version of `{type}/{id}` for the caller."""
        media_type = negotiate(request)
        resource_type = self._resource_type(request)
        context = await self.access(request)
        context.require_read(resource_type)
        id_ = request.path_params["id"]
        label = f"{resource_type}/{id_}"
        stored = await self._visible(context, await self.store.read(resource_type, id_), label)
        return media_type, resource_type, label, stored

    @staticmethod
    def _version_response(request: Request, stored: StoredResource, media_type: str) -> Response:
        headers = version_headers(stored)
        if not_modified(request, stored):
            return Response(status_code=304, headers=headers)
        return fhir_response(stored.json, media_type=media_type, headers=headers)

    async def read(self, request: Request) -> Response:
        media_type, _, label, stored = await self._instance(request)
        if stored.deleted:
            raise Gone(f"{label} was deleted")
        return self._version_response(request, stored, media_type)

    async def vread(self, request: Request) -> Response:
        media_type, resource_type, label, current = await self._instance(request)
        try:
            version_id = int(request.path_params["vid"])
        except ValueError:
            raise NotFound(f"version {request.path_params['vid']!r} is not known") from None
        stored = await self.store.vread(resource_type, current.id, version_id)
        if stored is None:
            raise NotFound(f"{label}/_history/{version_id} is not known")
        if stored.deleted:
            raise Gone(f"{label}/_history/{version_id} is a deletion")
        return self._version_response(request, stored, media_type)

    async def instance_history(self, request: Request) -> Response:
        media_type, resource_type, label, current = await self._instance(request)
        versions = await self.store.history(resource_type, current.id)
        body = bundle.history(
            base_url=self.base_url,
            self_url=f"{self.base_url}/{label}/_history",
            versions=versions,
        )
        return fhir_response(body, media_type=media_type)

    # -------------------------------------------------------------------- search

    async def search_get(self, request: Request) -> Response:
        media_type = negotiate(request)
        resource_type = self._resource_type(request)
        # The raw query string identifies a GET search: a cache hit never parses it.
        raw_query: bytes = request.scope["query_string"]
        return await self._search(request, resource_type, raw_query, None, media_type)

    async def search_post(self, request: Request) -> Response:
        media_type = negotiate(request)
        resource_type = self._resource_type(request)
        require_form(request)
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            raise PayloadTooLarge(f"search form larger than {MAX_FORM_BYTES} bytes")
        try:
            form = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise InvalidRequest("the search form is not UTF-8") from None
        # FHIR R4 search §3.1.1.1: parameters may be split between URL and body.
        params = tuple(request.query_params.multi_items() + form)
        return await self._search(request, resource_type, params, params, media_type)

    async def _search(
        self,
        request: Request,
        resource_type: str,
        request_key: bytes | tuple[tuple[str, str], ...],
        params: Sequence[tuple[str, str]] | None,
        media_type: str,
    ) -> Response:
        """`request_key` identifies the parameters as sent; `params` None = the URL's."""
        context = await self.access(request)
        context.require_read(resource_type)
        strict = "handling=strict" in request.headers.get("prefer", "").replace(" ", "")
        cache, versioned, version = self.search_cache, self.versioned_store, 0
        key = (resource_type, request_key, strict, context, media_type)
        if cache is not None and versioned is not None:
            # Probed before the search runs: see search_cache for why that order is safe.
            version = await versioned.data_version()
            cached = cache.get(key, version)
            if cached is not None:
                return fhir_response(cached, media_type=media_type)
        if params is None:
            params = request.query_params.multi_items()
        body = await self._search_body(context, resource_type, params, strict)
        if body.cacheable and cache is not None:
            cache.put(key, version, body.json)
        return fhir_response(body.json, media_type=media_type)

    async def _search_body(
        self,
        context: AccessContext,
        resource_type: str,
        params: Sequence[tuple[str, str]],
        strict: bool,
    ) -> _SearchBody:
        parsed = parse_search(resource_type, params, strict=strict, now=self.clock())
        # The clock (`ap` dates) and cursor pages make an answer unrepeatable or one-off.
        cacheable = not parsed.uses_clock and parsed.query.after is None
        cacheable = cacheable and parsed.query.before is None
        if context.patient_id is not None:
            parsed = restrict_to_patient(parsed, context.patient_id)
        messages = [
            f"parameter {name!r} is not supported and was ignored" for name in parsed.ignored
        ]
        messages += list(parsed.warnings)
        outcome = warnings_outcome(messages) if messages else None
        self_url = bundle.search_url(self.base_url, resource_type, parsed.self_params)

        if parsed.summary_count:
            body = bundle.searchset(
                base_url=self.base_url,
                entries=[],
                links=[("self", self_url)],
                total=await self.store.count(parsed.query),
                outcome=outcome,
            )
            return _SearchBody(body, cacheable)

        page = await self.store.search(parsed.query)
        links = [("self", self_url)] + self._paging_links(
            self_url, parsed, page.resources, page.more
        )
        total: int | None = None
        if parsed.total != "none":
            total = await self.store.count(parsed.query)
        elif parsed.query.after is None and parsed.query.before is None and not page.more:
            total = len(page.resources)
        entries = [bundle.SearchEntry(stored, "match") for stored in page.resources]
        entries += await self._includes(context, parsed, page.resources)
        body = bundle.searchset(
            base_url=self.base_url,
            entries=entries,
            links=links,
            total=total,
            outcome=outcome,
            elements=parsed.elements,
        )
        return _SearchBody(body, cacheable)

    def _paging_links(
        self,
        self_url: str,
        parsed: ParsedSearch,
        rows: list[StoredResource],
        more: bool,
    ) -> list[tuple[str, str]]:
        if not rows:
            return []
        sort = parsed.query.sort
        going_back = parsed.query.before is not None
        has_next = (not going_back and more) or going_back
        has_previous = (going_back and more) or (not going_back and parsed.query.after is not None)
        links: list[tuple[str, str]] = []
        if has_next:
            last = rows[-1]
            cursor = encode_cursor("next", sort, Cursor(last.sort_value(sort.field), last.id))
            links.append(("next", bundle.with_param(self_url, "_page", cursor)))
        if has_previous:
            first = rows[0]
            cursor = encode_cursor("prev", sort, Cursor(first.sort_value(sort.field), first.id))
            links.append(("previous", bundle.with_param(self_url, "_page", cursor)))
        return links

    async def _includes(
        self, context: AccessContext, parsed: ParsedSearch, rows: list[StoredResource]
    ) -> list[bundle.SearchEntry]:
        if not parsed.includes or not rows:
            return []
        wanted: dict[tuple[str, str], None] = {}
        for stored in rows:
            resource = orjson.loads(stored.json)
            for include in parsed.includes:
                field, target = (
                    ("subject", "Patient")
                    if include == "Observation:patient"
                    else ("device", "Device")
                )
                reference = resource.get(field, {}).get("reference", "")
                kind, _, ref_id = reference.rpartition("/")
                if kind.endswith(target) and ref_id:
                    wanted[(target, ref_id)] = None
        included: list[bundle.SearchEntry] = []
        for resource_type, id_ in wanted:
            if not context.can_read(resource_type):
                continue
            included_resource = await self.store.read(resource_type, id_)
            if included_resource is None or included_resource.deleted:
                continue
            if context.patient_id is not None:
                owner = _compartment_patient(resource_type, orjson.loads(included_resource.json))
                if owner != context.patient_id:
                    continue
            included.append(bundle.SearchEntry(included_resource, "include"))
        return included

    async def lastn(self, request: Request) -> Response:
        media_type = negotiate(request)
        context = await self.access(request)
        context.require_read("Observation")
        strict = "handling=strict" in request.headers.get("prefer", "").replace(" ", "")
        params = list(request.query_params.multi_items())
        parsed = parse_lastn(params, strict=strict, now=self.clock())
        if context.patient_id is not None:
            parsed = restrict_to_patient(parsed, context.patient_id)
        rows = await self.store.lastn(parsed.query, parsed.max_per_group)
        self_url = bundle.search_url(self.base_url, "Observation/$lastn", parsed.self_params)
        body = bundle.searchset(
            base_url=self.base_url,
            entries=[bundle.SearchEntry(stored, "match") for stored in rows],
            links=[("self", self_url)],
            total=len(rows),
        )
        return fhir_response(body, media_type=media_type)


def fhir_routes(api: FhirApi) -> list[Route]:
    # Type-level search is the hot path, so it is tried right after /metadata (the one path it
    # would shadow); the others hold a slash it cannot match.
    return [
        Route("/metadata", api.metadata, methods=["GET"]),
        Route("/{type}", api.search_get, methods=["GET"]),
        Route("/CodeSystem/{id}", api.code_system, methods=["GET"]),
        Route("/Observation/$lastn", api.lastn, methods=["GET"]),
        Route("/{type}/_search", api.search_post, methods=["POST"]),
        Route("/{type}/{id}/_history/{vid}", api.vread, methods=["GET"]),
        Route("/{type}/{id}/_history", api.instance_history, methods=["GET"]),
        Route("/{type}/{id}", api.read, methods=["GET"]),
    ]
