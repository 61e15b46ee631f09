"""Typed per-video errors. Each carries the ``error_type`` recorded in the ``videos`` table.

The ``error_type`` strings are part of the ``videos`` table contract: users filter and count
on them, so they never change once released (new, more specific types may be added; a new
type subclasses the broader one it refines, so ``except`` clauses keep working).

==================  ========  ===================================================================
error_type          status    meaning
==================  ========  ===================================================================
EmptyFile           error     the file (or archive member) has zero bytes
SourceRead          error     the bytes could not be read (missing, permission, I/O error)
CorruptArchive      error     a tar/zip shard or one of its members is damaged (bad header,
                              bad CRC, unreadable central directory)
UnsafeMemberName    error     an archive member name escapes the archive (``/abs``, ``..``)
UnrecognizedFormat  error     no demuxer recognises the bytes (random bytes, a text file
                              named ``.mp4``)
CorruptVideo        error     a recognised container that cannot be parsed, or a stream that
                              breaks off with a decoder error part way
Truncated           error     the file ends before its own structure says it does (a cut
                              download or upload); no clip of it is written
NoVideoStream       error     a readable container without a video stream (audio-only)
UnsupportedCodec    error     no decode backend here (decord, PyAV) has a decoder for the video
                              stream's codec
UndecodableStream   error     the decoder exists but cannot decode this stream at all (corrupt
                              codec private data / SPS, unsupported profile)
DecodeTimeout       timeout   decoding took longer than ``decode.timeout_s``
TooShort            skipped   fewer frames than one clip spans, with ``short_video = "skip"``
WorkerCrash         error     the worker processing this video died repeatedly
ModelError          error     a model failed on a batch holding this video's clips
Incomplete          error     some of the video's segments never came back from the workers
==================  ========  ===================================================================
"""

from __future__ import annotations


class VideoError(Exception):
    """A problem with one input video: recorded as a ``videos`` row, never fatal to the job."""

    error_type = "VideoError"
    status = "error"


class EmptyFileError(VideoError):
    """Zero bytes: nothing to probe."""

    error_type = "EmptyFile"


class CorruptVideoError(VideoError):
    """A recognised container that cannot be parsed, or a stream that breaks off with a decoder
    error after some frames decoded."""

    error_type = "CorruptVideo"


class UnrecognizedFormatError(CorruptVideoError):
    """No container format matches the bytes (random data, text, a misnamed document)."""

    error_type = "UnrecognizedFormat"


class TruncatedError(CorruptVideoError):
    """The file ends before its structure says it does: an MP4 box (``mdat``/``moov``) runs past
    the end of the file, a tar member's data is cut, or the stream runs out of frames before the
    count its index promises. No clip of a truncated video is written (see ``pipeline.decode``)."""

    error_type = "Truncated"


class NoVideoStreamError(VideoError):
    """A readable container without a video stream (e.g. audio-only)."""

    error_type = "NoVideoStream"


class UnsupportedCodecError(VideoError):
    """No backend has a decoder for the video stream's codec: raised by one backend (decord's
    FFmpeg has no AV1), recorded only when the other lacks one too (``decode.decode_clips``)."""

    error_type = "UnsupportedCodec"


class UndecodableStreamError(VideoError):
    """The codec is known but the decoder cannot open or decode the stream from its first frame
    (e.g. corrupt codec private data: a damaged H.264 SPS/PPS in ``avcC``)."""

    error_type = "UndecodableStream"


class SourceReadError(VideoError):
    """The bytes could not be read (missing object, permission, I/O error)."""

    error_type = "SourceRead"


class CorruptArchiveError(SourceReadError):
    """A tar/zip shard, or one member of it, is damaged: a tar header with a bad checksum (the
    row's ``video_uri`` is ``shard.tar#@OFFSET``), a zip without a readable central directory
    (``shard.zip#``), or a member whose stored data fails its CRC or decompression."""

    error_type = "CorruptArchive"


class UnsafeMemberError(VideoError):
    """An archive member whose name escapes the archive (absolute path or ``..``)."""

    error_type = "UnsafeMemberName"


class DecodeTimeoutError(VideoError):
    """Decoding exceeded ``decode.timeout_s`` (a hung or pathologically slow decoder)."""

    error_type = "DecodeTimeout"
    status = "timeout"


class TooShortError(VideoError):
    """Fewer frames than one clip spans, under the ``short_video = "skip"`` policy."""

    error_type = "TooShort"
    status = "skipped"


class WorkerCrashError(VideoError):
    """The worker processing this video died repeatedly (crash-looping input)."""

    error_type = "WorkerCrash"


def error_class(error_type: str) -> type[VideoError]:
    """The ``VideoError`` subclass recording ``error_type`` (``SourceReadError`` if unknown)."""
    pending, found = [VideoError], {}
    while pending:
        cls = pending.pop()
        found.setdefault(cls.error_type, cls)
        pending.extend(cls.__subclasses__())
    return found.get(error_type, SourceReadError)


class UserError(Exception):
    """An error caused by the request (spec, input, output, query, credentials), not by a bug.

    The CLI prints its message and exits 2 instead of showing a traceback. Not a ``VideoError``:
    these fail the command, not one video.
    """
