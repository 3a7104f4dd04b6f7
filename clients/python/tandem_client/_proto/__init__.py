"""Stubs generated from proto/tandem/v1/generate.proto when the package is built (not in git)."""
