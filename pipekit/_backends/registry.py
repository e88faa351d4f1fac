"""Registry references and errors, shared by every backend so that all say the same thing."""

from __future__ import annotations

from pipekit.exceptions import (
    InvalidReference,
    RegistryAuthError,
    RegistryError,
    RegistryUnavailable,
    TagNotFound,
)

__all__ = ["registry_error", "registry_of"]


def registry_of(ref: str) -> str:
    """The registry part of an image reference, as the docker CLI reads it."""
    first, sep, _rest = ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def registry_error(message: str, ref: str, action: str) -> RegistryError:
    registry = registry_of(ref)
    text = message.strip()
    low = text.lower()
    if any(s in low for s in ("invalid reference format", "repository name must", "invalid tag", "invalid repository")):
        return InvalidReference(
            f"'{ref}' is not a valid image reference ({text}). Use [REGISTRY/]NAME[:TAG] in lowercase",
            registry=registry,
            reference=ref,
        )
    if any(
        s in low
        for s in (
            "unauthorized",
            "authentication required",
            "no basic auth",
            "incorrect username",
            "denied",
            "forbidden",
            "access to the resource",
        )
    ):
        return RegistryAuthError(
            f"Registry {registry} refused the credentials to {action} {ref} ({text}). Check the username and"
            f" password (or token), or log in with `docker login {registry}`",
            registry=registry,
            reference=ref,
        )
    if any(s in low for s in ("manifest unknown", "not found", "does not exist", "manifest for")):
        return TagNotFound(
            f"{ref} was not found in registry {registry} ({text}). Check the name and tag",
            registry=registry,
            reference=ref,
        )
    if any(
        s in low
        for s in (
            "connection refused",
            "no such host",
            "timeout",
            "dial tcp",
            "eof",
            "connection reset",
            "server gave http response",
            "no route to host",
        )
    ):
        return RegistryUnavailable(
            f"Cannot reach registry {registry} to {action} {ref} ({text})."
            " Check the address and that the registry is up",
            registry=registry,
            reference=ref,
        )
    return RegistryError(f"Registry {registry} failed to {action} {ref}: {text}", registry=registry, reference=ref)
