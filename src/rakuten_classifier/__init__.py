"""Multimodal product type classification for the Rakuten France catalogue."""
