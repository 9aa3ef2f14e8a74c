"""``cni-bridge list``: what is attached on this host, and whether it is intact. Read-only.

- sources.py  the firewall records (stateDir) and the IP reservations (the host-local store),
              read without taking any lock, tolerating files that vanish mid-read
- kernel.py   one link dump, one rule listing per firewall driver and unit, and the checks
              of an attachment's host veth and rules against them
- collect.py  one Entry per attachment, merged from both sources and checked
- render.py   the aligned table and the JSON document
- cli.py      the command line
"""
