"""Build-time tools; not part of the running gateway (server/)."""
