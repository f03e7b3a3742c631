"""The judge client never follows a redirect (issue 21 item 4): the API key goes to the configured endpoint only,
never to the host a 3xx names (two servers on 127.0.0.1, different ports)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lmm.evaluation.judge import ChatClient, JudgeConfig, JudgeError


class Recorder:
    """A server on 127.0.0.1 that records every request (any method) and answers ``status`` with ``headers``."""

    def __init__(self, status=200, headers=None):
        self.requests = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                recorder.requests.append({"method": self.command, "headers": dict(self.headers)})
                body = json.dumps({"choices": [{"message": {"content": "9 9"}}]}).encode()
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _any  # noqa: N815 - http.server API

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("key", ["secret", None])
def test_the_client_never_follows_a_redirect_so_the_key_stays_with_the_endpoint(code, key, monkeypatch):
    """A redirect to another host (here another port) must never receive the Authorization header: the client
    refuses every redirect with a JudgeError naming where it pointed."""
    if key:
        monkeypatch.setenv("LMM_TEST_JUDGE_KEY", key)
    else:
        monkeypatch.delenv("LMM_TEST_JUDGE_KEY", raising=False)
    other = Recorder()
    endpoint = Recorder(code, {"Location": f"{other.url}/v1/chat/completions"})
    try:
        client = ChatClient(JudgeConfig(base_url=f"{endpoint.url}/v1", model="judge-x", timeout_s=5,
                                        retry_wait_s=0.01, api_key_env="LMM_TEST_JUDGE_KEY"))
        with pytest.raises(JudgeError, match=rf"redirected \(HTTP {code}\) to {other.url}/v1/chat/completions"):
            client.complete([{"role": "user", "content": "hi"}], temperature=0, max_tokens=3)
    finally:
        endpoint.close()
        other.close()
    assert len(endpoint.requests) == 1 and other.requests == []
    assert endpoint.requests[0]["headers"].get("Authorization") == (f"Bearer {key}" if key else None)
