"""Admission that takes every block (the default)."""
from __future__ import annotations

from typing import Optional

from ucm.policies.base import AdmissionPolicy, Key


class AlwaysAdmit(AdmissionPolicy):
    name = "always"

    def record(self, key: Key) -> None:
        pass

    def admit(self, key: Key, victim: Optional[Key] = None) -> bool:
        return True
