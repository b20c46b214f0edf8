import CRTraceDeflate
import Foundation
import CRTraceZlib

/// Deflate (zlib's), inflate and CRC-32 (libdeflate's), as the format uses them: raw deflate streams (no zlib or
/// gzip wrapper), inflated into a buffer of known size.
enum Zlib {
    /// How hard deflate works. Routing ids are nearly incompressible for LZ77, so they are
    /// Huffman-only; the byte planes of floats use a level (spec/format.md §6.4).
    enum Strategy: Sendable {
        case huffmanOnly
        case level(Int32)
    }

    /// CRC-32 (the value of zlib's `crc32`) of `bytes`, continuing from `seed`.
    static func crc32(_ bytes: [UInt8], seed: UInt32 = 0) -> UInt32 {
        bytes.withUnsafeBytes { crc32($0, seed: seed) }
    }

    /// CRC-32 of a slice.
    static func crc32(_ bytes: ArraySlice<UInt8>, seed: UInt32 = 0) -> UInt32 {
        bytes.withUnsafeBytes { crc32($0, seed: seed) }
    }

    /// CRC-32 of raw memory (libdeflate's, which uses carry-less multiplication where the CPU has it).
    static func crc32(_ raw: UnsafeRawBufferPointer, seed: UInt32 = 0) -> UInt32 {
        guard let base = raw.baseAddress, raw.count > 0 else { return seed }
        return libdeflate_crc32(seed, base, raw.count)
    }

    /// Raw-deflates `input` in one call.
    static func deflate(_ input: [UInt8], strategy: Strategy) -> [UInt8] {
        input.withUnsafeBufferPointer { deflate($0, strategy: strategy, final: true) }
    }

    /// Raw-deflates a byte-shuffled column as one stream of `count` equal planes, each ended on a
    /// byte boundary (a sync flush) and coded on its own: with `strategy`, or as stored blocks when
    /// the plane's byte entropy is over 7.84 bits (coding would save under 2 %: the low mantissa
    /// bytes of floats), which inflate at memory speed. No block refers to another plane, so the
    /// concatenation is one valid deflate stream (RFC 1951 §3.2.3–3.2.4).
    static func deflate(planes input: [UInt8], count: Int, strategy: Strategy) -> [UInt8] {
        guard count > 1, input.count % count == 0, input.count >= count else { return deflate(input, strategy: strategy) }
        let n = input.count / count
        var out: [UInt8] = []
        input.withUnsafeBufferPointer { all in
            for p in 0..<count {
                let plane = UnsafeBufferPointer(rebasing: all[(p * n)..<((p + 1) * n)])
                let incompressible = byteEntropy(plane) > 7.84
                out.append(contentsOf: deflate(plane, strategy: incompressible ? .level(0) : strategy, final: p == count - 1))
            }
        }
        return out
    }

    /// Shannon entropy of the bytes, in bits per byte.
    static func byteEntropy(_ bytes: UnsafeBufferPointer<UInt8>) -> Double {
        guard !bytes.isEmpty else { return 0 }
        var counts = [Int](repeating: 0, count: 256)
        for b in bytes { counts[Int(b)] &+= 1 }
        let n = Double(bytes.count)
        return counts.reduce(0.0) { h, c in c == 0 ? h : h - Double(c) / n * log2(Double(c) / n) }
    }

    /// Raw-deflates `input`; with `final` false the output ends with a sync flush instead of the
    /// stream's last block, so that another stream's blocks may follow.
    private static func deflate(_ input: UnsafeBufferPointer<UInt8>, strategy: Strategy, final: Bool) -> [UInt8] {
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
        let produced: Int = out.withUnsafeMutableBufferPointer { outp in
            stream.next_in = UnsafeMutablePointer(mutating: input.baseAddress)
            stream.avail_in = uInt(input.count)
            stream.next_out = outp.baseAddress
            stream.avail_out = uInt(outp.count)
            let r = CRTraceZlib.deflate(&stream, final ? Z_FINISH : Z_SYNC_FLUSH)
            precondition(r == (final ? Z_STREAM_END : Z_OK) && stream.avail_in == 0, "deflate did not finish: \(r)")
            return outp.count - Int(stream.avail_out)
        }
        out.removeSubrange(produced...)
        return out
    }

    /// Inflates a raw deflate stream that must produce exactly `rawLength` bytes and end.
    ///
    /// Never writes more than `rawLength` bytes, so a decompression bomb fails instead of growing.
    /// Decoding is libdeflate's (whole-buffer, 1.3–2× zlib's speed on rtrace's columns).
    static func inflate(_ input: ArraySlice<UInt8>, rawLength: Int) throws(TraceError) -> [UInt8] {
        var failure: TraceError? = nil
        // Not zero-filled first: inflate writes every byte or fails (and then the array is dropped).
        let out = [UInt8](unsafeUninitializedCapacity: rawLength) { o, count in
            count = rawLength
            input.withUnsafeBytes { i in
                do throws(TraceError) { try inflate(i, into: UnsafeMutableRawBufferPointer(o)) } catch { failure = error }
            }
            if failure != nil { o.initialize(repeating: 0) }
        }
        if let failure { throw failure }
        return out
    }

    /// Inflates `input`, a raw deflate stream that must fill `output` exactly and end there.
    static func inflate(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) throws(TraceError) {
        guard let d = libdeflate_alloc_decompressor() else { throw TraceError(.io, "cannot allocate a libdeflate decompressor") }
        defer { libdeflate_free_decompressor(d) }
        var consumed = 0, produced = 0
        // libdeflate wants non-null pointers even for empty buffers.
        var none: UInt8 = 0
        let rc = withUnsafeMutablePointer(to: &none) { z in
            libdeflate_deflate_decompress_ex(
                d, input.baseAddress ?? UnsafeRawPointer(z), input.count,
                output.baseAddress ?? UnsafeMutableRawPointer(z), output.count, &consumed, &produced)
        }
        switch rc {
        case LIBDEFLATE_SUCCESS:
            if produced != output.count {
                throw TraceError(.corrupt, "deflate stream gives \(produced) bytes, raw_len says \(output.count)")
            }
            if consumed != input.count {
                throw TraceError(.corrupt, "deflate stream ends \(input.count - consumed) bytes before the stored length")
            }
        case LIBDEFLATE_INSUFFICIENT_SPACE:
            throw TraceError(.corrupt, "deflate stream gives more than raw_len \(output.count) bytes")
        default:
            throw TraceError(.corrupt, "deflate stream is invalid or ends early (libdeflate \(rc.rawValue))")
        }
    }
}
