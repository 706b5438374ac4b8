"""The EHR interface: CDS Hooks (discovery, the service, feedback), its JWT authentication and
the JWT replay store. Reading and writing FHIR is service/fhir/, shared with the native API."""
