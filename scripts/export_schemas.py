#!/usr/bin/env python3
"""Write the JSON Schema of every data-file kind next to its files (a test keeps them current):
personas, protocols, rubrics, studies and gold turns. YAML files point at theirs from their first
line (``# yaml-language-server: $schema=...``), so editors validate while one types.

    .venv/bin/python scripts/export_schemas.py
"""

from __future__ import annotations

from therasim.schemas import SCHEMAS, write_schema

if __name__ == "__main__":
    for name in SCHEMAS:
        print(write_schema(name))
