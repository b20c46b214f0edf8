import CRTraceSpill
import Foundation
import RTrace

#if canImport(Glibc)
import Glibc
#endif

/// A temporary file that records wait in while a join holds more than its memory allows.
///
/// The file is unlinked as soon as it is created, so it disappears when the process ends, however
/// it ends. The space of a large record read back is given back to the file system at once (a hole
/// is punched where the file system supports it), so the file holds little more than the records
/// still waiting; small records are written 1 MiB at a time.
final class SpillFile {
    let directory: String
    private let fd: Int32
    private var end = 0
    /// Bytes written in all (records spilled, counted once each).
    private(set) var bytesWritten = 0
    /// Bytes waiting in the file now, and the most that ever waited.
    private(set) var bytesHeld = 0, peakBytesHeld = 0

    /// Creates an unlinked temporary file in `directory`.
    init(directory: String) throws(TraceError) {
        self.directory = directory
        let f = TempFile.createUnlinked(in: directory, prefix: "rtrace-join-")
        guard f >= 0 else {
            throw TraceError(.io, "cannot create a temporary file to spill records to: \(String(cString: strerror(errno))) (set --spill-dir or TMPDIR to a writable directory)", file: directory)
        }
        fd = f
    }

    deinit { close(fd) }

    /// Small records gather in this buffer and reach the file 1 MiB at a time.
    private var buffer: [UInt8] = []
    private static let bufferSize = 1 << 20

    /// Appends the first `count` bytes of `bytes`; returns their offset.
    func append(_ bytes: [UInt8], count: Int) throws(TraceError) -> Int {
        let at = end
        if count >= SpillFile.bufferSize / 4 {
            try flush()
            try write(bytes, count: count, at: at)
        } else {
            if buffer.count + count > SpillFile.bufferSize { try flush() }
            if buffer.isEmpty { buffer.reserveCapacity(SpillFile.bufferSize) }
            buffer.append(contentsOf: bytes[..<count])
        }
        end += count
        bytesWritten += count
        bytesHeld += count
        peakBytesHeld = max(peakBytesHeld, bytesHeld)
        return at
    }

    /// Writes the buffered records to the file.
    private func flush() throws(TraceError) {
        guard !buffer.isEmpty else { return }
        try write(buffer, count: buffer.count, at: end - buffer.count)
        buffer.removeAll(keepingCapacity: true)
    }

    private func write(_ bytes: [UInt8], count: Int, at: Int) throws(TraceError) {
        let err = bytes.withUnsafeBytes { PositionedIO.write(fd, UnsafeRawBufferPointer(rebasing: $0[..<count]), at: at).error }
        if err != 0 {
            throw TraceError(.io, "cannot write \(count) bytes of waiting records to the spill file: \(String(cString: strerror(err))) (set --spill-dir or TMPDIR to a directory with room)", file: directory)
        }
    }

    /// Reads back `count` bytes at `offset` into `buffer` (resized to fit), and gives their space back.
    func take(at offset: Int, count: Int, into out: inout [UInt8]) throws(TraceError) {
        if out.count < count { out = [UInt8](repeating: 0, count: count) }
        bytesHeld -= count
        let buffered = end - buffer.count
        if offset >= buffered {
            out.withUnsafeMutableBytes { dst in
                buffer.withUnsafeBytes { src in dst.baseAddress!.copyMemory(from: src.baseAddress! + (offset - buffered), byteCount: count) }
            }
            return
        }
        let err: Int32 = out.withUnsafeMutableBytes { raw in
            let (got, err) = PositionedIO.read(fd, into: UnsafeMutableRawBufferPointer(rebasing: raw[..<count]), at: offset)
            return err != 0 ? err : got < count ? EIO : 0   // the file ends before the record: it was not all written
        }
        if err != 0 { throw TraceError(.io, "cannot read back a spilled record: \(String(cString: strerror(err)))", file: directory, offset: offset) }
        // Large records give their space back at once (a file system without holes keeps it until
        // the file is closed); small ones, written together, keep theirs.
        if count >= SpillFile.bufferSize / 4 { _ = rtrace_punch_hole(fd, Int64(offset), Int64(count)) }
    }
}

