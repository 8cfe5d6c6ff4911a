"""Synergos Worker: serves one party's data to the federation without ever sending a row."""
