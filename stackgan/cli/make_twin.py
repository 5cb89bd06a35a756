"""``stackgan make-twin`` (temporary forwarder while the parser moves here)."""

from stackgan.data.twin import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
