"""fhir-gateway: Withings measurements as HL7 FHIR R4 Observations."""

__version__ = "0.1.0"
