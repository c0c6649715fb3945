"""How a Hub id is written: the `hub:` mark and the owner/name pattern (shared by every loader's spec)."""

import re

HUB_PREFIX = "hub:"
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
