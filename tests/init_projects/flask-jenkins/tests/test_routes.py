from flask import Flask

from routes import configure_routes


def _client():
    app = Flask(__name__)
    configure_routes(app)
    return app.test_client()


def test_hello():
    response = _client().get("/")
    assert response.status_code == 200
    assert response.get_data() == b"Hello from the fixture"


def test_echo():
    assert _client().get("/echo/pipekit").get_json() == {"word": "pipekit"}
