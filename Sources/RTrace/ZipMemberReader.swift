import CRTraceDeflate

/// Bytes read in order from somewhere (a zip member, a file, a pipe, memory), with a check at the end.
protocol ByteSource: AnyObject {
    /// What the bytes are, for errors (`topk_ids.npy`).
    var what: String { get }
    /// Fills `buffer` as far as the data goes; returns the bytes read (fewer only at the end).
    func read(into buffer: UnsafeMutableRawBufferPointer) throws(TraceError) -> Int
    /// Checks that the data ends after the `declared` bytes read so far (and its checksum, where it
    /// has one): a source holding more than declared is refused.
    func finish(declared: Int) throws(TraceError)
}

/// One zip member's uncompressed bytes, read in order: stored members straight from the file,
/// deflated ones through zlib's streaming inflate, with their CRC-32 checked at the end.
///
/// Each reader has its own file position and inflate state, so several members of one archive are
/// read side by side. Memory is one 256 KiB input block plus what the caller's buffers hold: the
/// inflater writes only into those, so a member that inflates to more than it declares costs
/// nothing until ``finish(declared:)`` refuses it.
final class ZipMemberReader: ByteSource {
    let entry: ZipEntry
    private let source: InputSource
    /// Archive offset of the member's data.
    private let dataStart: Int
    /// Compressed bytes taken from the file so far.
    private var taken = 0
    private let inflater: Inflater?
    /// The current input block, and the part of it not yet inflated.
    private let block: UnsafeMutableRawBufferPointer
    private var blockStart = 0, blockEnd = 0
    /// Uncompressed bytes produced so far, and their CRC-32.
    private(set) var produced = 0
    private var crc: UInt32 = 0

    var what: String { "member \(entry.name)" }

    /// How far past its declared end a member is inflated to say by how much it overflows.
    static let overflowProbe = 64 << 20

    /// Opens `entry` of `archive`; refuses encryption and methods other than stored and deflate.
    init(archive: ZipArchive, entry: ZipEntry) throws(TraceError) {
        self.entry = entry
        self.source = archive.source
        func bad(_ m: String) -> TraceError { TraceError(.invalidInput, "member \(entry.name): \(m)", file: archive.source.name, offset: entry.directoryOffset) }
        if entry.flags & 1 != 0 { throw bad("is encrypted") }
        switch entry.method {
        case 0:
            guard entry.compressedSize == entry.uncompressedSize else {
                throw TraceError(.corrupt, "member \(entry.name) is stored, but its sizes differ (\(entry.compressedSize) stored, \(entry.uncompressedSize) uncompressed)", file: archive.source.name, offset: entry.directoryOffset)
            }
            inflater = nil
        case 8:
            // A bomb whose directory admits its size is refused before anything is inflated.
            if entry.uncompressedSize / DecodeLimits.maxDeflateRatio > entry.compressedSize {
                throw TraceError(.limit, "member \(entry.name) declares \(entry.uncompressedSize) bytes from \(entry.compressedSize) deflated bytes; deflate cannot expand more than \(DecodeLimits.maxDeflateRatio)×", file: archive.source.name, offset: entry.directoryOffset)
            }
            inflater = try Inflater()
        default:
            throw bad("compression method \(entry.method) is not supported (np.savez stores, method 0; np.savez_compressed deflates, method 8)")
        }
        dataStart = try archive.dataOffset(of: entry)
        block = .allocate(byteCount: inflater == nil ? 0 : 1 << 18, alignment: 16)
    }

    deinit { block.deallocate() }

