"""The client of a running `glassbox serve`: completions carry the monitors' decisions,
monitors change through it (audited), and the event stream delivers firings."""

from __future__ import annotations

import queue
import subprocess
import threading

import pytest

import glassbox as gb
from conftest import glassbox_bin


@pytest.fixture(scope="module")
def server(built, tiny_gpt2, tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    config = d / "deploy.toml"
    config.write_text(
        f'model = "{tiny_gpt2}"\n'
        f'[[dictionary]]\nname = "d"\npath = "{built / "dict"}"\n'
        '[[monitor]]\nname = "every-token"\ndictionary = "d"\nwhen = "anomaly >= 0"\naction = "log"\n'
        f'[audit]\npath = "{d / "audit.jsonl"}"\n'
    )
    proc = subprocess.Popen(
        [str(glassbox_bin()), "serve", "--config", str(config), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    line = proc.stdout.readline()
    assert line.startswith("listening on "), f"the server did not start: {line!r}"
    yield gb.Client(line.split()[-1]), d / "audit.jsonl"
    proc.kill()
    proc.wait()


def test_completions_carry_decisions_and_monitors_change(server):
    client, audit = server
    assert client.healthy()
    reply = client.complete("Glassbox reads the model", max_tokens=4)
    decisions = reply["glassbox"]
    assert decisions["blocked"] is None
    assert {f["monitor"] for f in decisions["firings"]} == {"every-token"}
    assert [m["name"] for m in client.monitors()] == ["every-token"]

    client.add_monitor({"name": "stop-all", "dictionary": "d", "when": "anomaly >= 0", "action": "block"})
    # A prompt the monitor blocks is refused (403) with the decisions in the reply.
    with pytest.raises(gb.ServerError, match="stop-all") as blocked:
        client.complete("Glassbox reads the model", max_tokens=4)
    assert blocked.value.status == 403
    assert blocked.value.body["glassbox"]["blocked"]["monitor"] == "stop-all"
    with pytest.raises(gb.ServerError, match="exists") as e:
        client.add_monitor({"name": "stop-all", "dictionary": "d", "when": "anomaly >= 0", "action": "block"})
    assert e.value.status == 409
    client.remove_monitor("stop-all")
    assert client.complete("Glassbox", max_tokens=2)["glassbox"]["blocked"] is None
    # Both changes are in the audit log.
    log = audit.read_text()
    assert "monitor.create" in log and "monitor.delete" in log


def test_the_event_stream_delivers_firings(server):
    client, _ = server
    events: queue.Queue = queue.Queue()

    def follow():
        for kind, data in client.events():
            events.put((kind, data))

    threading.Thread(target=follow, daemon=True).start()
    # The stream subscribes when it connects; keep asking until an event arrives.
    for _ in range(20):
        client.complete("Tell me more", max_tokens=2)
        try:
            kind, data = events.get(timeout=1.0)
            break
        except queue.Empty:
            continue
    else:
        pytest.fail("no event arrived on the stream")
    assert kind in {"firing", "request"} and data["route"].endswith("completions")


def test_an_unreachable_server_is_a_clear_error():
    client = gb.Client("http://127.0.0.1:9")
    assert not client.healthy()
    with pytest.raises(gb.GlassboxError, match="cannot reach"):
        client.config()
