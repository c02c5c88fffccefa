"""SQL identifiers: the one quoting helper, and safe column names for fields that come from input files.

Column names taken from user files (JSONL keys, CSV headers, Parquet columns) end up in DuckDB DDL and
queries, where they cannot be bound as parameters. So every identifier is quoted with `quote_ident`
(nothing else builds one), and input field names are first mapped to a safe set: ASCII letters, digits
and '_', at most 64 characters, unique case-insensitively (DuckDB matches identifiers case-insensitively,
so `Source` and `source` would otherwise be one column and a value would be lost).
"""

from __future__ import annotations

import re
import unicodedata

MAX_IDENT_LEN = 64
_SAFE_RE = re.compile(r"^[A-Za-z0-9_]{1,%d}$" % MAX_IDENT_LEN)
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9_]+")


def quote_ident(name: str) -> str:
    """`name` as a quoted DuckDB identifier; an embedded `"` is doubled, so the name cannot end the quote."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ValueError(f"not a usable SQL identifier: {name!r}")
    return '"' + name.replace('"', '""') + '"'


def is_safe_ident(name) -> bool:
    return isinstance(name, str) and bool(_SAFE_RE.match(name))


def _sanitize(name) -> str:
    """A safe spelling of `name`: accents dropped (année -> annee), runs of other characters -> '_'."""
    s = unicodedata.normalize("NFKD", str(name))
    s = "".join(ch for ch in s if not unicodedata.combining(ch))
    s = _UNSAFE_RUN.sub("_", s).strip("_")
    return s[:MAX_IDENT_LEN] or "unnamed"


def safe_column_names(fields: list, reserved: tuple[str, ...] = (), reserved_prefix: str = "meta_") -> dict[int, str]:
    """Position in `fields` -> a safe, case-insensitively unique column name (deterministic: the same
    field list always gives the same names). A field that is already safe and free keeps its name; an
    unsafe one is sanitized; a name that is `reserved` (case-insensitively) gets `reserved_prefix`;
    a name already taken gets `_2`, `_3`, ... in input order. Positions, not names, are the keys, so
    two fields of the same name (CSV headers, Parquet columns) both keep their values."""
    reserved_lower = {r.lower() for r in reserved}
    taken = set(reserved_lower)
    out: dict[int, str] = {}
    for i, f in enumerate(fields):
        base = f if is_safe_ident(f) else _sanitize(f)
        while base.lower() in reserved_lower:
            base = (reserved_prefix + base)[:MAX_IDENT_LEN]
        name, n = base, 1
        while name.lower() in taken:
            n += 1
            suffix = f"_{n}"
            name = base[:MAX_IDENT_LEN - len(suffix)] + suffix
        taken.add(name.lower())
        out[i] = name
    return out
