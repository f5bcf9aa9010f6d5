"""This build's op namespace."""

NAMESPACE = "@@namespace@@"
