"""Operations around the interfaces: request bodies, problem responses, API keys, logs, metrics,
health probes, lifecycle (draining) and connection handling."""
