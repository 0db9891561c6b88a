"""Sluice: a streaming gateway for OpenAI-compatible chat models."""

__version__ = "0.1.0"
