"""A small, vectorised JPEG Lossless (Process 14, Selection Value 1) encoder for the phantom writer.

pydicom 3 ships decoders for JPEG Lossless SV1 (through pylibjpeg-libjpeg or GDCM) but no encoder, and it is the most
common compressed transfer syntax in CT archives, so the phantom writes it itself. The encoder follows ITU-T T.81
Annex H: predictor 1 (left neighbour; the first column uses the pixel above, the first pixel ``2**(P - 1)``),
differences modulo 2**16, one Huffman table optimised per image (Annex K.2 code lengths, limited to 16 bits).
"""

from __future__ import annotations

import heapq
import struct

import numpy as np
import numpy.typing as npt

_N_CATEGORIES = 17  # SSSS in 0..16


class JpegLosslessEncodeError(ValueError):
    """The image cannot be encoded (wrong dtype, shape or precision)."""


def _differences(samples: npt.NDArray[np.int64], precision: int) -> npt.NDArray[np.int64]:
    """Prediction differences, ``int64 [rows * cols]`` in [-32767, 32768], for predictor 1 (Annex H.1.2.1)."""
    predicted = np.empty_like(samples)
    predicted[:, 1:] = samples[:, :-1]
    predicted[1:, 0] = samples[:-1, 0]
    predicted[0, 0] = 1 << (precision - 1)
    diff = (samples - predicted) % 65536
    diff = np.where(diff > 32768, diff - 65536, diff)
    return diff.reshape(-1)


