"""Test-suite package (makes ``from tests.videos import ...`` work under plain ``pytest`` too)."""
