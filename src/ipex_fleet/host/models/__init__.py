"""Declared models: a manifest checked before any host is touched, installed whole and verified."""
