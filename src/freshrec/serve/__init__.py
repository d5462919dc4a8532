"""Serving: ranked recommendations for users (reads the store, never trains)."""
