"""autotl's built-in search spaces (default.yaml, quick.yaml), shipped as package data."""
