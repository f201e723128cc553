"""Fakes' side of a mutation's hooks (`WriteHooks`)."""

from __future__ import annotations

from payloadtags.registry import WriteHooks


async def run_hooks(hooks: WriteHooks | None) -> None:
    """What the registry client does with ``hooks`` before a write request leaves: the confirmation
    (in the repository's turn), the last check, then `sent` (True: out). Raising stops there, as it
    does there. The fakes' writes are never told answered: each stays out to the mutation's end."""
    if hooks is None:
        return
    if hooks.before is not None:
        await hooks.before()
    if hooks.check is not None:
        hooks.check()
    if hooks.sent is not None:
        hooks.sent(True)
