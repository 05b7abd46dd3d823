"""Stand-ins for the chat APIs, for nats/test-permissions-ttfd.sh, so that the bots start
without reaching the internet. Listens on 127.0.0.1:<port>.

- Telegram Bot API (`/bot<token>/<method>`): `getMe` answers with a bot, `getUpdates`
  with no updates after a pause (like long polling), every other method with `true`.
- Discord (`.../gateway/bot`): the gateway is a closed local port, so the shard keeps
  failing to connect, here, instead of looking up Discord's gateway.

Usage: python3 nats/fake_chat_apis.py <port>
"""

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ME = {
    "id": 1, "is_bot": True, "first_name": "TTFD", "username": "ttfd_test_bot",
    "can_join_groups": True, "can_read_all_group_messages": True,
    "supports_inline_queries": False, "can_connect_to_business": False,
    "has_main_web_app": False,
}


GATEWAY = {
    "url": "ws://127.0.0.1:9", "shards": 1,
    "session_start_limit": {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1},
}


class ChatApis(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.rstrip("/").endswith(("/gateway", "/gateway/bot")):
            return self.answer(GATEWAY)
        method = self.path.rsplit("/", 1)[-1].lower()
        if method == "getme":
            result = ME
        elif method == "getupdates":
            time.sleep(1)
            result = []
        else:
            result = True
        self.answer({"ok": True, "result": result})

    def answer(self, document):
        body = json.dumps(document).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), ChatApis).serve_forever()
