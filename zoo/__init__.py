"""zoo: fetch, verify and install MMF zoo resources (no torch import anywhere in this package)."""
