"""Thin command-line entry points over the ffjax library."""
