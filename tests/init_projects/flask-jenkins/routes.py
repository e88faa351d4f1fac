"""The routes, registered on any Flask app (so tests can build their own)."""


def configure_routes(app):
    @app.route("/")
    def hello():
        return "Hello from the fixture"

    @app.route("/echo/<word>")
    def echo(word):
        return {"word": word}
