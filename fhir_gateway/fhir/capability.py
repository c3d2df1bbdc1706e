"""The CapabilityStatement, generated from the search-parameter registry the parser uses. Pure."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from fhir_gateway import __version__
from fhir_gateway.fhir.registry import RESOURCES, RESULT_PARAMETERS

VITAL_SIGNS_PROFILES = (
    "http://hl7.org/fhir/StructureDefinition/vitalsigns",
    "http://hl7.org/fhir/StructureDefinition/bodyweight",
    "http://hl7.org/fhir/StructureDefinition/bodyheight",
    "http://hl7.org/fhir/StructureDefinition/bp",
    "http://hl7.org/fhir/StructureDefinition/heartrate",
    "http://hl7.org/fhir/StructureDefinition/bodytemp",
    "http://hl7.org/fhir/StructureDefinition/oxygensat",
)
_STARTED = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _resource(resource_type: str) -> dict[str, Any]:
    entry = RESOURCES[resource_type]
    resource: dict[str, Any] = {
        "type": resource_type,
        "interaction": [
            {"code": code} for code in ("read", "vread", "history-instance", "search-type")
        ],
        "versioning": "versioned",
        "readHistory": True,
        "updateCreate": False,
        "conditionalCreate": False,
        "conditionalRead": "full-support",
        "conditionalUpdate": False,
        "conditionalDelete": "not-supported",
        "searchInclude": list(entry.includes),
        "searchParam": [
            {
                "name": param.name,
                "definition": param.definition,
                "type": param.type,
                "documentation": param.documentation,
            }
            for param in entry.parameters
        ],
    }
    if resource_type == "Observation":
        resource["supportedProfile"] = list(VITAL_SIGNS_PROFILES)
    if entry.operations:
        resource["operation"] = [
            {"name": op.code, "definition": op.definition, "documentation": op.documentation}
            for op in entry.operations
        ]
    return resource


@lru_cache(maxsize=8)
def capability_statement(base_url: str) -> dict[str, Any]:
    """What this server does, for `GET /metadata` (FHIR R4 capabilitystatement.html)."""
    return {
        "resourceType": "CapabilityStatement",
        "id": "fhir-gateway",
        "url": f"{base_url}/metadata",
        "name": "FhirGateway",
        "title": "fhir-gateway: Withings measurements as FHIR R4 Observations",
        "status": "active",
        "experimental": False,
        "date": _STARTED,
        "publisher": "fhir-gateway",
        "kind": "instance",
        "software": {"name": "fhir-gateway", "version": __version__},
        "implementation": {"description": "fhir-gateway FHIR R4 facade", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "documentation": "Every interaction except GET /metadata needs a Bearer token.",
                "security": {
                    "cors": False,
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/"
                                    "restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ],
                            "text": "Bearer tokens today (fhir-gateway token create); SMART App "
                            "Launch scopes (patient/*.rs, system/*.rs) are already honoured.",
                        }
                    ],
                    "description": "Authorization: Bearer <token>; tokens bound to a patient see "
                    "only that patient's compartment.",
                },
                "resource": [_resource(resource_type) for resource_type in RESOURCES]
                + [
                    {
                        "type": "CodeSystem",
                        "interaction": [{"code": "read"}],
                        "documentation": "Withings code systems, e.g. withings-meastype.",
                    }
                ],
                "searchParam": [
                    {"name": param.name, "type": param.type, "documentation": param.documentation}
                    for param in RESULT_PARAMETERS
                    if param.name.startswith("_") and param.name not in {"_format", "_include"}
                ],
            }
        ],
    }
