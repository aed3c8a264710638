"""Tests of psclient; run with /usr/bin/python3 -m unittest from client/python."""
