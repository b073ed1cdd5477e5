"""Tests for the streams package."""
