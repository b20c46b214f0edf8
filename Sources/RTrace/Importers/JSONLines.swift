#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A JSON-lines input read one line at a time: memory stays at one read chunk plus the longest line.
///
/// Each non-blank line is handed over in place (its bytes are valid only during the call), with
/// its 1-based number and the byte offset of its first byte, so errors can name both. A line may
/// end in `\n` or `\r\n`; the last one needs no newline.
public final class JSONLines {
    /// The file name used in errors.
    public let file: String
    private let source: InputSource
    /// Bytes asked of the source per read.
    public var chunkBytes = 1 << 20
    /// The largest line buffer held so far, in bytes (one line plus one chunk, at most ×1.5 for growth).
    public private(set) var peakBufferBytes = 0
    private var consumed = false

    /// Opens `path` (`-` = standard input).
    public init(path: String) throws(TraceError) {
        do { source = try InputSource(path: path) } catch { throw error.inFile(path) }
        file = path
    }

    /// Reads lines from `bytes` (as a pipe would deliver them).
    public init(bytes: [UInt8], file: String) {
        source = InputSource(bytes: bytes, name: file, seekable: false)
        self.file = file
    }

    /// Calls `body` with each non-blank line's number, offset and bytes. A second call reads nothing.
    public func forEachLine(
        _ body: (_ line: Int, _ offset: Int, _ text: UnsafeRawBufferPointer) throws(TraceError) -> Void
    ) throws(TraceError) {
        guard !consumed else { return }
        consumed = true
        var cap = chunkBytes + 1
        var buf = UnsafeMutableRawPointer.allocate(byteCount: cap, alignment: 16)
        defer { buf.deallocate() }
        peakBufferBytes = max(peakBufferBytes, cap)
        var lo = 0, hi = 0, scan = 0  // [lo, hi) holds unread bytes; [lo, scan) has no newline
        var base = 0  // input offset of buf[0]
        var line = 1
        var eof = false
        func emit(_ end: Int) throws(TraceError) {
            var e = end
            if e > lo && buf.load(fromByteOffset: e - 1, as: UInt8.self) == 0x0D { e -= 1 }
            let text = UnsafeRawBufferPointer(start: buf + lo, count: e - lo)
            if text.contains(where: { $0 != 0x20 && $0 != 0x09 && $0 != 0x0D }) { try body(line, base + lo, text) }
            line += 1
        }
        while true {
            if scan < hi, let nl = memchr(buf + scan, 0x0A, hi - scan) {
                let at = buf.distance(to: nl)
                try emit(at)
                lo = at + 1
                scan = lo
                continue
            }
            scan = hi
            if eof {
                if hi > lo { try emit(hi) }
                return
            }
            // Make room for one more chunk after the unread bytes: slide them to the front, and
            // grow only when one line is longer than the buffer.
            if lo > 0 {
                if hi > lo { (buf).copyMemory(from: buf + lo, byteCount: hi - lo) }
                base += lo
                hi -= lo
                scan -= lo
                lo = 0
            }
            if cap - hi < chunkBytes {
                let newCap = max(hi + chunkBytes, cap + cap / 2)
                let nb = UnsafeMutableRawPointer.allocate(byteCount: newCap, alignment: 16)
                nb.copyMemory(from: buf, byteCount: hi)
                buf.deallocate()
                buf = nb
                cap = newCap
                peakBufferBytes = max(peakBufferBytes, cap)
            }
            let n = try source.read(into: UnsafeMutableRawBufferPointer(start: buf + hi, count: chunkBytes))
            if n == 0 { eof = true } else { hi += n }
        }
    }
}
