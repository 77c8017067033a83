"""The bottom floor of bench/, shared by every stage and entry point: process and rank info (`dist`), the one
atomic-write helper (`io`) and model/teacher loading with the stand-in flags (`loading`). It imports nothing from
the floors above it (the import-layer contract in `nox -s lint` keeps it so)."""
