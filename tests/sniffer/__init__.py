"""Tests for the sniffer package."""
