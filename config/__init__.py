"""Tailor's default configuration: data-quality suites and the example configs."""
