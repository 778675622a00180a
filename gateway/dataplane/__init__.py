"""Data planes that enforce gatewise's policy outside Python: NGINX + Lua (``nginx.py``).

The decision core stays ``gateway/decision.py``; a data plane runs a port of it on a
compiled bundle (``bundle.py``) and gets new versions and scores pushed live (``sync.py``).
"""

from __future__ import annotations
