"""The native request read into an Encounter: its schemas (also those of the OpenAPI document), the
msgspec fast path and the marshmallow checks. The API, the cases and the CLI all read through it."""
