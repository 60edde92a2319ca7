"""A client for a running ``glassbox serve``: completions with the monitors' decisions,
monitor management, and the live event stream. Standard library only (urllib)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Iterator

from ._native import GlassboxError


class ServerError(GlassboxError):
    """The server refused a request: ``status`` is the HTTP status, the message the server's,
    ``body`` the reply (a prompt a monitor blocked has the decisions under ``glassbox``)."""

    def __init__(self, status: int, message: str, body: Any = None):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.body = body


class Client:
    """``Client("http://127.0.0.1:8080", api_key="…")``; the key may be omitted when the
    server has none configured."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 120.0):
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def _request(self, method: str, path: str, body: Any = None) -> urllib.request.Request:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        return req

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            with urllib.request.urlopen(self._request(method, path, body), timeout=self.timeout) as r:
                text = r.read().decode()
        except urllib.error.HTTPError as e:
            raw = e.read().decode(errors="replace")
            try:
                body = json.loads(raw)
                message = body["error"]["message"]
            except (ValueError, KeyError, TypeError):
                body, message = None, raw or e.reason
            raise ServerError(e.code, message, body) from None
        except urllib.error.URLError as e:
            raise GlassboxError(f"cannot reach {self.url}: {e.reason}") from None
        return json.loads(text) if text.strip().startswith(("{", "[")) else text

    def healthy(self) -> bool:
        try:
            return self._call("GET", "/healthz") == "ok"
        except GlassboxError:
            return False

    def config(self) -> dict[str, Any]:
        """The deployment in force (model, dictionaries, probes, monitors, limits)."""
        return self._call("GET", "/v1/config")

    def complete(self, prompt: str, **params: Any) -> dict[str, Any]:
        """``/v1/completions`` (OpenAI's fields: max_tokens, temperature, top_p, seed, stop,
        …). The reply's ``glassbox`` entry holds the monitors' firings and any block."""
        return self._call("POST", "/v1/completions", {"prompt": prompt, **params})

    def chat(self, messages: list[dict[str, str]], **params: Any) -> dict[str, Any]:
        """``/v1/chat/completions``, with the monitors' decisions under ``glassbox``."""
        return self._call("POST", "/v1/chat/completions", {"messages": messages, **params})

    def embed(self, texts: str | list[str]) -> list[list[float]]:
        reply = self._call("POST", "/v1/embeddings", {"input": texts})
        return [row["embedding"] for row in reply["data"]]

    def monitors(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/monitors")["monitors"]

    def add_monitor(self, monitor: dict[str, Any]) -> dict[str, Any]:
        """Adds a monitor (``{"name", "when", "action", …}`` as in deploy.toml); audited."""
        return self._call("POST", "/v1/monitors", monitor)

    def remove_monitor(self, name: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/monitors/{name}")

    def events(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """The live stream of firings, blocks and monitor changes: ``(kind, data)`` pairs, as
        they happen (blocks until the next one; break out of the loop to stop)."""
        try:
            resp = urllib.request.urlopen(self._request("GET", "/v1/events"), timeout=None)
        except urllib.error.HTTPError as e:
            raise ServerError(e.code, e.read().decode(errors="replace")) from None
        kind, data = "message", []
        with resp:
            for raw in resp:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())
                elif not line and data:
                    text = "\n".join(data)
                    try:
                        yield kind, json.loads(text)
                    except ValueError:
                        yield kind, {"text": text}
                    kind, data = "message", []
