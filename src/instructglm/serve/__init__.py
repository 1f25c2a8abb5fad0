"""serve stage: OpenAI-compatible HTTP API and chat page."""
