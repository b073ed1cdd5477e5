"""Tests for the cache store package."""
