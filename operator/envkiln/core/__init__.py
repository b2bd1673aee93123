"""The pure core: names, models, the hash, decisions and renderers. No I/O, no kubernetes, no kopf."""
