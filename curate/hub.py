"""Is the Hugging Face hub reachable? One quick connection attempt per process, so a hub name on an offline machine
fails at once (instead of the hub client's retries) with a line saying how to point at a local folder."""
from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

OFFLINE_ENV = "HF_HUB_OFFLINE"
CONNECT_SECONDS = 3.0


def hub_endpoint() -> str:
    """The hub's address ($HF_ENDPOINT, else https://huggingface.co)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


@functools.lru_cache(maxsize=1)
def hub_offline() -> bool:
    """True when $HF_HUB_OFFLINE is set, or the hub's host cannot be resolved or connected to within a few seconds."""
    if os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    url = urlparse(hub_endpoint())
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_SECONDS):
            return False
    except OSError:
        return True


def offline_message(name: str, revision: str | None = None) -> str:
    """The one line for a hub name that is neither a local folder nor in the local cache on an offline machine."""
    rev = f" --revision {revision}" if revision else ""
    return (f"{name}{f' (revision {revision})' if revision else ''}: not a local folder, not in the local Hugging Face "
            f"cache, and this machine is offline ({hub_endpoint()} unreachable{'; ' + OFFLINE_ENV + ' is set' if os.environ.get(OFFLINE_ENV) else ''}); "
            f"download it where there is network (`huggingface-cli download {name}{rev} --local-dir DIR`) and pass "
            "the folder DIR as the model")
