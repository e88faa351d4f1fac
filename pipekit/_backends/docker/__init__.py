"""The Docker backend: one container per stage over the docker SDK (engine, images, services, files,
housekeeping, the attached shell, BuildKit, Dockerfiles).
"""
