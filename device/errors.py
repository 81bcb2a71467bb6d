"""The exceptions facegate raises.

Every error a user can cause (bad input, bad config, missing hardware) is a
:class:`DeviceError` subclass whose message names the offending input and, where
there is one, the fix. The CLI prints the message and exits non-zero; it never
shows a traceback for these.
"""

from __future__ import annotations


class DeviceError(Exception):
    """Base class of every error facegate reports to a person."""


class ConfigError(DeviceError):
    """A configuration file or value is invalid."""


class ModelError(DeviceError):
    """A model file is missing, corrupted, of the wrong kind, or cannot run."""


class HardwareError(DeviceError):
    """A hardware device (Edge TPU, camera) is absent or unusable."""


class CameraError(DeviceError):
    """A frame source cannot be opened or has failed."""


class ImageError(DeviceError):
    """An image file cannot be read or decoded."""


class GalleryError(DeviceError):
    """The gallery database is missing, inconsistent or refused an operation."""


class EnrollmentError(GalleryError):
    """An enrollment batch was rejected as a whole."""


class SyncError(DeviceError):
    """A gallery update bundle was refused."""


class PublishError(DeviceError):
    """The MQTT publisher cannot deliver events."""


class AuditError(DeviceError):
    """The audit log is missing or fails verification."""


class PrivacyError(PublishError, AuditError):
    """A payload was refused because it holds, or looks like it holds, biometric data.

    It is both a :class:`PublishError` and an :class:`AuditError`: the one policy in
    :mod:`device.privacy` guards the network and the audit log alike, and callers of
    either keep catching the error they always caught.
    """
