"""Access control: API tokens with roles (read, predict, label, admin), stored hashed, checked in constant time.

``TokenStore(project)`` creates, lists and revokes tokens (``modelmill token``);
``Authenticator`` guards HTTP routes with them: 401 without a valid token,
403 without the role, both with a JSON body ``{"error": ...}``.

    >>> allows("admin", "predict"), allows("read", "predict"), allows("label", "label"), allows("predict", "label")
    (True, False, True, False)
"""

from __future__ import annotations

from modelmill.security.auth import MODES, Authenticator, actor
from modelmill.security.tokens import ROLES, Token, TokenStore, allows, hash_token, parse_token

__all__ = [
    "MODES",
    "ROLES",
    "Authenticator",
    "Token",
    "TokenStore",
    "actor",
    "allows",
    "hash_token",
    "parse_token",
]