def _categories(diff: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """SSSS: the bit length of ``|diff|`` (0 for 0, 16 only for 32768)."""
    magnitude = np.abs(diff)
    return np.where(magnitude == 0, 0, np.floor(np.log2(np.maximum(magnitude, 1))).astype(np.int64) + 1)


def _code_lengths(frequencies: list[int]) -> list[int]:
    """Huffman code lengths per symbol (0 = unused), at most 16 bits, never the all-ones code (Annex K.2)."""
    symbols = [index for index, count in enumerate(frequencies) if count > 0]
    reserved = len(frequencies)  # a dummy symbol with frequency 1 keeps the all-ones code word free
    heap: list[tuple[int, int, list[int]]] = [(frequencies[s], s, [s]) for s in symbols]
    heap.append((1, reserved, [reserved]))
    heapq.heapify(heap)
    lengths = dict.fromkeys([*symbols, reserved], 0)
    tie = reserved + 1
    while len(heap) > 1:
        count_a, _, members_a = heapq.heappop(heap)
        count_b, _, members_b = heapq.heappop(heap)
        for member in members_a + members_b:
            lengths[member] += 1
        heapq.heappush(heap, (count_a + count_b, tie, members_a + members_b))
        tie += 1
    bits = [0] * 33
    for length in lengths.values():
        bits[length] += 1
    # Annex K.2, Figure K.3 (Adjust_BITS): move over-long codes up to 16 bits.
    for length in range(32, 16, -1):
        while bits[length] > 0:
            shorter = length - 2
            while bits[shorter] == 0:
                shorter -= 1
            bits[length] -= 2
            bits[length - 1] += 1
            bits[shorter + 1] += 2
            bits[shorter] -= 1
    longest = max(length for length in range(17) if bits[length] > 0)
    bits[longest] -= 1  # drop the reserved symbol (it has the longest code)
    ordered = sorted(symbols, key=lambda s: (lengths[s], s))
    result = [0] * len(frequencies)
    position = 0
    for length in range(1, 17):
        for _ in range(bits[length]):
            result[ordered[position]] = length
            position += 1
    return result


def _canonical_codes(lengths: list[int]) -> tuple[list[int], list[int]]:
    """Canonical code words per symbol and the HUFFVAL order (symbols sorted by code length, then value)."""
    order = sorted((s for s, length in enumerate(lengths) if length > 0), key=lambda s: (lengths[s], s))
    codes = [0] * len(lengths)
    code = 0
    previous = lengths[order[0]]
    for symbol in order:
        code <<= lengths[symbol] - previous
        previous = lengths[symbol]
        codes[symbol] = code
        code += 1
    return codes, order


def _pack_bits(values: npt.NDArray[np.uint64], n_bits: npt.NDArray[np.int64]) -> bytes:
    """Concatenate ``n_bits[i]`` low bits of ``values[i]`` MSB first, pad with ones, byte-stuff 0xFF -> 0xFF 0x00."""
    total = int(n_bits.sum())
    owner = np.repeat(np.arange(values.size), n_bits)
    starts = np.cumsum(n_bits) - n_bits
    shift = (n_bits[owner] - 1 - (np.arange(total) - starts[owner])).astype(np.uint64)
    bits = ((values[owner] >> shift) & np.uint64(1)).astype(np.uint8)
    padding = (-total) % 8
    if padding:
        bits = np.concatenate([bits, np.ones(padding, dtype=np.uint8)])
    packed = np.packbits(bits)
    stuffed = np.insert(packed, np.flatnonzero(packed == 0xFF) + 1, 0)
    return stuffed.tobytes()


def encode_jpeg_lossless_sv1(image: npt.NDArray[np.integer], *, precision: int) -> bytes:
    """Encode one frame as a JPEG Lossless SV1 code stream (SOI .. EOI).

    Args:
        image: ``uint16 | int16 [rows, cols]`` stored pixel values; signed values are encoded as their
            ``precision``-bit two's-complement pattern (the decoder and PixelRepresentation restore the sign).
        precision: sample precision P in bits (BitsStored), 2..16.

    Returns:
        The JPEG code stream bytes (even length is not guaranteed; DICOM encapsulation pads).

    Raises:
        JpegLosslessEncodeError: not a 2-D integer image, or precision outside 2..16.
    """
    if image.ndim != 2 or not np.issubdtype(image.dtype, np.integer):
        raise JpegLosslessEncodeError(f"expected a 2-D integer image, got {image.dtype} {image.shape}")
    if not 2 <= precision <= 16:
        raise JpegLosslessEncodeError(f"precision must be in 2..16 bits, got {precision}")
    rows, cols = image.shape
    samples = image.astype(np.int64) & ((1 << precision) - 1)
    diff = _differences(samples, precision)
    category = _categories(diff)
    frequencies = np.bincount(category, minlength=_N_CATEGORIES).tolist()
    lengths = _code_lengths(frequencies)
    codes, huffval = _canonical_codes(lengths)
    code_of = np.asarray(codes, dtype=np.uint64)[category]
    length_of = np.asarray(lengths, dtype=np.int64)[category]
    extra_bits = np.where(category == 16, 0, category)
    extra = np.where(diff < 0, diff - 1, diff) & ((np.int64(1) << extra_bits) - 1)
    values = (code_of << extra_bits.astype(np.uint64)) | extra.astype(np.uint64)
    scan = _pack_bits(values, length_of + extra_bits)
    counts = [sum(1 for s in huffval if lengths[s] == length) for length in range(1, 17)]
    dht = bytes([0x00, *counts, *huffval])
    sof = struct.pack(">BHHB", precision, rows, cols, 1) + bytes([1, 0x11, 0])
    sos = bytes([1, 1, 0x00, 1, 0, 0])  # Ns=1, Cs=1, Td/Ta=0, Ss=predictor 1, Se=0, Ah/Al=0
    return b"".join(
        [
            b"\xff\xd8",
            b"\xff\xc3" + struct.pack(">H", len(sof) + 2) + sof,
            b"\xff\xc4" + struct.pack(">H", len(dht) + 2) + dht,
            b"\xff\xda" + struct.pack(">H", len(sos) + 2) + sos,
            scan,
            b"\xff\xd9",
        ]
    )
