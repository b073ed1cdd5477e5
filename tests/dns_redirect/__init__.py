"""Tests for the dns_redirect package."""
