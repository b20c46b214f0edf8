import CRTraceZlib

/// zlib's deflate, inflate and CRC-32, as the format uses them: raw deflate streams (no zlib or
/// gzip wrapper), inflated into a buffer of known size.
enum Zlib {
    /// How hard deflate works. Routing ids and floats are nearly incompressible for LZ77, so
    /// Huffman-only is the default for them (spec/format.md §6.3).
    enum Strategy: Sendable {
        case huffmanOnly
        case level(Int32)
    }

    /// CRC-32 (zlib's `crc32`) of `bytes`, continuing from `seed`.
    static func crc32(_ bytes: [UInt8], seed: UInt32 = 0) -> UInt32 {
        bytes.withUnsafeBytes { crc32($0, seed: seed) }
    }

    /// CRC-32 of a slice.
    static func crc32(_ bytes: ArraySlice<UInt8>, seed: UInt32 = 0) -> UInt32 {
        bytes.withUnsafeBytes { crc32($0, seed: seed) }
    }

    /// CRC-32 of raw memory.
    static func crc32(_ raw: UnsafeRawBufferPointer, seed: UInt32 = 0) -> UInt32 {
        guard let base = raw.baseAddress, raw.count > 0 else { return seed }
        var crc = UInt(seed)
        var p = base.assumingMemoryBound(to: Bytef.self)
        var left = raw.count
        while left > 0 {
            let n = min(left, 1 << 30)
            crc = CRTraceZlib.crc32(crc, p, uInt(n))
            p += n
            left -= n
        }
        return UInt32(truncatingIfNeeded: crc)
    }

    /// Raw-deflates `input` in one call.
    static func deflate(_ input: [UInt8], strategy: Strategy) -> [UInt8] {
        var stream = z_stream()
        let (level, strat): (Int32, Int32) = switch strategy {
        case .huffmanOnly: (1, Z_HUFFMAN_ONLY)
        case .level(let l): (l, Z_DEFAULT_STRATEGY)
        }
        let rc = rtrace_deflateInit2(&stream, level, -15, 8, strat)
        precondition(rc == Z_OK, "deflateInit2 failed: \(rc)")
        defer { deflateEnd(&stream) }
        let bound = Int(deflateBound(&stream, uLong(input.count))) + 16
        var out = [UInt8](repeating: 0, count: bound)
        let produced: Int = input.withUnsafeBufferPointer { inp in
            out.withUnsafeMutableBufferPointer { outp in
                stream.next_in = UnsafeMutablePointer(mutating: inp.baseAddress)
                stream.avail_in = uInt(inp.count)
                stream.next_out = outp.baseAddress
                stream.avail_out = uInt(outp.count)
                let r = CRTraceZlib.deflate(&stream, Z_FINISH)
                precondition(r == Z_STREAM_END, "deflate did not finish: \(r)")
                return outp.count - Int(stream.avail_out)
            }
        }
        out.removeSubrange(produced...)
        return out
    }

    /// Inflates a raw deflate stream that must produce exactly `rawLength` bytes and end.
    ///
    /// Never allocates more than `rawLength`, so a decompression bomb fails instead of growing.
    static func inflate(_ input: ArraySlice<UInt8>, rawLength: Int) throws(TraceError) -> [UInt8] {
        var stream = z_stream()
        guard rtrace_inflateInit2(&stream, -15) == Z_OK else {
            throw TraceError(.io, "inflateInit2 failed")
        }
        defer { inflateEnd(&stream) }
        var out = [UInt8](repeating: 0, count: rawLength)
        let result: (Int32, Int, Int) = input.withUnsafeBufferPointer { inp in
            out.withUnsafeMutableBufferPointer { outp in
                stream.next_in = UnsafeMutablePointer(mutating: inp.baseAddress)
                stream.avail_in = uInt(inp.count)
                stream.next_out = outp.baseAddress
                stream.avail_out = uInt(outp.count)
                let r = CRTraceZlib.inflate(&stream, Z_FINISH)
                return (r, outp.count - Int(stream.avail_out), Int(stream.avail_in))
            }
        }
        let (rc, produced, leftover) = result
        if rc == Z_STREAM_END && produced == rawLength && leftover == 0 { return out }
        if rc == Z_STREAM_END && leftover > 0 {
            throw TraceError(.corrupt, "deflate stream ends \(leftover) bytes before the stored length")
        }
        if rc == Z_STREAM_END {
            throw TraceError(.corrupt, "deflate stream gives \(produced) bytes, raw_len says \(rawLength)")
        }
        if rc == Z_BUF_ERROR && produced == rawLength {
            throw TraceError(.corrupt, "deflate stream gives more than raw_len \(rawLength) bytes")
        }
        if rc == Z_BUF_ERROR {
            throw TraceError(.corrupt, "deflate stream ends early: \(produced) of \(rawLength) bytes")
        }
        throw TraceError(.corrupt, "deflate stream is invalid (zlib \(rc)) after \(produced) bytes")
    }
}
