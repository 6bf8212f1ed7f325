"""Integrations of ucm with serving engines (``ucm.integration.vllm``)."""
