from hello_world.greetings import greet

__all__ = ["greet"]
