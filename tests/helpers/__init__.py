"""Helpers shared by the test packages: channel pairs, CLI runners, QEMUFile scripts."""
