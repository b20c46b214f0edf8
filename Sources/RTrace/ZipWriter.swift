import CRTraceDeflate

/// Writes a zip archive front to back (any output, pipes too): each member's local header, its
/// data as it comes (stored, or deflated as a stream), then a data descriptor with its CRC-32 and
/// sizes; the central directory at the end. Members and archives over 2 GiB get ZIP64 fields, as
/// Python's `zipfile` (hence `np.savez`) writes and reads them.
final class ZipWriter {
    /// What the central directory needs of a written member.
    private struct Written {
        var name: [UInt8]
        var method: UInt16
        var flags: UInt16
        var crc: UInt32
        var compressedSize: Int
        var size: Int
        var offset: Int
        var zip64: Bool
    }

    private let sink: OutputSink
    /// ZIP64 fields even where sizes fit 32 bits (tests; Python calls it force_zip64).
    private let forceZip64: Bool
    private var written: [Written] = []
    /// The member being written.
    private var current: Written? = nil
    private var deflater: Deflater? = nil
    /// The uncompressed size promised by ``begin(_:size:compress:)``.
    private var promised = 0

    /// Beyond this, sizes and offsets go to ZIP64 fields (Python's `zipfile.ZIP64_LIMIT`).
    static let zip64Limit = (1 << 31) - 1

    init(sink: OutputSink, forceZip64: Bool = false) {
        self.sink = sink
        self.forceZip64 = forceZip64
    }

    /// Starts member `name`, whose uncompressed data will be exactly `size` bytes.
    func begin(_ name: String, size: Int, compress: Bool) throws(TraceError) {
        precondition(current == nil, "zip member \(name) begun inside another")
        let nameBytes = Array(name.utf8)
        // Bit 3: CRC and sizes follow the data; bit 11: the name is UTF-8.
        let flags: UInt16 = 0x0008 | (nameBytes.allSatisfy { $0 < 0x80 } ? 0 : 0x0800)
        // A deflated member may come out larger than its input: decide ZIP64 with a margin (as zipfile does).
        let zip64 = forceZip64 || size + size / 16 + 1024 > Self.zip64Limit
        let m = Written(name: nameBytes, method: compress ? 8 : 0, flags: flags, crc: 0, compressedSize: 0, size: 0,
                        offset: sink.offset, zip64: zip64)
        var h = ByteWriter(capacity: 64 + nameBytes.count)
        h.u32(0x0403_4B50)
        h.u16(zip64 ? 45 : 20)
        h.u16(flags)
        h.u16(m.method)
        h.u16(0); h.u16(0x21)  // 1980-01-01 00:00:00: the archive's bytes do not depend on the clock
        h.u32(0)  // CRC-32: in the data descriptor
        h.u32(zip64 ? 0xFFFF_FFFF : 0); h.u32(zip64 ? 0xFFFF_FFFF : 0)
        h.u16(UInt16(nameBytes.count))
        h.u16(zip64 ? 20 : 0)
        h.append(nameBytes)
        if zip64 { h.u16(0x0001); h.u16(16); h.u64(0); h.u64(0) }
        try sink.write(h.bytes)
        current = m
        promised = size
        deflater = compress ? Deflater() : nil
    }

    /// Appends `bytes` to the current member's data.
    func write(_ bytes: UnsafeRawBufferPointer) throws(TraceError) {
        guard var m = current else { preconditionFailure("zip write outside a member") }
        guard bytes.count > 0 else { return }
        m.crc = libdeflate_crc32(m.crc, bytes.baseAddress!, bytes.count)
        m.size += bytes.count
        if let d = deflater {
            var out = 0
            try d.deflate(bytes, finish: false) { (piece: UnsafeRawBufferPointer) throws(TraceError) in
                try self.sink.write(piece)
                out += piece.count
            }
            m.compressedSize += out
        } else {
            try sink.write(bytes)
            m.compressedSize += bytes.count
        }
        current = m
    }

    /// Appends `bytes` to the current member's data.
    func write(_ bytes: [UInt8]) throws(TraceError) {
        try withBytes(bytes) { raw throws(TraceError) in try write(raw) }
    }

