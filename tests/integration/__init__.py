"""Tests for the integration package."""
