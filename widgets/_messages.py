"""The warning box the inspector widgets show above their panels."""

from __future__ import annotations

import html

__all__ = ["messages_html"]


def messages_html(messages: list[str]) -> str:
    """HTML list of ``messages`` in a warning box, or ``""`` when there are none."""
    if not messages:
        return ""
    items = "".join(f"<li>{html.escape(m)}</li>" for m in messages)
    return (
        '<div class="sl-inspect-message" style="background:#fff3cd;color:#664d03;'
        f'padding:4px 8px;border:1px solid #ffe69c"><ul style="margin:0">{items}</ul></div>'
    )
