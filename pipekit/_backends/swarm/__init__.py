"""The Swarm backend: each stage a one-task service, its commands through its node's engine."""
