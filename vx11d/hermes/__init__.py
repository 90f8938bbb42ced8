"""Hermes: the local LLM worker (llama-cpp-python) behind a UNIX socket."""
