"""Typed per-video errors. Each carries the ``error_type`` recorded in the ``videos`` table."""

from __future__ import annotations


class VideoError(Exception):
    """A problem with one input video: recorded as a ``videos`` row, never fatal to the job."""

    error_type = "VideoError"
    status = "error"


class EmptyFileError(VideoError):
    error_type = "EmptyFile"


class CorruptVideoError(VideoError):
    """Not a parseable container, or its stream breaks off (truncated, random bytes)."""

    error_type = "CorruptVideo"


class NoVideoStreamError(VideoError):
    """A readable container without a video stream (e.g. audio-only)."""

    error_type = "NoVideoStream"


class UnsupportedCodecError(VideoError):
    error_type = "UnsupportedCodec"


class SourceReadError(VideoError):
    """The bytes could not be read (missing object, permission, corrupt archive member)."""

    error_type = "SourceRead"


class UnsafeMemberError(VideoError):
    """An archive member whose name escapes the archive (absolute path or ``..``)."""

    error_type = "UnsafeMemberName"


class DecodeTimeoutError(VideoError):
    error_type = "DecodeTimeout"
    status = "timeout"


class TooShortError(VideoError):
    """Fewer frames than one clip spans, under the ``short_video = "skip"`` policy."""

    error_type = "TooShort"
    status = "skipped"


class WorkerCrashError(VideoError):
    """The worker processing this video died repeatedly (crash-looping input)."""

    error_type = "WorkerCrash"
