"""A project served by real servers in the tests: see tests/test_servers.py."""
