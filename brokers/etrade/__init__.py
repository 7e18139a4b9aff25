"""E*TRADE: the adapter, its one HTTP seam (client.py) and the JSON mapping (wire.py)."""
