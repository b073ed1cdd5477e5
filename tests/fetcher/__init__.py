"""Tests for the fetcher package."""
