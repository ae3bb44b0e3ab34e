"""Helpers shared by the test suites: real Envoy processes, ports, waiting."""