/// The bytes of a record in a spill file: every field, ids one byte each when they fit.
///
/// Encoding and decoding go through one buffer the caller keeps (no allocation per record besides
/// the decoded record's own arrays), in tight loops: spilling costs little more than the copy.
enum RecordSpill {
    /// Writes `r` into `buf` (grown as needed); returns the bytes used.
    static func encode(_ r: TraceRecord, into buf: inout [UInt8]) -> Int {
        let need = 128 + 3 * r.uid.utf8.count + 3 * (r.group?.utf8.count ?? 0) + 3 * (r.attributes?.utf8.count ?? 0)
            + 2 * r.expertIDs.count + (r.weights?.bytes.count ?? 0) + (r.logits?.bytes.count ?? 0) + 4 * (r.tokens.count + r.logprobs.count)
        if buf.count < need { buf = [UInt8](repeating: 0, count: need) }
        return buf.withUnsafeMutableBytes { out -> Int in
            let o = out.baseAddress!
            var p = 0
            func int(_ v: Int) { o.storeBytes(of: Int64(v).littleEndian, toByteOffset: p, as: Int64.self); p += 8 }
            func bytes(_ b: UnsafeRawBufferPointer) {
                if b.count > 0 { (o + p).copyMemory(from: b.baseAddress!, byteCount: b.count) }
                p += b.count
            }
            func string(_ s: String?) {
                guard var s else { int(-1); return }
                s.withUTF8 { u in int(u.count); bytes(UnsafeRawBufferPointer(u)) }
            }
            func raw<T>(_ a: [T]) { int(a.count); a.withUnsafeBytes { bytes($0) } }
            func floats(_ f: FloatArray?) {
                guard let f else { int(-1); return }
                int(FloatDType.allCases.firstIndex(of: f.dtype)!); raw(f.bytes)
            }
            string(r.uid); string(r.group)
            int(r.promptLength); int(r.start); int(r.rowCount); int(r.layers); int(r.topK)
            raw(r.tokens)
            // Ids below 255 (any model with at most 255 experts) take one byte, the missing marker 255.
            let narrow: Bool = r.expertIDs.withUnsafeBufferPointer { ids in
                var big: UInt16 = 0
                for v in ids { big |= (v &+ 1) & 0xFF00 }  // 0xFFFF + 1 wraps to 0: the marker fits
                return big == 0
            }
            if narrow {
                int(1); int(r.expertIDs.count)
                r.expertIDs.withUnsafeBufferPointer { ids in
                    let d = (o + p).assumingMemoryBound(to: UInt8.self)
                    for i in 0..<ids.count { d[i] = UInt8(truncatingIfNeeded: ids[i]) }
                }
                p += r.expertIDs.count
            } else {
                int(2); raw(r.expertIDs)
            }
            floats(r.weights); floats(r.logits)
            raw(r.logprobs)
            if let w = r.reward { int(1); int(Int(Int64(bitPattern: w.bitPattern))) } else { int(0) }
            string(r.attributes)
            return p
        }
    }

    /// The record in the first bytes of `b` (as ``encode(_:into:)`` wrote it).
    static func decode(_ b: [UInt8]) -> TraceRecord {
        b.withUnsafeBytes { raw -> TraceRecord in
            let base = raw.baseAddress!
            var p = 0
            func int() -> Int {
                let v = Int64(littleEndian: base.loadUnaligned(fromByteOffset: p, as: Int64.self))
                p += 8
                return Int(v)
            }
            func string() -> String? {
                let n = int()
                guard n >= 0 else { return nil }
                defer { p += n }
                return String(decoding: UnsafeRawBufferPointer(start: base + p, count: n), as: UTF8.self)
            }
            func array<T>(_: T.Type) -> [T] {
                let n = int()
                let bytes = n * MemoryLayout<T>.stride
                defer { p += bytes }
                return [T](unsafeUninitializedCapacity: n) { dst, count in
                    if bytes > 0 { UnsafeMutableRawPointer(dst.baseAddress!).copyMemory(from: base + p, byteCount: bytes) }
                    count = n
                }
            }
            func floats() -> FloatArray? {
                let d = int()
                guard d >= 0 else { return nil }
                return FloatArray(dtype: FloatDType.allCases[d], bytes: array(UInt8.self))
            }
            let uid = string()!, group = string()
            let promptLength = int(), start = int(), rowCount = int(), layers = int(), topK = int()
            let tokens = array(Int32.self)
            let ids: [UInt16]
            if int() == 1 {
                let n = int()
                let src = (base + p).assumingMemoryBound(to: UInt8.self)
                ids = [UInt16](unsafeUninitializedCapacity: n) { dst, count in
                    for i in 0..<n { let v = src[i]; dst[i] = v == 255 ? TraceRecord.missing : UInt16(v) }
                    count = n
                }
                p += n
            } else {
                ids = array(UInt16.self)
            }
            let weights = floats(), logits = floats()
            let logprobs = array(Float.self)
            let reward: Double? = int() == 1 ? Double(bitPattern: UInt64(bitPattern: Int64(int()))) : nil
            let attributes = string()
            return TraceRecord(uid: uid, group: group, tokens: tokens, promptLength: promptLength, start: start, rowCount: rowCount,
                               layers: layers, topK: topK, expertIDs: ids, weights: weights, logits: logits, logprobs: logprobs,
                               reward: reward, attributes: attributes)
        }
    }

    /// Bytes a record takes in memory (its arrays), for a memory budget.
    static func memoryBytes(_ r: TraceRecord) -> Int {
        // 512: the record's array and string headers, the allocator's and the waiting entry's own bytes.
        512 + r.uid.utf8.count + 2 * r.expertIDs.count + (r.weights?.bytes.count ?? 0) + (r.logits?.bytes.count ?? 0)
            + 4 * (r.tokens.count + r.logprobs.count) + (r.attributes?.utf8.count ?? 0)
    }
}
