"""Tests for the heatcache package."""
