"""The ffrtmp coordinator: a small, stateless aiohttp control plane over Redis."""
