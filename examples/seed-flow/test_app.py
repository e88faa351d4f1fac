import threading
import unittest
import urllib.request
from http.server import HTTPServer

from app import Handler, greeting


class GreetingTest(unittest.TestCase):
    def test_default_name(self):
        self.assertEqual(greeting(), {"message": "hello, world"})

    def test_named(self):
        self.assertEqual(greeting("pipekit"), {"message": "hello, pipekit"})


class ServerTest(unittest.TestCase):
    def setUp(self):
        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def tearDown(self):
        self.server.shutdown()
        self.server.server_close()

    def test_health(self):
        with urllib.request.urlopen(self.base + "/health") as r:
            self.assertEqual(r.read(), b"ok")

    def test_greets_by_path(self):
        with urllib.request.urlopen(self.base + "/seed") as r:
            self.assertIn(b"hello, seed", r.read())


if __name__ == "__main__":
    unittest.main()
