"""The HTTP API for the dispatch hotline and operators. Build it with ``create_app(settings)``."""