    private func error(_ kind: TraceError.Kind, _ m: String) -> TraceError {
        TraceError(kind, "member \(entry.name): \(m)", file: source.name, offset: dataStart + taken - (blockEnd - blockStart))
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws(TraceError) -> Int {
        guard let out = buffer.baseAddress, buffer.count > 0 else { return 0 }
        var got = 0
        if inflater == nil {
            let n = min(buffer.count, entry.compressedSize - taken)
            got = try source.read(at: dataStart + taken, into: UnsafeMutableRawBufferPointer(start: out, count: n))
            taken += got
            if got < n { throw error(.truncated, "the archive ends inside the member's data") }
        } else {
            got = try inflate(into: buffer)
        }
        crc = got == 0 ? crc : libdeflate_crc32(crc, out, got)
        produced += got
        return got
    }

    /// Inflates into `buffer` until it is full or the stream ends, reading input blocks as needed.
    private func inflate(into buffer: UnsafeMutableRawBufferPointer) throws(TraceError) -> Int {
        guard let z = inflater else { return 0 }
        var got = 0
        while got < buffer.count && !z.ended {
            if blockStart == blockEnd {
                let n = min(block.count, entry.compressedSize - taken)
                guard n > 0 else { throw error(.corrupt, "the deflate stream runs past the member's \(entry.compressedSize) compressed bytes") }
                let r = try source.read(at: dataStart + taken, into: UnsafeMutableRawBufferPointer(rebasing: block[0..<n]))
                guard r == n else { throw error(.truncated, "the archive ends inside the member's data") }
                taken += n
                blockStart = 0
                blockEnd = n
            }
            let (c, p): (Int, Int)
            do {
                (c, p) = try z.inflate(UnsafeRawBufferPointer(rebasing: block[blockStart..<blockEnd]),
                                       into: UnsafeMutableRawBufferPointer(rebasing: buffer[got...]))
            } catch { throw self.error(.corrupt, error.message) }
            blockStart += c
            got += p
        }
        return got
    }

    func finish(declared: Int) throws(TraceError) {
        // Anything past the declared end is an error; inflate a bounded probe to say how much.
        if produced == declared {
            let probe = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 16)
            defer { probe.deallocate() }
            let savedCRC = crc, savedProduced = produced
            var extra = 0
            while extra < Self.overflowProbe {
                let n = try read(into: probe)
                if n == 0 { break }
                extra += n
            }
            if extra > 0 {
                let found = extra >= Self.overflowProbe ? "at least \(declared + extra)" : "\(declared + extra)"
                throw error(.corrupt, "holds more than the \(declared) bytes its .npy header declares (\(found) bytes found; the zip directory says \(entry.uncompressedSize))")
            }
            crc = savedCRC
            produced = savedProduced
        }
        guard produced == entry.uncompressedSize else {
            throw error(.corrupt, "\(produced) bytes read, the zip directory says \(entry.uncompressedSize)")
        }
        guard crc == entry.crc32 else {
            throw TraceError(.checksum, "member \(entry.name): CRC-32 mismatch: stored \(hex32(entry.crc32)), computed \(hex32(crc))", file: source.name, offset: entry.directoryOffset)
        }
    }
}

/// Bytes read sequentially from an input (a plain `.npy` file or pipe).
final class InputByteSource: ByteSource {
    let source: InputSource
    let what: String

    init(_ source: InputSource) {
        self.source = source
        self.what = source.name
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws(TraceError) -> Int {
        try source.read(into: buffer)
    }

    func finish(declared: Int) throws(TraceError) {
        let more = try source.read(upTo: 1)
        if !more.isEmpty {
            let found = source.size.map { "\($0) bytes found" } ?? "more found"
            throw TraceError(.corrupt, "holds more than the \(declared) bytes its .npy header declares (\(found))", file: source.name, offset: declared)
        }
    }
}

/// Bytes held in memory (an ``NpyArray``'s data).
final class MemoryByteSource: ByteSource {
    let bytes: [UInt8]
    let what: String
    private var position = 0

    init(_ bytes: [UInt8], what: String) {
        self.bytes = bytes
        self.what = what
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws(TraceError) -> Int {
        let n = min(buffer.count, bytes.count - position)
        if n > 0 { bytes.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + position, byteCount: n) } }
        position += n
        return n
    }

    func finish(declared: Int) throws(TraceError) {
        if position < bytes.count { throw TraceError(.invalidInput, "\(what): holds more than the \(declared) bytes declared (\(bytes.count) found)") }
    }
}
