"""Veeam Backup Enterprise Manager (EM) REST client and XML parsing, shared by every function.

The layer knows EM's protocol and data shapes and nothing about notifications:
`parser` turns response bodies into the typed records of `models`, `client` speaks HTTPS
to EM, and `errors` names everything that can go wrong on the way.
"""