    /// Ends the current member: the end of its deflate stream and its data descriptor.
    func end() throws(TraceError) {
        guard var m = current else { preconditionFailure("zip end outside a member") }
        precondition(m.size == promised, "zip member \(String(decoding: m.name, as: UTF8.self)): \(m.size) bytes written, \(promised) promised")
        if let d = deflater {
            var out = 0
            try d.deflate(UnsafeRawBufferPointer(start: nil, count: 0), finish: true) { (piece: UnsafeRawBufferPointer) throws(TraceError) in
                try self.sink.write(piece)
                out += piece.count
            }
            m.compressedSize += out
        }
        precondition(m.zip64 || m.compressedSize <= Self.zip64Limit, "zip member outgrew its 32-bit local header")
        var dd = ByteWriter(capacity: 24)
        dd.u32(0x0807_4B50)
        dd.u32(m.crc)
        if m.zip64 { dd.u64(UInt64(m.compressedSize)); dd.u64(UInt64(m.size)) } else { dd.u32(UInt32(m.compressedSize)); dd.u32(UInt32(m.size)) }
        try sink.write(dd.bytes)
        written.append(m)
        current = nil
        deflater = nil
    }

    /// Writes the central directory and its end records (ZIP64 ones when needed). Does not close the sink.
    func finish() throws(TraceError) {
        precondition(current == nil, "zip finished inside a member")
        let cdOffset = sink.offset
        var cd = ByteWriter()
        for m in written {
            // The ZIP64 extra field holds, in this order, the fields saturated at 0xFFFFFFFF.
            let bigSizes = forceZip64 || m.size > Self.zip64Limit || m.compressedSize > Self.zip64Limit
            let bigOffset = forceZip64 || m.offset > Self.zip64Limit
            var extra = ByteWriter()
            if bigSizes { extra.u64(UInt64(m.size)); extra.u64(UInt64(m.compressedSize)) }
            if bigOffset { extra.u64(UInt64(m.offset)) }
            let zip64 = bigSizes || bigOffset
            cd.u32(0x0201_4B50)
            cd.u16(0x0300 | (zip64 ? 45 : 20))  // made by: Unix
            cd.u16(zip64 ? 45 : 20)
            cd.u16(m.flags)
            cd.u16(m.method)
            cd.u16(0); cd.u16(0x21)
            cd.u32(m.crc)
            cd.u32(bigSizes ? 0xFFFF_FFFF : UInt32(m.compressedSize))
            cd.u32(bigSizes ? 0xFFFF_FFFF : UInt32(m.size))
            cd.u16(UInt16(m.name.count))
            cd.u16(zip64 ? UInt16(4 + extra.bytes.count) : 0)
            cd.u16(0); cd.u16(0); cd.u16(0)  // comment, disk, internal attributes
            cd.u32(0o100644 << 16)  // external attributes: a regular file, rw-r--r--
            cd.u32(bigOffset ? 0xFFFF_FFFF : UInt32(m.offset))
            cd.append(m.name)
            if zip64 { cd.u16(0x0001); cd.u16(UInt16(extra.bytes.count)); cd.append(extra.bytes) }
        }
        try sink.write(cd.bytes)
        let cdSize = cd.bytes.count
        let n = written.count
        let zip64End = forceZip64 || n > 0xFFFE || cdOffset > Self.zip64Limit || cdSize > Self.zip64Limit
        var end = ByteWriter()
        if zip64End {
            let recordOffset = sink.offset
            end.u32(0x0606_4B50)
            end.u64(44)  // size of the rest of this record
            end.u16(0x0300 | 45); end.u16(45)
            end.u32(0); end.u32(0)  // this disk, the directory's disk
            end.u64(UInt64(n)); end.u64(UInt64(n))
            end.u64(UInt64(cdSize)); end.u64(UInt64(cdOffset))
            end.u32(0x0706_4B50)  // locator
            end.u32(0); end.u64(UInt64(recordOffset)); end.u32(1)
        }
        end.u32(0x0605_4B50)
        end.u16(0); end.u16(0)
        end.u16(zip64End ? 0xFFFF : UInt16(n)); end.u16(zip64End ? 0xFFFF : UInt16(n))
        end.u32(zip64End ? 0xFFFF_FFFF : UInt32(cdSize))
        end.u32(zip64End ? 0xFFFF_FFFF : UInt32(cdOffset))
        end.u16(0)
        try sink.write(end.bytes)
    }
}
