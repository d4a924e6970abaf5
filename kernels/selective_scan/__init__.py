"""Selective scan (Mamba's S6 recurrence): reference, vectorised torch and Triton paths."""

from .interface import Backend, BackendUnavailableError, selective_scan
from .reference import selective_scan_reference

__all__ = ["Backend", "BackendUnavailableError", "selective_scan", "selective_scan_reference"]
