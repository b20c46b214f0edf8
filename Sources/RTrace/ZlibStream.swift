import CRTraceZlib

/// zlib's streaming inflate of a raw deflate stream (a zip member's data), fed and drained piecewise.
///
/// Output is produced only into the buffers the caller hands over, so memory follows what the
/// caller asks for, never what the stream would inflate to.
final class Inflater {
    /// zlib's state; it must not move once initialised, hence the heap.
    private let stream: UnsafeMutablePointer<z_stream>
    /// Whether the stream's final block has been decoded.
    private(set) var ended = false

    init() throws(TraceError) {
        stream = .allocate(capacity: 1)
        stream.initialize(to: z_stream())
        let rc = rtrace_inflateInit2(stream, -15)
        guard rc == Z_OK else {
            stream.deallocate()
            throw TraceError(.io, "zlib inflateInit2 failed (\(rc))")
        }
    }

    deinit {
        inflateEnd(stream)
        stream.deallocate()
    }

    /// Inflates from `input` into `output`; returns the bytes consumed and produced. Stops when the
    /// output is full, the input is used up, or the stream ends (then ``ended`` is set).
    ///
    /// - Throws: `corrupt` when the data is not a valid deflate stream, with zlib's reason.
    func inflate(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) throws(TraceError) -> (consumed: Int, produced: Int) {
        guard !ended, let out = output.baseAddress, output.count > 0 else { return (0, 0) }
        // zlib counts in 32 bits: at most 1 GiB per call each way. zlib wants a non-null input pointer.
        let inCount = min(input.count, 1 << 30), outCount = min(output.count, 1 << 30)
        stream.pointee.next_in = UnsafeMutablePointer(mutating: (input.baseAddress ?? UnsafeRawPointer(out)).assumingMemoryBound(to: UInt8.self))
        stream.pointee.avail_in = uInt(inCount)
        stream.pointee.next_out = out.assumingMemoryBound(to: UInt8.self)
        stream.pointee.avail_out = uInt(outCount)
        let rc = CRTraceZlib.inflate(stream, Z_NO_FLUSH)
        let consumed = inCount - Int(stream.pointee.avail_in), produced = outCount - Int(stream.pointee.avail_out)
        switch rc {
        case Z_OK, Z_BUF_ERROR: break
        case Z_STREAM_END: ended = true
        default:
            let why = stream.pointee.msg.map { String(cString: $0) } ?? "zlib error \(rc)"
            throw TraceError(.corrupt, "deflate data is invalid (\(why))")
        }
        return (consumed, produced)
    }
}

/// zlib's streaming raw deflate (zip members written by `rtrace export --compress`).
final class Deflater {
    private let stream: UnsafeMutablePointer<z_stream>
    /// Where zlib writes; handed to the caller piece by piece.
    private let out = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 18, alignment: 16)

    /// A deflater at zlib's default level (6, as `np.savez_compressed` uses).
    init() {
        stream = .allocate(capacity: 1)
        stream.initialize(to: z_stream())
        let rc = rtrace_deflateInit2(stream, Z_DEFAULT_COMPRESSION, -15, 8, Z_DEFAULT_STRATEGY)
        precondition(rc == Z_OK, "deflateInit2 failed: \(rc)")
    }

    deinit {
        deflateEnd(stream)
        stream.deallocate()
        out.deallocate()
    }

    /// Compresses `input` (and ends the stream with `finish`), handing each piece of output to `emit`.
    func deflate(_ input: UnsafeRawBufferPointer, finish: Bool, _ emit: (UnsafeRawBufferPointer) throws(TraceError) -> Void) throws(TraceError) {
        var offset = 0
        while true {
            let n = min(input.count - offset, 1 << 30)
            let base = input.baseAddress.map { $0 + offset } ?? UnsafeRawPointer(out.baseAddress!)
            stream.pointee.next_in = UnsafeMutablePointer(mutating: base.assumingMemoryBound(to: UInt8.self))
            stream.pointee.avail_in = uInt(n)
            stream.pointee.next_out = out.baseAddress!.assumingMemoryBound(to: UInt8.self)
            stream.pointee.avail_out = uInt(out.count)
            let last = finish && offset + n == input.count
            let rc = CRTraceZlib.deflate(stream, last ? Z_FINISH : Z_NO_FLUSH)
            precondition(rc == Z_OK || rc == Z_STREAM_END || rc == Z_BUF_ERROR, "deflate failed: \(rc)")
            let produced = out.count - Int(stream.pointee.avail_out)
            offset += n - Int(stream.pointee.avail_in)
            if produced > 0 { try emit(UnsafeRawBufferPointer(rebasing: out[0..<produced])) }
            if rc == Z_STREAM_END { return }
            // Without finishing, done once the input is used and zlib had room to spare.
            if !finish && offset == input.count && produced < out.count { return }
        }
    }
}
