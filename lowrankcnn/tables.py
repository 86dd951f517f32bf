"""Plain-text tables for the CLI and benchmark scripts."""

from __future__ import annotations

from collections.abc import Sequence


def format_table(head: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1, rules: bool = True) -> str:
    """Fixed-width table: the first ``left`` columns left-aligned, the rest right-aligned.

    A row that is ``None`` is drawn as a horizontal rule (e.g. before a totals row).
    """
    body = [r for r in rows if r is not None]
    widths = [max(len(str(r[i])) for r in [head, *body]) for i in range(len(head))]

    def fmt(row: Sequence[str]) -> str:
        cells = [
            str(c).ljust(w) if i < left else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    lines = [fmt(head)] + ([rule] if rules else [])
    lines += [rule if r is None else fmt(r) for r in rows]
    return "\n".join(lines)


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """GitHub-flavoured markdown table (for README and results files)."""
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
