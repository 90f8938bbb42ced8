"""tentaculo_link: the single token-protected HTTP entrypoint (:8000)."""
